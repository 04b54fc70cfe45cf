"""DreamBooth identifiers: pick a rare single token, warn about ones that already mean something.

The paper's "[V]" must be a token the text encoder has (almost) no prior for. The usual "sks" is
a real token in Stable Diffusion's CLIP vocabulary (the SKS rifle), and a common word drags its
meaning into the subject. We read the model's tokenizer files (vocab.json or tokenizer.json, no
transformers import) to check that a candidate is one token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Candidates tried in order; the embedded model's tokenizer holds the first ones as single tokens
# that never occurred in its training captions (RARE_TOKENS in research/embedded_model).
CANDIDATES = ("zwx", "qlo", "vyn", "krd", "xqz", "bsk", "jvp", "wuq", "olis", "ohwx", "zkw")

# Identifiers with a known meaning in SD-style text encoders.
LOADED = {
    "sks": "'sks' is a real token in Stable Diffusion's CLIP vocabulary (the SKS rifle); "
           "the subject can pick up its look",
    "ohwx": "'ohwx' is widely used in shared DreamBooth models; prompts may collide with them",
}

_COMMON = """
a an the of on in at to for with and or but not no yes is are was be this that it its my your
his her our their one two three four five big small large tiny old new young good bad best
red green blue yellow purple orange black white gray grey pink brown cyan color colour bright
dark light man woman person people boy girl child baby dog cat bird horse cow fish car house
tree flower sky sun moon water fire city street room table chair book phone cup bottle hat
shoe bag toy ball box photo picture image painting drawing portrait style art shape object
circle square triangle background front side top bottom left right up down day night home
love life time world face hand eye head hair body king queen star heart rock stone wood metal
glass paper gold silver cute happy sad hot cold high low long short fast slow open close
"""
COMMON_WORDS = frozenset(_COMMON.split())

IDENTIFIER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class Vocabulary:
    """Word-level view of a CLIP BPE vocabulary: is a word a single token?"""

    def __init__(self, tokens: set[str]) -> None:
        self.tokens = tokens

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> Vocabulary | None:
        tok_dir = Path(model_dir) / "tokenizer"
        try:
            if (tok_dir / "vocab.json").exists():
                return cls(set(json.loads((tok_dir / "vocab.json").read_text())))
            if (tok_dir / "tokenizer.json").exists():
                data = json.loads((tok_dir / "tokenizer.json").read_text())
                return cls(set(data["model"]["vocab"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None

    def single_token(self, word: str) -> bool:
        return f"{word.lower()}</w>" in self.tokens


def pick_identifier(vocab: Vocabulary | None, avoid: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """The first candidate that is one token in `vocab` and not in `avoid`."""
    for cand in CANDIDATES:
        if cand in avoid:
            continue
        if vocab is None or vocab.single_token(cand):
            return cand
    return CANDIDATES[0]


def identifier_warnings(identifier: str, vocab: Vocabulary | None,
                        class_noun: str = "") -> list[tuple[str, str]]:
    """(reason, message) remarks about a user-chosen identifier."""
    ident = identifier.lower()
    out: list[tuple[str, str]] = []
    if ident in LOADED:
        out.append(("COMMON_IDENTIFIER", LOADED[ident] + f"; a rare token such as "
                    f"{pick_identifier(vocab, {ident})!r} is safer"))
    elif ident in COMMON_WORDS or (class_noun and ident == class_noun.lower()):
        out.append(("COMMON_IDENTIFIER",
                    f"{identifier!r} is a common word: the subject will mix with its meaning "
                    f"(and the word loses it); a rare token such as "
                    f"{pick_identifier(vocab, {ident})!r} is safer"))
    if vocab is not None and not vocab.single_token(ident):
        out.append(("MULTI_TOKEN_IDENTIFIER",
                    f"{identifier!r} is split into several tokens by this model's tokenizer; "
                    "a single rare token binds the subject better"))
    return out
