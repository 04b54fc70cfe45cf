"""The backend adapter interface.

An adapter is everything the Generator knows about one backend: what it can do (capabilities),
which samplers and backend options it offers (its static description), how the typed, validated
request becomes the backend's own parameters (`translate`: the only place where that happens),
which requests may share one run (`batch_key`), and running a batch with progress and
cancellation (`run`, called in the device's worker thread).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from boothstudio.services.diffusion.backends import BACKEND_KINDS, BackendKindInfo, Capabilities


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives, as Catalog describes it."""

    id: str
    backend_id: str
    source_path: str
    format: str  # diffusers | single_file | hf_cache | lora | "" (remote)
    config_path: str = ""
    architecture: str = ""
    native_resolution: int = 512
    inpainting: bool = False
    #: for a LoRA adapter (format "lora", source_path = its file): the model it applies to
    base: ModelRef | None = None


@dataclass(frozen=True)
class EmbeddingRef:
    """A textual-inversion embedding a prompt names (a Catalog model of kind EMBEDDING)."""

    name: str  # its model id: the word that calls it up
    source_path: str
    vectors: int  # prompt tokens it takes
    sha256: str = ""


#: hires fix upscalers (GenerateRequest.hires.upscaler) -> A1111's names (its `hr_upscaler`
#: and the infotext's "Hires upscaler")
HIRES_UPSCALERS = {
    "latent": "Latent",
    "latent_nearest": "Latent (nearest)",
    "lanczos": "Lanczos",
    "nearest": "Nearest",
}


@dataclass(frozen=True)
class HiresSpec:
    """Hires fix resolved: the first pass size; the output is the spec's width x height."""

    first_width: int
    first_height: int
    upscaler: str = "latent"
    steps: int = 0  # 0 = the same as the first pass
    denoising_strength: float = 0.5


@dataclass(frozen=True)
class OutpaintSpec:
    """Outpainting as asked (the canvas rounded up to multiples of 8): the spec's init_image and
    mask are already the extended canvas and its feathered mask."""

    left: int
    right: int
    top: int
    bottom: int
    feather: int


@dataclass(frozen=True)
class LoraRef:
    """A LoRA applied to a generation at a weight (GenerateRequest.loras or `<lora:name:w>`)."""

    model: ModelRef  # format "lora", source_path = its file
    weight: float = 1.0


@dataclass
class GenerationSpec:
    """A validated request with every default resolved (backend-neutral)."""

    prompt: str
    negative_prompt: str
    model: ModelRef
    sampler: str  # sampler id from boothstudio.services.diffusion.samplers
    schedule: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seeds: list[int]
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    strength: float = 0.75
    mask_blur: int = 4
    invert_mask: bool = False
    mask_fill: str = "original"  # original | fill | latent_noise | latent_nothing
    sampler_options: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)
    #: embeddings named in the prompt or negative prompt (A1111 semantics: the name as a word)
    embeddings: tuple[EmbeddingRef, ...] = ()
    #: LoRAs applied on top of the model (a LoRA model_id adds its own first: applied_loras)
    loras: tuple[LoraRef, ...] = ()
    hires: HiresSpec | None = None
    outpaint: OutpaintSpec | None = None

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"


def applied_loras(spec: GenerationSpec) -> tuple[LoraRef, ...]:
    """Every LoRA the generation applies: the model's own when model_id names a LoRA (at
    backend_options.lora_scale), then those of GenerateRequest.loras and the prompt's tags."""
    own = ()
    if spec.model.base is not None:
        own = (LoraRef(spec.model, float(spec.backend_options.get("lora_scale", 1.0))),)
    return own + spec.loras


@dataclass
class StepProgress:
    step: int
    total: int
    elapsed: float
    steps_per_second: float
    eta_seconds: float
    #: preview(spec index) -> a cheap image of that request's first image, or None
    preview: Callable[[int], Image.Image | None]


@dataclass
class RunHooks:
    """Callbacks an adapter's run() calls from the worker thread."""

    on_step: Callable[[StepProgress], None]
    #: True when every request of the batch is cancelled: stop before the next step
    should_stop: Callable[[], bool]
    #: True when this request (spec index) is cancelled: skip its remaining output
    is_cancelled: Callable[[int], bool]
    #: (spec index, image index, image) as each image is ready
    on_image: Callable[[int, int, Image.Image], None]
    #: (spec index, reason, message, field): a non-fatal remark (e.g. prompt truncated)
    on_warning: Callable[[int, str, str, str], None]
    #: (model id, bytes done, bytes total): the model is being pulled from the artifact store
    on_download: Callable[[str, int, int], None] = lambda model_id, done, total: None


class Cancelled(Exception):
    """run() stopped because should_stop() said so."""


class Adapter(abc.ABC):
    """One backend. Subclasses set `id` and `kind` and implement the abstract methods."""

    id: str = ""
    kind: str = ""
    #: the backend applies GenerationSpec.loras (others refuse requests that carry some)
    applies_loras: bool = False

    @property
    def info(self) -> BackendKindInfo:
        """Static description: label, capabilities, samplers, backend option schemas."""
        return BACKEND_KINDS[self.kind]

    @property
    def capabilities(self) -> Capabilities:
        return self.info.capabilities

    def sampler_ids(self) -> Sequence[str]:
        return self.info.sampler_ids

    def validate(self, spec: GenerationSpec) -> list[tuple[str, str]]:
        """Backend-specific checks: [(field, problem)]. Default: backend_options schemas."""
        problems = []
        schemas = {p.name: p for p in self.info.options}
        for key, value in spec.backend_options.items():
            p = schemas.get(key)
            if p is None:
                known = ", ".join(schemas) or "none"
                problems.append((f"backend_options.{key}", f"unknown option (known: {known})"))
                continue
            converted, problem = p.check(value)
            if problem:
                problems.append((f"backend_options.{key}", problem))
            else:
                spec.backend_options[key] = converted
        if spec.loras and not self.applies_loras:
            problems.append(("loras", f"backend {self.id!r} does not apply LoRAs"))
        if spec.sampler not in self.sampler_ids():
            problems.append(("sampler", f"backend {self.id!r} does not offer {spec.sampler!r}"))
        return problems

    @abc.abstractmethod
    def translate(self, specs: Sequence[GenerationSpec]) -> Any:
        """The backend's own parameters for a batch (pinned by tests)."""

    def batch_key(self, spec: GenerationSpec) -> Hashable | None:
        """Requests with equal keys may run as one batch; None = never batched."""
        return None

    @abc.abstractmethod
    def run(self, specs: Sequence[GenerationSpec], hooks: RunHooks) -> None:
        """Run a batch (blocking, in the worker thread); images go out through hooks.on_image.

        Raises Cancelled when hooks.should_stop() said stop.
        """

    def warm(self, model: ModelRef) -> None:  # noqa: B027 - optional hook
        """Prepare a model ahead of the first request (e.g. load it). Default: nothing."""

    async def check(self) -> tuple[bool, str]:
        """Reachability: (reachable, message)."""
        return True, "local"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
