"""Conversion between the SDK's plain types and the boothstudio.v1 protobuf messages.

Pure functions (no I/O except reading local files given as inputs), shared by the sync and
asyncio clients and the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import io
import os
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format
from google.protobuf.message import Message

from boothstudio.clients.sdk.errors import Cancelled, GenerationFailed, Unavailable, invalid
from boothstudio.clients.sdk.text import parse_option as parse_option  # kept here for older callers
from boothstudio.clients.sdk.types import (
    Backend,
    BackendCapabilities,
    BackendKind,
    Checkpoint,
    CheckpointKind,
    CheckpointSaved,
    ClassImagesProgress,
    Dataset,
    DatasetImage,
    DeleteImagesResult,
    Finished,
    FinishReason,
    GalleryImage,
    GeneratedImage,
    GenerateEvent,
    GenerateParams,
    GenerationResult,
    GenerationStatus,
    HiresFix,
    ImageInput,
    ImageReady,
    LogLevel,
    LogMessage,
    MaskFill,
    Model,
    ModelDownload,
    ModelFormat,
    ModelKind,
    OptionScalar,
    Outpaint,
    Page,
    Parameter,
    ParameterType,
    PredictionType,
    Progress,
    Queued,
    Sampler,
    SampleReady,
    SamplerList,
    Schedule,
    ServerWarning,
    Started,
    StateChanged,
    TrainingEvent,
    TrainingJob,
    TrainingMetrics,
    TrainingProgress,
    TrainingState,
    TrainingWarning,
    WarningEvent,
)
from boothstudio.shared.option_values import from_option_value, to_option_value
from boothstudio.v1 import catalog_pb2, common_pb2, generator_pb2, trainer_pb2

E = TypeVar("E", bound=enum.StrEnum)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
UPLOAD_CHUNK_BYTES = 1024 * 1024


# --------------------------------------------------------------------------------------- enums


def _prefix(desc: _descriptor.EnumDescriptor) -> str:
    first = desc.values[0].name  # proto3 zero value: <PREFIX>UNSPECIFIED
    return first[: -len("UNSPECIFIED")] if first.endswith("UNSPECIFIED") else ""


def _enums(messages: Iterable[_descriptor.Descriptor]) -> Iterator[_descriptor.EnumDescriptor]:
    for m in messages:
        yield from m.enum_types
        yield from _enums(m.nested_types)


@functools.cache
def _friendly_enum_names() -> dict[str, str]:
    """Every proto enum value name of the API (``TRAINING_JOB_STATE_PREPARING``) -> the SDK's
    name for it (``preparing``)."""
    names: dict[str, str] = {}
    for module in (catalog_pb2, common_pb2, generator_pb2, trainer_pb2):
        file = module.DESCRIPTOR
        nested = _enums(file.message_types_by_name.values())
        for desc in [*file.enum_types_by_name.values(), *nested]:
            prefix = _prefix(desc)
            for v in desc.values:
                if prefix:
                    names[v.name] = v.name[len(prefix) :].lower()
    return names


_ENUM_WORD = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")


def readable_enum_names(text: str) -> str:
    """A server's message with proto enum value names as the SDK names them ("job is
    TRAINING_JOB_STATE_PREPARING" -> "job is preparing")."""
    names = _friendly_enum_names()
    return _ENUM_WORD.sub(lambda m: names.get(m.group(0), m.group(0)), text)


def enum_from_pb(cls: type[E], desc: _descriptor.EnumDescriptor, value: int) -> E:
    """A proto enum number as the SDK's StrEnum (unknown numbers map to UNSPECIFIED)."""
    v = desc.values_by_number.get(value)
    short = v.name[len(_prefix(desc)) :].lower() if v is not None else "unspecified"
    try:
        return cls(short)
    except ValueError:
        return cls("unspecified")


