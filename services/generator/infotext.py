"""A1111 infotext: the "parameters" text chunk of every PNG, so PNG Info reproduces the image.

    a red circle <lora:my-style:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512,
    Model hash: 6ce0161689, Model: sd15, Eta: 0.5, Clip skip: 2,
    Lora hashes: "my-style: 0123456789ab", Version: boothstudio 0.1.0

Written as AUTOMATIC1111 writes it:

- `Model hash`: A1111's short hash of the checkpoint file, the first 10 hex digits of the file's
  sha256. Only a single-file model has one: a diffusers folder is not a file A1111 could load, and
  a hash of one of its parts would match nothing, so it is left out. A webui model's hash comes
  from its title ("name.safetensors [6ce0161689]").
- LoRAs: `<lora:name:scale>` added to the prompt (what makes A1111 apply it) and
  `Lora hashes: "name: hash"` where the hash is A1111's: the first 12 hex digits of the sha256
  of a .safetensors file's tensor data (the bytes after its header). `name` is the Catalog id.
- sampler options that differ from their defaults (A1111 leaves defaults out too) under A1111's
  names: `Eta` (ancestral samplers), `Eta DDIM`, `Sigma churn` / `Sigma tmin` / `Sigma tmax` /
  `Sigma noise`; options A1111 lacks under their own label.
- `Clip skip: N` when N > 1.
- Hires fix as A1111 writes it: `Size` is the first pass, `Denoising strength` the second
  pass's, then `Hires upscale: 2` (or `Hires resize: WxH`), `Hires steps: N` when set, `Hires
  upscaler: Latent`. Outpainting (A1111 has no key for it): `Outpaint: left=32 top=16 feather=16`.
- Textual-inversion embeddings named in the prompts: `TI hashes: "name: hash"`, the hash being
  A1111's: the first 12 hex digits of the file's sha256 (recorded by the Catalog at import).

Hashing a multi-GB file takes seconds: each file is hashed once (cached by path, size and
modification time), in the device thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boothstudio.services.diffusion.samplers import SAMPLERS, SCHEDULES
from boothstudio.services.generator.adapters.base import (
    HIRES_UPSCALERS,
    GenerationSpec,
    HiresSpec,
    ModelRef,
    OutpaintSpec,
)
from boothstudio.services.generator.canvas import Sides
from boothstudio.shared.version import __version__

FILL_LABELS = {
    "fill": "fill",
    "original": "original",
    "latent_noise": "latent noise",
    "latent_nothing": "latent nothing",
}
#: our sampler option -> A1111's infotext key (eta depends on the sampler: see option_fields)
A1111_OPTION_KEYS = {
    "s_churn": "Sigma churn",
    "s_tmin": "Sigma tmin",
    "s_tmax": "Sigma tmax",
    "s_noise": "Sigma noise",
}
MODEL_HASH_DIGITS = 10
LORA_HASH_DIGITS = 12
TI_HASH_DIGITS = 12
_WEBUI_TITLE_HASH = re.compile(r"\[([0-9a-f]{10})\]\s*$")
_CHUNK = 1 << 20


def _sha256(path: Path, skip: int = 0) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(skip)
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _safetensors_header_end(path: Path) -> int:
    """Offset of a .safetensors file's tensor data: 8 bytes of header length, then the header."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path.name} is too short for a safetensors file")
    return 8 + int(struct.unpack("<Q", head)[0])


