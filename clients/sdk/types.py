"""Plain Python types the SDK takes and returns: enums, dataclasses and events.

Every dataclass built from a server message keeps that message in `raw` (not shown in repr and
not compared) for callers who want the protobuf.
"""

from __future__ import annotations

import enum
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypedDict, TypeVar

if TYPE_CHECKING:
    from PIL import Image as PILImage

T = TypeVar("T")

#: An image given to the SDK: a PIL image, encoded bytes (PNG/JPEG/WebP) or a file path.
ImageInput: TypeAlias = "PILImage.Image | bytes | str | os.PathLike[str]"
#: A typed option value (sampler/backend options).
OptionScalar: TypeAlias = int | float | bool | str


# --------------------------------------------------------------------------------------- enums


class ModelKind(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    BASE = "base"
    FINE_TUNED = "fine_tuned"
    LORA = "lora"
    EMBEDDING = "embedding"


class PredictionType(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    EPSILON = "epsilon"
    V_PREDICTION = "v_prediction"
    SAMPLE = "sample"


class ModelFormat(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    DIFFUSERS = "diffusers"
    SINGLE_FILE = "single_file"
    HF_CACHE = "hf_cache"
    LORA = "lora"
    EMBEDDING = "embedding"


class ParameterType(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CHOICE = "choice"
    STRING = "string"


class BackendKind(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    DIFFUSERS = "diffusers"
    A1111 = "a1111"
    HOSTED = "hosted"


class Priority(enum.StrEnum):
    """Queue priority of a generation: interactive jobs run before batch jobs."""

    UNSPECIFIED = "unspecified"
    INTERACTIVE = "interactive"
    BATCH = "batch"


class MaskFill(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    FILL = "fill"
    ORIGINAL = "original"
    LATENT_NOISE = "latent_noise"
    LATENT_NOTHING = "latent_nothing"


class FinishReason(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    STOP = "stop"
    CANCELLED = "cancelled"
    ERROR = "error"
    FILTER = "filter"


class GenerationStatus(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"
    FAILED = "failed"


class TrainingState(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    EXPORTING = "exporting"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED and CANCELLED."""
        return self in (TrainingState.SUCCEEDED, TrainingState.FAILED, TrainingState.CANCELLED)


class CheckpointKind(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    FULL_STATE = "full_state"
    EXPORT = "export"


class LogLevel(enum.StrEnum):
    UNSPECIFIED = "unspecified"
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# ------------------------------------------------------------------------------ request params

#: GenerateRequest.hires.upscaler values: on the latents, or on the decoded pixels
HIRES_UPSCALERS = ("latent", "latent_nearest", "lanczos", "nearest")


@dataclass
class HiresFix:
    """Hires fix (txt2img): a first pass at a smaller size (unset: the output scaled down to the
    model's native size), enlarged by `upscaler` (one of HIRES_UPSCALERS; "" = "latent"), then a
    second denoising pass at width x height with its own `steps` (0/None = as steps) and
    `denoising_strength` (None = server default). `generate(..., hires=True)` = all defaults."""

    first_pass_width: int | None = None
    first_pass_height: int | None = None
    upscaler: str = ""
    steps: int | None = None
    denoising_strength: float | None = None


@dataclass
class Outpaint:
    """Outpainting: pixels added on each side of init_image (the output is the larger canvas;
    sides are rounded up to multiples of 8 with a warning); `feather` = pixels of the original
    the repainted band overlaps (None = server default)."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    feather: int | None = None



class GenerateParams(TypedDict, total=False):
    """Keyword options of `generate()` / `stream_generate()` (all optional; unset = server default).

    Names follow `boothstudio.v1.GenerateRequest`; `init_image` and `mask` accept a PIL image,
    encoded bytes or a path.
    """

    negative_prompt: str
    model_id: str
    backend_id: str
    sampler: str
    schedule: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    seed: int
    count: int
    init_image: ImageInput
    strength: float
    mask: ImageInput
    mask_blur: int
    invert_mask: bool
    mask_fill: MaskFill | str
    #: hires fix: a HiresFix, a mapping of its fields, or True for the defaults
    hires: HiresFix | Mapping[str, Any] | bool
    #: outpainting (with init_image): an Outpaint or a mapping of its fields
    outpaint: Outpaint | Mapping[str, Any]
    sampler_options: Mapping[str, OptionScalar]
    backend_options: Mapping[str, OptionScalar]
    preview_interval: int
    skip_gallery: bool
    job_id: str
    #: "interactive" (the default) or "batch": batch jobs wait while interactive ones do
    priority: Priority | str
    #: LoRAs on top of the model: {model_id: weight}, or a list of "model_id", "model_id:0.8"
    #: or (model_id, weight); `<lora:model_id:0.8>` in the prompt works too
    loras: Mapping[str, float] | Sequence[str | tuple[str, float]]


class TrainingOptions(TypedDict, total=False):
    """DreamBooth settings (names of `boothstudio.v1.DreamBoothConfig`; unset = server default).

    Enums take their short lower-case names ("lora", "bf16_mixed", "ddp"); nested messages take
    mappings (`prior_preservation={"enabled": True, "class_image_count": 50}`) and
    `prior_preservation` also takes a plain bool.
    """

    base_model_id: str
    dataset_id: str
    identifier: str
    class_noun: str
    instance_prompt: str
    class_prompt: str
    prior_preservation: bool | Mapping[str, Any]
    max_train_steps: int
    learning_rate: float
    lr_scheduler: str
    lr_warmup_steps: int
    batch_size: int
    gradient_accumulation_steps: int
    precision: str
    train_text_encoder: bool
    text_encoder_learning_rate: float
    text_encoder_2_learning_rate: float  # SDXL's second text encoder
    method: str
    lora: Mapping[str, Any]
    checkpoint_every_steps: int
    checkpoints_to_keep: int
    sample_every_steps: int
    validation_prompts: Sequence[str]
    validation_seeds: Sequence[int]
    seed: int
    resolution: int
    center_crop: bool
    random_flip: bool
    gradient_checkpointing: bool
    use_8bit_adam: bool
    max_grad_norm: float
    weight_decay: float
    strategy: str
    devices: int
    num_nodes: int
    accelerator: str
    output_model_name: str
    ema_decay: float
    caption_dropout: float
    random_crop_scale: float
    masked_loss_background_weight: float
    identifier_learning_rate: float
    min_snr_gamma: float
    offset_noise: float
    aspect_buckets: bool
    validation_scorer: str
    export_best_checkpoint: bool
    #: several subjects in one job: mappings of `boothstudio.v1.Concept` settings; a concept's
    #: ``images`` (a folder or list of files) are uploaded as its dataset
    #: (`boothstudio.clients.sdk.concepts.kohya_concepts` reads a kohya-style folder)
    concepts: Sequence[Mapping[str, Any]]


# ------------------------------------------------------------------------------------ helpers


def _decode_png(data: bytes) -> PILImage.Image:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


@dataclass
class Page(Generic[T]):
    """One page of a paginated list. Iterable; `next_page_token` is empty on the last page."""

    items: list[T]
    next_page_token: str = ""
    total_size: int = 0

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]


@dataclass
class ServerWarning:
    """A non-fatal remark from a service (e.g. PROMPT_TRUNCATED, COMMON_IDENTIFIER)."""

    reason: str
    message: str
    field: str = ""


# ------------------------------------------------------------------------------------ catalog


@dataclass
class Model:
    id: str
    display_name: str = ""
    kind: ModelKind = ModelKind.UNSPECIFIED
    backend_id: str = ""
    architecture: str = ""
    native_resolution: int = 0
    prediction_type: PredictionType = PredictionType.UNSPECIFIED
    base_model_id: str = ""
    training_job_id: str = ""
    trigger_phrase: str = ""
    source_path: str = ""
    format: ModelFormat = ModelFormat.UNSPECIFIED
    created_at: datetime | None = None
    size_bytes: int = 0
    builtin: bool = False
    inpainting: bool = False
    description: str = ""
    #: Single-file models: the diffusers folder that supplies the configs.
    config_path: str = ""
    #: Embeddings: the prompt tokens their name stands for, and the vectors' width per text
    #: encoder ([768] for SD 1.x, [768, 1280] for SDXL).
    embedding_vectors: int = 0
    embedding_widths: list[int] = field(default_factory=list)
    #: The model has a preview picture (get_model_preview returns it as PNG bytes).
    has_preview: bool = False
    #: Remarks returned by import_model (empty otherwise).
    warnings: list[ServerWarning] = field(default_factory=list)
    raw: Any = field(default=None, repr=False, compare=False)


@dataclass
class Parameter:
    """Schema of one sampler option (use `name` as a key of `sampler_options`)."""

    name: str
    type: ParameterType
    default: OptionScalar | None = None
    min: float | None = None
    max: float | None = None
    choices: list[str] = field(default_factory=list)
    help: str = ""
    label: str = ""


@dataclass
class Schedule:
    id: str
    label: str = ""
    help: str = ""


@dataclass
class Sampler:
    id: str
    label: str = ""
    aliases: list[str] = field(default_factory=list)
    schedules: list[str] = field(default_factory=list)
    default_schedule: str = ""
    parameters: list[Parameter] = field(default_factory=list)
    description: str = ""
    default_steps: int = 0


@dataclass
class SamplerList:
    """Samplers of a backend, the schedules they refer to and the default sampler."""

    samplers: list[Sampler]
    schedules: list[Schedule] = field(default_factory=list)
    default_sampler: str = ""
    backend_id: str = ""
    raw: Any = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[Sampler]:
        return iter(self.samplers)

    def __len__(self) -> int:
        return len(self.samplers)

    def get(self, name: str) -> Sampler | None:
        """The sampler whose id, label or alias is `name` (case-insensitive)."""
        key = name.lower()
        for s in self.samplers:
            if key in (s.id.lower(), s.label.lower(), *(a.lower() for a in s.aliases)):
                return s
        return None


@dataclass
class BackendCapabilities:
    txt2img: bool = False
    img2img: bool = False
    inpaint: bool = False
    training: bool = False
    previews: bool = False
    cancel: bool = False


@dataclass
class Backend:
    id: str
    kind: BackendKind = BackendKind.UNSPECIFIED
    display_name: str = ""
    reachable: bool = False
    capabilities: BackendCapabilities = field(default_factory=BackendCapabilities)
    message: str = ""
    endpoint: str = ""
    device: str = ""
    #: True for the backend used when a request names none.
    is_default: bool = False
    raw: Any = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------------- generation


@dataclass
class GeneratedImage:
    """One image of a generation: PNG bytes, the seed used and its gallery id."""

    index: int
    seed: int
    png: bytes = field(default=b"", repr=False)
    image_id: str = ""
    width: int = 0
    height: int = 0
    finish_reason: FinishReason = FinishReason.STOP
    message: str = ""
    job_id: str = ""
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the image finished normally (it has PNG bytes)."""
        return self.finish_reason is FinishReason.STOP and bool(self.png)

    @property
    def image(self) -> PILImage.Image:
        """The image decoded with Pillow."""
        return _decode_png(self.png)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG bytes to `path` (folders are created); returns the path."""
        return _write(path, self.png)


class GenerationResult(list[GeneratedImage]):
    """What `generate()` returns: the list of images, plus the job's seeds, status and timings."""

    def __init__(
        self,
        images: Sequence[GeneratedImage] = (),
        *,
        job_id: str = "",
        status: GenerationStatus = GenerationStatus.SUCCEEDED,
        seeds: Sequence[int] = (),
        image_ids: Sequence[str] = (),
        queue_seconds: float = 0.0,
        generation_seconds: float = 0.0,
        total_seconds: float = 0.0,
        warnings: Sequence[ServerWarning] = (),
    ) -> None:
        super().__init__(images)
        self.job_id = job_id
        self.status = status
        self.seeds = list(seeds) or [img.seed for img in images]
        self.image_ids = list(image_ids)
        self.queue_seconds = queue_seconds
        self.generation_seconds = generation_seconds
        self.total_seconds = total_seconds
        self.warnings = list(warnings)

    @property
    def images(self) -> list[GeneratedImage]:
        return list(self)

    def __repr__(self) -> str:
        return (
            f"GenerationResult(job_id={self.job_id!r}, status={self.status.value!r}, "
            f"seeds={self.seeds!r}, images={len(self)})"
        )


# Events of stream_generate(): every event carries the job id.


@dataclass
class Queued:
    job_id: str
    position: int = 0
    queue_depth: int = 0


@dataclass
class Started:
    job_id: str
    model_id: str = ""
    backend_id: str = ""
    sampler: str = ""
    schedule: str = ""
    seeds: list[int] = field(default_factory=list)
    batch_size: int = 0
    queue_seconds: float = 0.0
    width: int = 0
    height: int = 0
    steps: int = 0


@dataclass
class Progress:
    """Denoising progress; `preview` holds a small PNG when the server sent one."""

    job_id: str
    step: int
    total: int
    eta: float = 0.0
    preview: bytes | None = field(default=None, repr=False)
    images_done: int = 0
    images_total: int = 0
    steps_per_second: float = 0.0

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def preview_image(self) -> PILImage.Image | None:
        return _decode_png(self.preview) if self.preview else None


@dataclass
class ModelDownload:
    """The model is being copied from the server's artifact store to the replica that runs the
    job (its first use there); denoising progress follows."""

    job_id: str
    model_id: str
    bytes_done: int
    bytes_total: int

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 0.0


@dataclass
class ImageReady:
    job_id: str
    image: GeneratedImage


@dataclass
class Finished:
    job_id: str
    status: GenerationStatus
    image_count: int = 0
    image_ids: list[str] = field(default_factory=list)
    queue_seconds: float = 0.0
    generation_seconds: float = 0.0
    total_seconds: float = 0.0
    error_reason: str = ""
    error_message: str = ""


@dataclass
class WarningEvent:
    job_id: str
    warning: ServerWarning


GenerateEvent: TypeAlias = (
    Queued | Started | ModelDownload | Progress | ImageReady | Finished | WarningEvent
)


# ------------------------------------------------------------------------------------ gallery


@dataclass
class GalleryImage:
    image_id: str
    job_id: str = ""
    created_at: datetime | None = None
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    index: int = 0
    width: int = 0
    height: int = 0
    model_id: str = ""
    sampler: str = ""
    schedule: str = ""
    steps: int = 0
    cfg_scale: float = 0.0
    queue_seconds: float = 0.0
    generation_seconds: float = 0.0
    size_bytes: int = 0
    parameters_text: str = ""
    png: bytes | None = field(default=None, repr=False)
    has_init_image: bool = False
    has_mask: bool = False
    #: The request's options as keyword arguments: `client.generate(img.prompt, **img.params)`.
    params: GenerateParams = field(default_factory=lambda: GenerateParams(), repr=False)
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def image(self) -> PILImage.Image:
        if not self.png:
            raise ValueError("no PNG bytes: fetch the image with get_image(metadata_only=False)")
        return _decode_png(self.png)

    def save(self, path: str | os.PathLike[str]) -> Path:
        if not self.png:
            raise ValueError("no PNG bytes: fetch the image with get_image(metadata_only=False)")
        return _write(path, self.png)


@dataclass
class DeleteImagesResult:
    deleted_count: int
    not_found_ids: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------- training


@dataclass
class DatasetImage:
    filename: str
    width: int = 0
    height: int = 0
    size_bytes: int = 0
    sha256: str = ""


@dataclass
class Dataset:
    """What UploadImages returned: pass `dataset_id` to create_training_job."""

    dataset_id: str
    image_count: int = 0
    total_bytes: int = 0
    images: list[DatasetImage] = field(default_factory=list)


@dataclass
class TrainingMetrics:
    step: int
    total_steps: int
    loss: float = 0.0
    instance_loss: float = 0.0
    prior_loss: float | None = None
    learning_rate: float = 0.0
    steps_per_second: float = 0.0
    eta: float = 0.0
    peak_memory_bytes: int = 0
    grad_norm: float = 0.0
    epoch: int = 0


@dataclass
class Checkpoint:
    checkpoint_id: str
    step: int = 0
    kind: CheckpointKind = CheckpointKind.UNSPECIFIED
    path: str = ""
    size_bytes: int = 0
    created_at: datetime | None = None
    #: score per validation prompt (jobs with a validation_scorer; in CheckpointSaved events)
    validation_scores: dict[str, float] = field(default_factory=dict)
    #: their mean (None: not scored)
    validation_score: float | None = None


@dataclass
class TrainingJob:
    job_id: str
    display_name: str = ""
    state: TrainingState = TrainingState.UNSPECIFIED
    step: int = 0
    total_steps: int = 0
    queue_position: int = 0
    failure_reason: str = ""
    failure_message: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    updated_at: datetime | None = None
    output_model_id: str = ""
    trigger_phrase: str = ""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    last_metrics: TrainingMetrics | None = None
    warnings: list[ServerWarning] = field(default_factory=list)
    attempts: int = 0
    resumable: bool = False
    instance_image_count: int = 0
    job_dir: str = ""
    #: The resolved configuration (DreamBoothConfig field names; enums as their proto names).
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: Any = field(default=None, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.state.terminal


# Events of watch_training_job(): every event carries the job id and its sequence number.


@dataclass
class StateChanged:
    job_id: str
    sequence: int
    previous_state: TrainingState
    state: TrainingState
    reason: str = ""
    message: str = ""
    time: datetime | None = None


@dataclass
class TrainingProgress:
    job_id: str
    sequence: int
    metrics: TrainingMetrics
    time: datetime | None = None


@dataclass
class SampleReady:
    job_id: str
    sequence: int
    step: int
    prompt: str
    seed: int
    png: bytes = field(default=b"", repr=False)
    index: int = 0
    time: datetime | None = None
    #: identifiers of the job's concepts the prompt names
    concepts: list[str] = field(default_factory=list)

    @property
    def image(self) -> PILImage.Image:
        return _decode_png(self.png)


@dataclass
class CheckpointSaved:
    job_id: str
    sequence: int
    checkpoint: Checkpoint
    time: datetime | None = None


@dataclass
class LogMessage:
    job_id: str
    sequence: int
    level: LogLevel
    message: str
    logger: str = ""
    time: datetime | None = None


@dataclass
class TrainingWarning:
    job_id: str
    sequence: int
    warning: ServerWarning
    time: datetime | None = None


@dataclass
class ClassImagesProgress:
    job_id: str
    sequence: int
    ready: int
    total: int
    cached: int = 0
    time: datetime | None = None


TrainingEvent: TypeAlias = (
    StateChanged
    | TrainingProgress
    | SampleReady
    | CheckpointSaved
    | LogMessage
    | TrainingWarning
    | ClassImagesProgress
)


@dataclass
class ServiceHealth:
    """Health of one service address (status: SERVING, NOT_SERVING, UNAVAILABLE, ...)."""

    service: Literal["catalog", "generator", "trainer"]
    address: str
    status: str

    @property
    def serving(self) -> bool:
        return self.status == "SERVING"