def enum_to_pb(desc: Any, value: Any, field_path: str) -> int:
    """A friendly enum value ("lora", "LORA", "TRAINING_METHOD_LORA", an SDK enum, a number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value in desc.values_by_number:
            return value
    else:
        text = str(value.value if isinstance(value, enum.Enum) else value)
        text = text.strip().upper().replace("-", "_").replace(" ", "_")
        prefix = _prefix(desc)
        for name in (prefix + text, text):
            if name in desc.values_by_name:
                return int(desc.values_by_name[name].number)
    choices = [v.name[len(_prefix(desc)) :].lower() for v in desc.values[1:]]
    raise invalid(field_path, f"must be one of {', '.join(choices)} (got {value!r})")


def _ts(msg: Message, name: str) -> datetime | None:
    if not msg.HasField(name):
        return None
    ts = getattr(msg, name)
    result: datetime = ts.ToDatetime(tzinfo=UTC)
    return result


# ------------------------------------------------------------------------------------- values


def option_to_pb(value: OptionScalar, field_path: str) -> common_pb2.OptionValue:
    try:
        return to_option_value(value)
    except TypeError as exc:
        raise invalid(field_path, str(exc)) from None


option_from_pb = from_option_value


def image_bytes(value: ImageInput, field_path: str) -> bytes:
    """Encoded bytes of an image given as bytes, a path or a PIL image (encoded as PNG)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_file():
            raise invalid(field_path, f"no such file: {path}")
        return path.read_bytes()
    from PIL import Image

    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    raise invalid(field_path, f"expected a PIL image, bytes or a path, not {type(value).__name__}")


def warning_from_pb(w: common_pb2.Warning) -> ServerWarning:
    return ServerWarning(reason=w.reason, message=w.message, field=w.field)


# ------------------------------------------------------------------------------------ catalog


def model_from_pb(m: catalog_pb2.Model) -> Model:
    return Model(
        id=m.id,
        display_name=m.display_name,
        kind=enum_from_pb(ModelKind, catalog_pb2.ModelKind.DESCRIPTOR, m.kind),
        backend_id=m.backend_id,
        architecture=m.architecture,
        native_resolution=m.native_resolution,
        prediction_type=enum_from_pb(
            PredictionType, catalog_pb2.PredictionType.DESCRIPTOR, m.prediction_type
        ),
        base_model_id=m.origin.base_model_id,
        training_job_id=m.origin.training_job_id,
        trigger_phrase=m.trigger_phrase,
        source_path=m.source_path,
        format=enum_from_pb(ModelFormat, catalog_pb2.ModelFormat.DESCRIPTOR, m.format),
        created_at=_ts(m, "create_time"),
        size_bytes=m.size_bytes,
        builtin=m.builtin,
        inpainting=m.inpainting,
        description=m.description,
        config_path=m.config_path,
        embedding_vectors=m.embedding.vectors,
        embedding_widths=list(m.embedding.widths),
        has_preview=m.has_preview,
        raw=m,
    )


def models_page(resp: catalog_pb2.ListModelsResponse) -> Page[Model]:
    return Page([model_from_pb(m) for m in resp.models], resp.next_page_token, resp.total_size)


def imported_model(resp: catalog_pb2.ImportModelResponse) -> Model:
    model = model_from_pb(resp.model)
    model.warnings = [warning_from_pb(w) for w in resp.warnings]
    return model


def import_model_request(
    source: str | os.PathLike[str],
    *,
    source_type: str = "auto",
    model_id: str = "",
    display_name: str = "",
    kind: ModelKind | str | None = None,
    architecture: str = "",
    backend_id: str = "",
    prediction_type: PredictionType | str | None = None,
    trigger_phrase: str = "",
    base_model_id: str = "",
    config_path: str | os.PathLike[str] = "",
    hf_revision: str = "",
    copy_files: bool = False,
    description: str = "",
    preview: bytes | str | os.PathLike[str] | None = None,
) -> catalog_pb2.ImportModelRequest:
    """Build an ImportModelRequest; `source_type` auto-detects folder / single file / HF id.
    `preview`: the picture's bytes, or a path to read them from."""
    text = os.fspath(source)
    if not text:
        raise invalid("source", "give a diffusers folder, a .safetensors/.ckpt file or an HF id")
    local = Path(text).expanduser()
    kind_of = source_type
    if kind_of == "auto":
        if local.is_dir():
            kind_of = "diffusers"
        elif local.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin") or local.is_file():
            kind_of = "single_file"
        elif text.count("/") == 1 and not text.startswith((".", "/", "~")):
            kind_of = "hf_cache"
        else:
            kind_of = "diffusers"
    if kind_of not in ("diffusers", "single_file", "hf_cache"):
        raise invalid("source_type", "must be auto, diffusers, single_file or hf_cache")
    if kind_of != "hf_cache" and local.exists():
        text = str(local.resolve())  # the services usually run on this host: send absolute paths
    req = catalog_pb2.ImportModelRequest(
        hf_revision=hf_revision,
        config_path=str(Path(config_path).resolve()) if config_path else "",
        model_id=model_id,
        display_name=display_name,
        architecture=architecture,
        backend_id=backend_id,
        trigger_phrase=trigger_phrase,
        copy_files=copy_files,
        description=description,
    )
    setattr(req, f"{kind_of}_path" if kind_of != "hf_cache" else "hf_cache_id", text)
    if kind is not None:
        req.kind = enum_to_pb(catalog_pb2.ModelKind.DESCRIPTOR, kind, "kind")  # type: ignore[assignment]
    if prediction_type is not None:
        req.prediction_type = enum_to_pb(  # type: ignore[assignment]
            catalog_pb2.PredictionType.DESCRIPTOR, prediction_type, "prediction_type"
        )
    if base_model_id:
        req.origin.base_model_id = base_model_id
    if isinstance(preview, bytes):
        req.preview = preview
    elif preview:
        try:
            req.preview = Path(preview).expanduser().read_bytes()
        except OSError as exc:
            raise invalid("preview", f"cannot read {os.fspath(preview)}: {exc.strerror}") from exc
    return req