class FileHashes:
    """sha256 digests of model files, each computed once (keyed by path, size and mtime)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int, int, bool], str] = {}

    def sha256(self, path: str | Path, *, tensor_data_only: bool = False) -> str:
        """Hex sha256 of the file (or, `tensor_data_only`, of a .safetensors file's tensor data,
        A1111's LoRA hash); "" when the file cannot be read."""
        p = Path(path)
        try:
            st = p.stat()
            key = (str(p.resolve()), st.st_size, st.st_mtime_ns, tensor_data_only)
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
            skip = _safetensors_header_end(p) if tensor_data_only else 0
            value = _sha256(p, skip)
        except (OSError, ValueError):
            return ""
        with self._lock:
            self._cache[key] = value
        return value


HASHES = FileHashes()


@dataclass(frozen=True)
class LoraUse:
    name: str
    short_hash: str
    scale: float


@dataclass(frozen=True)
class ModelFacts:
    """What the infotext says about the weights: checkpoint name and hash, LoRAs applied."""

    name: str
    short_hash: str
    loras: tuple[LoraUse, ...] = ()


def checkpoint_hash(model: ModelRef, hashes: FileHashes = HASHES) -> str:
    """A1111's "Model hash" of a model, or "" where there is none (see the module doc)."""
    if model.format == "single_file" and os.path.isfile(model.source_path):
        return hashes.sha256(model.source_path)[:MODEL_HASH_DIGITS]
    if not model.format:  # a remote webui model: its title carries the hash
        m = _WEBUI_TITLE_HASH.search(model.source_path)
        return m.group(1) if m else ""
    return ""


def model_facts(
    model: ModelRef, lora_scale: float = 1.0, hashes: FileHashes = HASHES
) -> ModelFacts:
    """Blocking (hashes files on first sight): call it in the device thread."""
    if model.base is None:
        return ModelFacts(model.id, checkpoint_hash(model, hashes))
    lora_hash = ""
    if model.source_path.endswith(".safetensors"):
        lora_hash = hashes.sha256(model.source_path, tensor_data_only=True)[:LORA_HASH_DIGITS]
    return ModelFacts(
        model.base.id,
        checkpoint_hash(model.base, hashes),
        (LoraUse(model.id, lora_hash, lora_scale),),
    )


def lora_hash(path: str, hashes: FileHashes = HASHES) -> str:
    """A1111's LoRA hash of a .safetensors file ("" for anything else or an unreadable one)."""
    if not path.endswith(".safetensors"):
        return ""
    return hashes.sha256(path, tensor_data_only=True)[:LORA_HASH_DIGITS]


def spec_model_facts(spec: GenerationSpec, hashes: FileHashes = HASHES) -> ModelFacts:
    """The model's facts and every LoRA applied: a LoRA model_id's own, then spec.loras."""
    facts = model_facts(spec.model, float(spec.backend_options.get("lora_scale", 1.0)), hashes)
    listed = tuple(LoraUse(lora.model.id, lora_hash(lora.model.source_path, hashes), lora.weight)
                   for lora in spec.loras)
    return dataclasses.replace(facts, loras=facts.loras + listed)


def option_fields(sampler: str, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The sampler options that differ from their defaults, under A1111's infotext keys."""
    spec = SAMPLERS.get(sampler)
    if spec is None:
        return []
    out = []
    for p in spec.parameters:
        value = options.get(p.name, p.default)
        if value == p.default:
            continue
        if p.name == "eta":
            # A1111 keeps two settings: eta of the ancestral samplers and eta of DDIM
            key = "Eta DDIM" if spec.scheduler_class == "DDIMScheduler" else "Eta"
        else:
            key = A1111_OPTION_KEYS.get(p.name, p.label)
        out.append((key, f"{value:g}" if isinstance(value, float) else str(value)))
    return out


def _quote(value: str) -> str:
    """A1111 quotes a value holding a comma, colon or quote (json-style)."""
    if not re.search(r'[,:"]', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parameters_text(
    *,
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler: str,
    schedule: str,
    cfg_scale: float,
    seed: int,
    width: int,
    height: int,
    model: ModelFacts,
    strength: float | None = None,
    mask_blur: int | None = None,
    mask_fill: str | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    clip_skip: int = 1,
    embeddings: Sequence[tuple[str, str]] = (),
    hires: HiresSpec | None = None,
    outpaint: OutpaintSpec | None = None,
) -> str:
    """The A1111 "parameters" text: prompt, "Negative prompt: ...", then "Key: value, ...".

    With hires fix, A1111's way: Size is the first pass, then "Denoising strength" (the second
    pass's), "Hires upscale" (or "Hires resize: WxH" when the sides grow unequally), "Hires
    steps" (when set) and "Hires upscaler"; width x height is the output."""
    out_width, out_height = width, height
    if hires is not None:
        width, height, strength = hires.first_width, hires.first_height, hires.denoising_strength
    spec = SAMPLERS.get(sampler)
    fields = [
        ("Steps", str(steps)),
        ("Sampler", spec.label if spec else sampler),
        ("Schedule type", SCHEDULES[schedule].label if schedule in SCHEDULES else schedule),
        ("CFG scale", f"{cfg_scale:g}"),
        ("Seed", str(seed)),
        ("Size", f"{width}x{height}"),
    ]
    if model.short_hash:
        fields.append(("Model hash", model.short_hash))
    fields.append(("Model", _quote(model.name)))
    if strength is not None:
        fields.append(("Denoising strength", f"{strength:g}"))
    if mask_blur is not None:
        fields.append(("Mask blur", str(mask_blur)))
    if mask_fill is not None:
        fields.append(("Masked content", FILL_LABELS.get(mask_fill, mask_fill)))
    if outpaint is not None:
        sides = Sides(outpaint.left, outpaint.right, outpaint.top, outpaint.bottom)
        fields.append(("Outpaint", f"{sides.describe()} feather={outpaint.feather}"))
    if hires is not None:
        scale = out_width / width
        if scale == out_height / height:
            fields.append(("Hires upscale", f"{scale:g}"))
        else:
            fields.append(("Hires resize", f"{out_width}x{out_height}"))
        if hires.steps:
            fields.append(("Hires steps", str(hires.steps)))
        fields.append(("Hires upscaler", HIRES_UPSCALERS.get(hires.upscaler, hires.upscaler)))
    fields += option_fields(sampler, sampler_options or {})
    if clip_skip > 1:
        fields.append(("Clip skip", str(clip_skip)))
    hashed = [f"{lora.name}: {lora.short_hash}" for lora in model.loras if lora.short_hash]
    if hashed:
        fields.append(("Lora hashes", '"' + ", ".join(hashed) + '"'))
    if embeddings:
        fields.append(("TI hashes", '"' + ", ".join(f"{n}: {h}" for n, h in embeddings) + '"'))
    fields.append(("Version", f"boothstudio {__version__}"))
    tags = [f"<lora:{lora.name}:{lora.scale:g}>" for lora in model.loras]
    tags = [t for t in tags if t not in prompt]
    lines = [" ".join([prompt, *tags]) if tags else prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields))
    return "\n".join(lines)


def spec_parameters_text(spec: GenerationSpec, seed: int, model: ModelFacts) -> str:
    """parameters_text for one image of a validated request."""
    return parameters_text(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt,
        steps=spec.steps,
        sampler=spec.sampler,
        schedule=spec.schedule,
        cfg_scale=spec.cfg_scale,
        seed=seed,
        width=spec.width,
        height=spec.height,
        model=model,
        strength=spec.strength if spec.init_image is not None else None,
        mask_blur=spec.mask_blur if spec.mask is not None else None,
        mask_fill=spec.mask_fill if spec.mask is not None else None,
        sampler_options=spec.sampler_options,
        clip_skip=int(spec.backend_options.get("clip_skip", 1)),
        embeddings=[(e.name, e.sha256[:TI_HASH_DIGITS]) for e in spec.embeddings],
        hires=spec.hires,
        outpaint=spec.outpaint,
    )
