"""Prompt templates: `{identifier}` and `{class_noun}` filled in, nothing else.

Prompts in a training config used to be Python format strings, which let a 52-character
`{identifier:>1000000000}` allocate gigabytes and `{identifier.attr}` / `{identifier[0]}` reach
into objects. Here a template can only name the two documented placeholders; `{{` and `}}` stand
for literal braces (as they did before); any other brace is an error whose message says which.

    fill("a {identifier} {class_noun}", {"identifier": "zwx", "class_noun": "dog"})  # "a zwx dog"
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from boothstudio.shared.errors import clip

# Longest prompt or caption accepted: CLIP reads 77 tokens, so 1000 characters is already far
# more than any model sees; the bound keeps a hostile config from filling memory and logs.
MAX_PROMPT_CHARS = 1000

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(ValueError):
    """The template uses something other than the documented placeholders; str() says what."""


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{name}` of `values` replaced; `{{`/`}}` become `{`/`}`."""
    out: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(template):
        out.append(template[pos:m.start()])
        pos = m.end()
        token = m.group()
        if token in ("{{", "}}"):
            out.append(token[0])
        elif m.group(1) is not None and m.group(1) in values:
            out.append(values[m.group(1)])
        elif m.group(1) is not None:
            raise TemplateError(f"unknown placeholder {clip(token, 40)!r}: only "
                                + " and ".join(f"{{{n}}}" for n in values)
                                + " are filled in (write {{ and }} for literal braces)")
        else:
            raise TemplateError(f"unmatched {token!r} at character {m.start()} (write {token}"
                                f"{token} for a literal brace)")
    out.append(template[pos:])
    return "".join(out)


__all__ = ["MAX_PROMPT_CHARS", "TemplateError", "fill"]