def parameter_from_pb(p: catalog_pb2.Parameter) -> Parameter:
    return Parameter(
        name=p.name,
        type=enum_from_pb(ParameterType, catalog_pb2.ParameterType.DESCRIPTOR, p.type),
        default=option_from_pb(p.default_value),
        min=p.min_value if p.HasField("min_value") else None,
        max=p.max_value if p.HasField("max_value") else None,
        choices=list(p.choices),
        help=p.help,
        label=p.label,
    )


def samplers_from_pb(resp: catalog_pb2.ListSamplersResponse) -> SamplerList:
    return SamplerList(
        samplers=[
            Sampler(
                id=s.id,
                label=s.label,
                aliases=list(s.aliases),
                schedules=list(s.schedules),
                default_schedule=s.default_schedule,
                parameters=[parameter_from_pb(p) for p in s.parameters],
                description=s.description,
                default_steps=s.default_steps,
            )
            for s in resp.samplers
        ],
        schedules=[Schedule(id=s.id, label=s.label, help=s.help) for s in resp.schedules],
        default_sampler=resp.default_sampler,
        backend_id=resp.backend_id,
        raw=resp,
    )


def backends_from_pb(resp: catalog_pb2.ListBackendsResponse) -> list[Backend]:
    out = []
    for b in resp.backends:
        c = b.capabilities
        out.append(
            Backend(
                id=b.id,
                kind=enum_from_pb(BackendKind, catalog_pb2.BackendKind.DESCRIPTOR, b.kind),
                display_name=b.display_name,
                reachable=b.reachable,
                capabilities=BackendCapabilities(
                    txt2img=c.txt2img,
                    img2img=c.img2img,
                    inpaint=c.inpaint,
                    training=c.training,
                    previews=c.previews,
                    cancel=c.cancel,
                ),
                message=b.message,
                endpoint=b.endpoint,
                device=b.device,
                is_default=b.id == resp.default_backend_id,
                raw=b,
            )
        )
    return out


# --------------------------------------------------------------------------------- generation

_SIMPLE_GENERATE_FIELDS = (
    "negative_prompt",
    "model_id",
    "backend_id",
    "sampler",
    "schedule",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "count",
    "strength",
    "mask_blur",
    "invert_mask",
    "preview_interval",
    "skip_gallery",
    "job_id",
)
GENERATE_PARAM_NAMES = frozenset(GenerateParams.__annotations__)


def _set_message(message: Any, value: Any, field_path: str) -> None:
    """A request's sub-message (hires, outpaint) from a dataclass, a mapping or True (= all
    defaults); None values are left unset, each bad value named by its field."""
    message.SetInParent()
    if value is True:
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, Mapping):
        raise invalid(field_path, f"expected a mapping of its fields or True, got {value!r}")
    known = message.DESCRIPTOR.fields_by_name
    for key, item in value.items():
        if key not in known:
            raise invalid(f"{field_path}.{key}", f"unknown field (known: {', '.join(known)})")
        if item is None:
            continue
        try:
            setattr(message, key, item)
        except (TypeError, ValueError) as exc:
            raise invalid(f"{field_path}.{key}", f"bad value {item!r}: {exc}") from None


def new_job_id() -> str:
    """A client-chosen generation job id (lets the SDK cancel a job before its first event)."""
    return f"gen-{uuid.uuid4().hex}"


