"""The LoRAs a generation asks for: GenerateRequest.loras and AUTOMATIC1111's prompt syntax.

`<lora:name>` or `<lora:name:weight>` anywhere in the prompt applies the LoRA model `name` (a
Catalog id) at `weight` (default 1), as A1111 does: the tag is taken out of the prompt text the
model reads. Tags come after the request's own list; a LoRA named twice, more than MAX_LORAS,
a weight outside MAX_WEIGHT or not a number are INVALID_ARGUMENT on `loras[i].*` or `prompt`.
A1111's third argument (a separate UNet weight) is refused by name rather than ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from boothstudio.shared.ids import ID_RULE, is_valid_id
from boothstudio.v1 import generator_pb2

MAX_LORAS = 8
MAX_WEIGHT = 10.0
_TAG = re.compile(r"<lora:([^<>]*)>")


@dataclass(frozen=True)
class AskedLora:
    model_id: str
    weight: float
    field: str  # where it was asked: "loras[i].model_id" or "prompt"


def strip_tags(prompt: str) -> str:
    """The prompt without its `<lora:...>` tags (spaces left by them closed up)."""
    return re.sub(r"[ \t]{2,}", " ", _TAG.sub("", prompt)).strip()


def asked(r: generator_pb2.GenerateRequest, p: list[tuple[str, str]]) -> list[AskedLora]:
    """The LoRAs of the request's list and its prompt's tags; problems appended to `p`."""
    out: list[AskedLora] = []
    for i, lw in enumerate(r.loras):
        field = f"loras[{i}]"
        weight = lw.weight if lw.HasField("weight") else 1.0
        if not is_valid_id(lw.model_id):
            p.append((f"{field}.model_id", ID_RULE))
        if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
            p.append((f"{field}.weight", f"must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}, "
                                         f"got {weight:g}"))
        out.append(AskedLora(lw.model_id, float(weight), f"{field}.model_id"))
    for m in _TAG.finditer(r.prompt):
        args = m.group(1).split(":")
        name, weight = args[0].strip(), 1.0
        if len(args) > 2:
            p.append(("prompt", f"{m.group(0)}: give one weight (<lora:name:0.8>); a separate "
                                "UNet weight is not supported"))
            continue
        if len(args) == 2:
            try:
                weight = float(args[1])
            except ValueError:
                p.append(("prompt", f"{m.group(0)}: the weight {args[1]!r} is not a number"))
                continue
            if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
                p.append(("prompt", f"{m.group(0)}: the weight must be between -{MAX_WEIGHT:g} "
                                    f"and {MAX_WEIGHT:g}"))
                continue
        if not is_valid_id(name):
            p.append(("prompt", f"{m.group(0)}: {name!r} is not a LoRA model id ({ID_RULE})"))
            continue
        out.append(AskedLora(name, weight, "prompt"))
    seen: set[str] = set()
    for a in out:
        if a.model_id in seen:
            p.append((a.field, f"LoRA {a.model_id!r} is named twice"))
        seen.add(a.model_id)
    if len(out) > MAX_LORAS:
        p.append(("loras", f"at most {MAX_LORAS} LoRAs per generation, got {len(out)}"))
    return out
