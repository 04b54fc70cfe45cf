"""Static description of the generation backend kinds: capabilities, samplers, backend options.

Light (no torch): the Catalog lists backends and their samplers from here without importing the
Generator; the Generator's adapters return the same description from `describe()`. Translating a
request into a backend's own parameters is NOT here: that lives in each adapter
(services/generator/adapters/<backend>/).
"""

from __future__ import annotations

from dataclasses import dataclass

from .samplers import SAMPLERS, ParamSpec, SamplerSpec


@dataclass(frozen=True)
class Capabilities:
    txt2img: bool = True
    img2img: bool = True
    inpaint: bool = True
    training: bool = False
    previews: bool = True
    cancel: bool = True


@dataclass(frozen=True)
class BackendKindInfo:
    kind: str  # "diffusers" | "a1111" | "hosted"
    label: str
    capabilities: Capabilities
    sampler_ids: tuple[str, ...]
    #: schema of GenerateRequest.backend_options this backend accepts
    options: tuple[ParamSpec, ...] = ()
    default_sampler: str = "dpmpp_2m"

    def samplers(self) -> list[SamplerSpec]:
        return [SAMPLERS[s] for s in self.sampler_ids]


CLIP_SKIP = ParamSpec(
    "clip_skip",
    "int",
    1,
    "CLIP skip",
    "Use the text encoder's n-th last layer (1 = last, 2 = penultimate).",
    1,
    4,
)

LORA_SCALE = ParamSpec(
    "lora_scale",
    "float",
    1.0,
    "LoRA strength",
    "How strongly a LoRA model's adapter is applied to its base model (0 = base model alone).",
    0.0,
    2.0,
)

BACKEND_KINDS: dict[str, BackendKindInfo] = {
    "diffusers": BackendKindInfo(
        "diffusers",
        "Local diffusers",
        Capabilities(training=True),
        tuple(SAMPLERS),
        (CLIP_SKIP, LORA_SCALE),
    ),
    "a1111": BackendKindInfo(
        "a1111",
        "AUTOMATIC1111 webui",
        Capabilities(training=False),
        tuple(s.id for s in SAMPLERS.values() if s.a1111),
        (
            CLIP_SKIP,
            ParamSpec("restore_faces", "bool", False, "Restore faces", "Run the face restorer."),
            ParamSpec("tiling", "bool", False, "Tiling", "Make the image tile seamlessly."),
        ),
    ),
}