def generate_request(prompt: str, params: Mapping[str, Any]) -> generator_pb2.GenerateRequest:
    """Build a GenerateRequest; None values mean "server default". Always sets a job id."""
    unknown = set(params) - GENERATE_PARAM_NAMES
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    req = generator_pb2.GenerateRequest(prompt=prompt)
    for name in _SIMPLE_GENERATE_FIELDS:
        value = params.get(name)
        if value is None:
            continue
        try:
            setattr(req, name, value)
        except (TypeError, ValueError) as exc:
            raise invalid(name, f"bad value {value!r}: {exc}") from None
    seed = params.get("seed")
    if isinstance(seed, int) and seed < -1:
        raise invalid("seed", f"must be -1 (random) or 0 and up, got {seed}")
    if seed is not None and seed != -1:  # -1 = random (A1111)
        try:
            req.seed = seed
        except (TypeError, ValueError) as exc:
            raise invalid("seed", f"bad value {seed!r}: {exc}") from None
    if params.get("init_image") is not None:
        req.init_image = image_bytes(params["init_image"], "init_image")
    if params.get("mask") is not None:
        req.mask_image = image_bytes(params["mask"], "mask")
    if params.get("mask_fill") is not None:
        req.mask_fill = enum_to_pb(  # type: ignore[assignment]
            generator_pb2.MaskFill.DESCRIPTOR, params["mask_fill"], "mask_fill"
        )
    for map_name in ("sampler_options", "backend_options"):
        for key, value in (params.get(map_name) or {}).items():
            getattr(req, map_name)[key].CopyFrom(option_to_pb(value, f"{map_name}.{key}"))
    for message_name in ("hires", "outpaint"):
        if params.get(message_name) not in (None, False):
            _set_message(getattr(req, message_name), params[message_name], message_name)
    if params.get("priority") is not None:
        req.priority = enum_to_pb(  # type: ignore[assignment]
            generator_pb2.Priority.DESCRIPTOR, params["priority"], "priority"
        )
    if params.get("loras") is not None:
        for model_id, weight in lora_weights(params["loras"]):
            req.loras.add(model_id=model_id, weight=weight)
    if not req.job_id:
        req.job_id = new_job_id()
    return req


def lora_weights(loras: Any) -> list[tuple[str, float]]:
    """GenerateParams.loras as (model id, weight) pairs (see its doc); bad entries named."""
    items = list(loras.items()) if isinstance(loras, Mapping) else loras
    if isinstance(items, str) or not isinstance(items, Iterable):
        raise invalid("loras", f"expected a mapping or a list, got {loras!r}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            name, sep, weight = item.rpartition(":")
            item = (name, weight) if sep else (weight, 1.0)
        try:
            model_id, weight = item
            out.append((str(model_id), float(weight)))
        except (TypeError, ValueError):
            raise invalid(f"loras[{i}]", f"expected MODEL_ID or MODEL_ID:WEIGHT, got {item!r}"
                          ) from None
    return out


def generated_image_from_pb(img: generator_pb2.GeneratedImage, job_id: str) -> GeneratedImage:
    return GeneratedImage(
        index=img.index,
        seed=img.seed,
        png=img.png,
        image_id=img.image_id,
        width=img.width,
        height=img.height,
        finish_reason=enum_from_pb(
            FinishReason, generator_pb2.FinishReason.DESCRIPTOR, img.finish_reason
        ),
        message=img.message,
        job_id=job_id,
        raw=img,
    )


def generate_event(resp: generator_pb2.GenerateResponse) -> GenerateEvent | None:
    """One stream message as an event; None for keepalives."""
    kind = resp.WhichOneof("event")
    job = resp.job_id
    if kind == "queued":
        return Queued(job, resp.queued.position, resp.queued.queue_depth)
    if kind == "started":
        s = resp.started
        return Started(
            job_id=job,
            model_id=s.model_id,
            backend_id=s.backend_id,
            sampler=s.sampler,
            schedule=s.schedule,
            seeds=list(s.seeds),
            batch_size=s.batch_size,
            queue_seconds=s.queue_seconds,
            width=s.width,
            height=s.height,
            steps=s.steps,
        )
    if kind == "progress":
        p = resp.progress
        return Progress(
            job_id=job,
            step=p.step,
            total=p.total_steps,
            eta=p.eta_seconds,
            preview=p.preview_png or None,
            images_done=p.images_done,
            images_total=p.images_total,
            steps_per_second=p.steps_per_second,
        )
    if kind == "model_download":
        d = resp.model_download
        return ModelDownload(job, d.model_id, d.bytes_done, d.bytes_total)
    if kind == "image":
        return ImageReady(job, generated_image_from_pb(resp.image, job))
    if kind == "finished":
        f = resp.finished
        return Finished(
            job_id=job,
            status=enum_from_pb(
                GenerationStatus, generator_pb2.GenerationStatus.DESCRIPTOR, f.status
            ),
            image_count=f.image_count,
            image_ids=list(f.image_ids),
            queue_seconds=f.queue_seconds,
            generation_seconds=f.generation_seconds,
            total_seconds=f.total_seconds,
            error_reason=f.error_reason,
            error_message=f.error_message,
        )
    if kind == "warning":
        return WarningEvent(job, warning_from_pb(resp.warning))
    return None


@dataclass
class GenerationCollector:
    """Folds a generation's events into a GenerationResult (or the matching exception)."""

    job_id: str = ""
    seeds: list[int] = field(default_factory=list)
    images: dict[int, GeneratedImage] = field(default_factory=dict)
    warnings: list[ServerWarning] = field(default_factory=list)
    finished: Finished | None = None

    def add(self, event: GenerateEvent) -> None:
        self.job_id = event.job_id or self.job_id
        if isinstance(event, Started):
            self.seeds = list(event.seeds)
        elif isinstance(event, ImageReady):
            self.images[event.image.index] = event.image
        elif isinstance(event, WarningEvent):
            self.warnings.append(event.warning)
        elif isinstance(event, Finished):
            self.finished = event

    def result(self) -> GenerationResult:
        f = self.finished
        if f is None:
            raise Unavailable(
                f"the generation stream of job {self.job_id} ended before the job finished",
                reason="STREAM_ENDED",
            )
        if f.status is GenerationStatus.CANCELLED:
            raise Cancelled(
                f.error_message or f"generation job {f.job_id} was cancelled",
                reason=f.error_reason or "CANCELLED",
            )
        if f.status is not GenerationStatus.SUCCEEDED:
            exc = GenerationFailed(
                f.error_message or f"generation job {f.job_id} failed",
                reason=f.error_reason or None,
            )
            exc.job_id = f.job_id
            raise exc
        images = [self.images[i] for i in sorted(self.images)]
        return GenerationResult(
            images,
            job_id=f.job_id,
            status=f.status,
            seeds=self.seeds or [i.seed for i in images],
            image_ids=f.image_ids or [i.image_id for i in images if i.image_id],
            queue_seconds=f.queue_seconds,
            generation_seconds=f.generation_seconds,
            total_seconds=f.total_seconds,
            warnings=self.warnings,
        )


# ------------------------------------------------------------------------------------ gallery


def _params_from_gallery(g: generator_pb2.GalleryImage) -> GenerateParams:
    r = g.request
    params = GenerateParams()
    if r.negative_prompt:
        params["negative_prompt"] = r.negative_prompt
    if g.model_id or r.model_id:
        params["model_id"] = g.model_id or r.model_id
    if r.backend_id:
        params["backend_id"] = r.backend_id
    if g.sampler or r.sampler:
        params["sampler"] = g.sampler or r.sampler
    if g.schedule or r.schedule:
        params["schedule"] = g.schedule or r.schedule
    if g.steps or r.HasField("steps"):
        params["steps"] = g.steps or r.steps
    if g.cfg_scale or r.HasField("cfg_scale"):
        params["cfg_scale"] = g.cfg_scale or r.cfg_scale
    if g.width or r.HasField("width"):
        params["width"] = g.width or r.width
    if g.height or r.HasField("height"):
        params["height"] = g.height or r.height
    params["seed"] = g.seed
    if r.HasField("strength"):
        params["strength"] = r.strength
    if r.HasField("mask_blur"):
        params["mask_blur"] = r.mask_blur
    if r.invert_mask:
        params["invert_mask"] = True
    if r.mask_fill:
        params["mask_fill"] = enum_from_pb(MaskFill, generator_pb2.MaskFill.DESCRIPTOR, r.mask_fill)
    if r.HasField("hires"):
        h = r.hires
        params["hires"] = HiresFix(
            first_pass_width=h.first_pass_width if h.HasField("first_pass_width") else None,
            first_pass_height=h.first_pass_height if h.HasField("first_pass_height") else None,
            upscaler=h.upscaler,
            steps=h.steps if h.HasField("steps") else None,
            denoising_strength=h.denoising_strength if h.HasField("denoising_strength") else None,
        )
    if r.HasField("outpaint"):
        o = r.outpaint
        params["outpaint"] = Outpaint(o.left, o.right, o.top, o.bottom,
                                      o.feather if o.HasField("feather") else None)
    for map_name in ("sampler_options", "backend_options"):
        values = {k: option_from_pb(v) for k, v in getattr(r, map_name).items()}
        clean = {k: v for k, v in values.items() if v is not None}
        if clean:
            params[map_name] = clean
    return params


def gallery_image_from_pb(g: generator_pb2.GalleryImage) -> GalleryImage:
    return GalleryImage(
        image_id=g.image_id,
        job_id=g.job_id,
        created_at=_ts(g, "create_time"),
        prompt=g.request.prompt,
        negative_prompt=g.request.negative_prompt,
        seed=g.seed,
        index=g.index,
        width=g.width,
        height=g.height,
        model_id=g.model_id,
        sampler=g.sampler,
        schedule=g.schedule,
        steps=g.steps,
        cfg_scale=g.cfg_scale,
        queue_seconds=g.queue_seconds,
        generation_seconds=g.generation_seconds,
        size_bytes=g.size_bytes,
        parameters_text=g.parameters_text,
        png=g.png or None,
        has_init_image=g.has_init_image,
        has_mask=g.has_mask,
        params=_params_from_gallery(g),
        raw=g,
    )


def images_page(resp: generator_pb2.ListImagesResponse) -> Page[GalleryImage]:
    return Page(
        [gallery_image_from_pb(g) for g in resp.images], resp.next_page_token, resp.total_size
    )


def delete_images_result(resp: generator_pb2.DeleteImagesResponse) -> DeleteImagesResult:
    return DeleteImagesResult(resp.deleted_count, list(resp.not_found_ids))


def combine_deletes(results: list[DeleteImagesResult]) -> DeleteImagesResult:
    """Results of the same DeleteImages sent to several generators."""
    missing = set.intersection(*(set(r.not_found_ids) for r in results)) if results else set()
    order = [i for i in (results[0].not_found_ids if results else []) if i in missing]
    return DeleteImagesResult(sum(r.deleted_count for r in results), order)


# ----------------------------------------------------------------------------------- training


def metrics_from_pb(m: trainer_pb2.TrainingMetrics) -> TrainingMetrics:
    return TrainingMetrics(
        step=m.step,
        total_steps=m.total_steps,
        loss=m.loss,
        instance_loss=m.instance_loss,
        prior_loss=m.prior_loss if m.HasField("prior_loss") else None,
        learning_rate=m.learning_rate,
        steps_per_second=m.steps_per_second,
        eta=m.eta_seconds,
        peak_memory_bytes=m.peak_memory_bytes,
        grad_norm=m.grad_norm,
        epoch=m.epoch,
    )


def checkpoint_from_pb(c: trainer_pb2.Checkpoint) -> Checkpoint:
    return Checkpoint(
        checkpoint_id=c.checkpoint_id,
        step=c.step,
        kind=enum_from_pb(CheckpointKind, trainer_pb2.CheckpointKind.DESCRIPTOR, c.kind),
        path=c.path,
        size_bytes=c.size_bytes,
        created_at=_ts(c, "create_time"),
        validation_scores={s.prompt: s.score for s in c.validation_scores},
        validation_score=c.validation_score if c.HasField("validation_score") else None,
    )


def _state(value: int) -> TrainingState:
    return enum_from_pb(TrainingState, trainer_pb2.TrainingJobState.DESCRIPTOR, value)


def training_job_from_pb(j: trainer_pb2.TrainingJob) -> TrainingJob:
    return TrainingJob(
        job_id=j.job_id,
        display_name=j.display_name,
        state=_state(j.state),
        step=j.step,
        total_steps=j.total_steps,
        queue_position=j.queue_position,
        failure_reason=j.failure_reason,
        failure_message=j.failure_message,
        created_at=_ts(j, "create_time"),
        started_at=_ts(j, "start_time"),
        ended_at=_ts(j, "end_time"),
        updated_at=_ts(j, "update_time"),
        output_model_id=j.output_model_id,
        trigger_phrase=j.trigger_phrase,
        checkpoints=[checkpoint_from_pb(c) for c in j.checkpoints],
        last_metrics=metrics_from_pb(j.last_metrics) if j.HasField("last_metrics") else None,
        warnings=[warning_from_pb(w) for w in j.warnings],
        attempts=j.attempts,
        resumable=j.resumable,
        instance_image_count=j.instance_image_count,
        job_dir=j.job_dir,
        config=json_format.MessageToDict(j.config, preserving_proto_field_name=True),
        raw=j,
    )


def jobs_page(resp: trainer_pb2.ListTrainingJobsResponse) -> Page[TrainingJob]:
    return Page([training_job_from_pb(j) for j in resp.jobs], resp.next_page_token, resp.total_size)


def training_event(resp: trainer_pb2.WatchTrainingJobResponse) -> TrainingEvent | None:
    """One watch-stream message as an event; None for keepalives."""
    kind = resp.WhichOneof("event")
    job, seq, t = resp.job_id, resp.sequence, _ts(resp, "time")
    if kind == "state_changed":
        s = resp.state_changed
        return StateChanged(
            job, seq, _state(s.previous_state), _state(s.state), s.reason, s.message, t
        )
    if kind == "metrics":
        return TrainingProgress(job, seq, metrics_from_pb(resp.metrics), t)
    if kind == "sample":
        s2 = resp.sample
        return SampleReady(job, seq, s2.step, s2.prompt, s2.seed, s2.png, s2.index, t,
                           concepts=list(s2.concept_identifiers))
    if kind == "checkpoint_saved":
        return CheckpointSaved(job, seq, checkpoint_from_pb(resp.checkpoint_saved.checkpoint), t)
    if kind == "log":
        lg = resp.log
        level = enum_from_pb(LogLevel, common_pb2.LogLevel.DESCRIPTOR, lg.level)
        return LogMessage(job, seq, level, lg.message, lg.logger, t)
    if kind == "warning":
        return TrainingWarning(job, seq, warning_from_pb(resp.warning), t)
    if kind == "class_images":
        c = resp.class_images
        return ClassImagesProgress(job, seq, c.ready, c.total, c.cached, t)
    return None


def watch_request(
    job_id: str, include_history: bool, include_logs: bool
) -> trainer_pb2.WatchTrainingJobRequest:
    return trainer_pb2.WatchTrainingJobRequest(
        job_id=job_id, include_history=include_history, include_logs=include_logs
    )


def _close(name: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def fill_message(msg: Message, data: Mapping[str, Any], path: str) -> None:
    """Set `msg`'s fields from a mapping of field names (nested mappings for messages, friendly
    enum names). Unknown names and bad values raise InvalidArgument naming the field path."""
    if not isinstance(data, Mapping):
        raise invalid(path, f"expected a mapping, not {type(data).__name__}")
    fields = msg.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        fpath = f"{path}.{key}" if path else str(key)
        fd = fields.get(str(key))
        if fd is None:
            raise invalid(fpath, "unknown setting" + _close(str(key), list(fields)))
        if value is None:
            continue
        if key == "prior_preservation" and isinstance(value, bool):
            value = {"enabled": value}
        repeated = fd.is_repeated
        if repeated and (isinstance(value, str | bytes) or not isinstance(value, Sequence)):
            raise invalid(fpath, "expected a list")
        try:
            if fd.type == fd.TYPE_MESSAGE:
                if repeated:
                    for i, item in enumerate(value):
                        fill_message(getattr(msg, fd.name).add(), item, f"{fpath}[{i}]")
                else:
                    fill_message(getattr(msg, fd.name), value, fpath)
            elif fd.type == fd.TYPE_ENUM:
                assert fd.enum_type is not None
                if repeated:
                    getattr(msg, fd.name).extend(
                        enum_to_pb(fd.enum_type, v, f"{fpath}[{i}]") for i, v in enumerate(value)
                    )
                else:
                    setattr(msg, fd.name, enum_to_pb(fd.enum_type, value, fpath))
            elif repeated:
                getattr(msg, fd.name).extend(value)
            else:
                if fd.type in (fd.TYPE_DOUBLE, fd.TYPE_FLOAT) and isinstance(value, int):
                    value = float(value)
                setattr(msg, fd.name, value)
        except (TypeError, ValueError) as exc:
            raise invalid(fpath, f"bad value {value!r}: {exc}") from None


def dreambooth_config(options: Mapping[str, Any]) -> trainer_pb2.DreamBoothConfig:
    msg = trainer_pb2.DreamBoothConfig()
    fill_message(msg, options, "config")
    return msg


@dataclass
class TrainingSpec:
    """A training job described by a YAML file or keyword arguments."""

    options: dict[str, Any] = field(default_factory=dict)
    images: Path | list[Path] | None = None
    display_name: str = ""
    job_id: str = ""


_SPEC_KEYS = ("images", "instance_images_dir", "display_name", "job_id")


def load_training_yaml(path: str | os.PathLike[str]) -> TrainingSpec:
    """Read a training YAML file.

    Either the DreamBoothConfig settings at the top level, or under ``config:``; plus
    ``images:`` (a folder or a list of files, relative to the YAML file), ``display_name:`` and
    ``job_id:``.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise invalid("config_file", f"cannot read {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise invalid("config_file", f"{p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("config_file", f"{p} must hold a mapping of settings")
    data = dict(data)
    spec = TrainingSpec()
    images = data.pop("images", None) or data.pop("instance_images_dir", None)
    if images is not None:
        base = p.parent
        if isinstance(images, str):
            spec.images = base / Path(images).expanduser()
        elif isinstance(images, list):
            spec.images = [base / Path(str(i)).expanduser() for i in images]
        else:
            raise invalid("images", "expected a folder or a list of files")
    for concept in data.get("concepts") or []:  # a concept's images, relative to the file too
        if isinstance(concept, dict) and isinstance(concept.get("images"), str):
            concept["images"] = p.parent / Path(concept["images"]).expanduser()
        elif isinstance(concept, dict) and isinstance(concept.get("images"), list):
            concept["images"] = [p.parent / Path(str(i)).expanduser() for i in concept["images"]]
    spec.display_name = str(data.pop("display_name", "") or "")
    spec.job_id = str(data.pop("job_id", "") or "")
    nested = data.pop("config", None)
    if nested is not None:
        if not isinstance(nested, dict):
            raise invalid("config", "expected a mapping of settings")
        data = {**nested, **data}
    spec.options = data
    return spec


def image_files(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image files of a folder (sorted; .png/.jpg/.jpeg/.webp) or an explicit list."""
    if isinstance(images, str | os.PathLike):
        root = Path(images).expanduser()
        if root.is_dir():
            files = sorted(
                f for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise invalid("images", f"no {'/'.join(IMAGE_SUFFIXES)} files in the folder {root}")
            return files
        paths = [root]
    else:
        paths = [Path(i).expanduser() for i in images]
    if not paths:
        raise invalid("images", "no images given")
    for f in paths:
        if not f.is_file():
            raise invalid("images", f"no such file or folder: {f}")
    return paths


def upload_requests(
    files: Sequence[Path],
    *,
    name: str = "",
    dataset_id: str = "",
    chunk_size: int = UPLOAD_CHUNK_BYTES,
) -> Iterator[trainer_pb2.UploadImagesRequest]:
    """The UploadImages client stream: metadata, then each file in chunks (read lazily).

    A caption is taken from a sidecar text file with the same stem (``dog1.png`` +
    ``dog1.txt``)."""
    yield trainer_pb2.UploadImagesRequest(
        metadata=trainer_pb2.UploadImagesMetadata(name=name, dataset_id=dataset_id)
    )
    seen: set[str] = set()
    for path in files:
        filename = path.name
        n = 1
        while filename in seen:
            n += 1
            filename = f"{path.stem}-{n}{path.suffix}"
        seen.add(filename)
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.is_file() else ""
        with path.open("rb") as fh:
            first = True
            while True:
                data = fh.read(chunk_size)
                if not data and not first:
                    break
                yield trainer_pb2.UploadImagesRequest(
                    chunk=trainer_pb2.ImageChunk(
                        filename=filename, data=data, caption=caption if first else ""
                    )
                )
                first = False
                if len(data) < chunk_size:
                    break


def dataset_from_pb(resp: trainer_pb2.UploadImagesResponse) -> Dataset:
    return Dataset(
        dataset_id=resp.dataset_id,
        image_count=resp.image_count,
        total_bytes=resp.total_bytes,
        images=[
            DatasetImage(i.filename, i.width, i.height, i.size_bytes, i.sha256) for i in resp.images
        ],
    )


def training_states(states: Sequence[TrainingState | str]) -> list[int]:
    desc = trainer_pb2.TrainingJobState.DESCRIPTOR
    return [enum_to_pb(desc, s, f"states[{i}]") for i, s in enumerate(states)]
