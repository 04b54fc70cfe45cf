"""Unary operations as data: which service and RPC, the request, how to read the answer, and
whether the call may be retried. The sync and asyncio clients only differ in how they run them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk.config import ServiceName
from boothstudio.clients.sdk.errors import invalid
from boothstudio.clients.sdk.types import (
    Backend,
    DeleteImagesResult,
    GalleryImage,
    Model,
    ModelKind,
    Page,
    SamplerList,
    TrainingJob,
    TrainingState,
)
from boothstudio.v1 import catalog_pb2, generator_pb2, trainer_pb2

T = TypeVar("T")


@dataclass(frozen=True)
class UnaryOp(Generic[T]):
    """One unary RPC to run.

    fanout (matters only with several generator addresses):
    "one": the next channel in round-robin order; "first_found": try each channel until one
    does not answer NOT_FOUND (gallery reads when galleries are per process); "all": send to
    every channel and `combine` the answers (cancel, delete), ignoring NOT_FOUND ones.
    """

    service: ServiceName
    method: str
    request: Any
    parse: Callable[[Any], T]
    idempotent: bool = False
    fanout: Literal["one", "first_found", "all"] = "one"
    combine: Callable[[list[T]], T] | None = None


# ------------------------------------------------------------------------------------ catalog


def list_models(
    page_size: int = 0,
    page_token: str = "",
    kind: ModelKind | str | None = None,
    backend_id: str = "",
    base_model_id: str = "",
) -> UnaryOp[Page[Model]]:
    req = catalog_pb2.ListModelsRequest(
        page_size=page_size,
        page_token=page_token,
        backend_id=backend_id,
        base_model_id=base_model_id,
    )
    if kind is not None:
        req.kind = cv.enum_to_pb(catalog_pb2.ModelKind.DESCRIPTOR, kind, "kind")  # type: ignore[assignment]
    return UnaryOp("catalog", "ListModels", req, cv.models_page, idempotent=True)


def get_model(model_id: str) -> UnaryOp[Model]:
    return UnaryOp(
        "catalog",
        "GetModel",
        catalog_pb2.GetModelRequest(model_id=model_id),
        lambda r: cv.model_from_pb(r.model),
        idempotent=True,
    )


def import_model(source: str | os.PathLike[str], **options: Any) -> UnaryOp[Model]:
    return UnaryOp(
        "catalog", "ImportModel", cv.import_model_request(source, **options), cv.imported_model
    )


def get_model_preview(model_id: str) -> UnaryOp[bytes]:
    return UnaryOp(
        "catalog",
        "GetModelPreview",
        catalog_pb2.GetModelPreviewRequest(model_id=model_id),
        lambda r: bytes(r.png),
        idempotent=True,
    )


def delete_model(model_id: str, delete_files: bool = False) -> UnaryOp[int]:
    return UnaryOp(
        "catalog",
        "DeleteModel",
        catalog_pb2.DeleteModelRequest(model_id=model_id, delete_files=delete_files),
        lambda r: int(r.freed_bytes),
    )


def list_samplers(backend_id: str = "", model_id: str = "") -> UnaryOp[SamplerList]:
    return UnaryOp(
        "catalog",
        "ListSamplers",
        catalog_pb2.ListSamplersRequest(backend_id=backend_id, model_id=model_id),
        cv.samplers_from_pb,
        idempotent=True,
    )


def list_backends(refresh: bool = False) -> UnaryOp[list[Backend]]:
    return UnaryOp(
        "catalog",
        "ListBackends",
        catalog_pb2.ListBackendsRequest(refresh=refresh),
        cv.backends_from_pb,
        idempotent=True,
    )


# ---------------------------------------------------------------------------------- generator


def cancel_generation(job_id: str) -> UnaryOp[bool]:
    return UnaryOp(
        "generator",
        "CancelGeneration",
        generator_pb2.CancelGenerationRequest(job_id=job_id),
        lambda r: bool(r.cancelled),
        idempotent=True,
        fanout="all",
        combine=any,
    )


def list_images(
    page_size: int = 0, page_token: str = "", model_id: str = "", job_id: str = ""
) -> UnaryOp[Page[GalleryImage]]:
    return UnaryOp(
        "generator",
        "ListImages",
        generator_pb2.ListImagesRequest(
            page_size=page_size, page_token=page_token, model_id=model_id, job_id=job_id
        ),
        cv.images_page,
        idempotent=True,
    )


def get_image(image_id: str, metadata_only: bool = False) -> UnaryOp[GalleryImage]:
    return UnaryOp(
        "generator",
        "GetImage",
        generator_pb2.GetImageRequest(image_id=image_id, metadata_only=metadata_only),
        lambda r: cv.gallery_image_from_pb(r.image),
        idempotent=True,
        fanout="first_found",
    )


def delete_images(
    image_ids: str | Sequence[str] = (), job_id: str = ""
) -> UnaryOp[DeleteImagesResult]:
    ids = [image_ids] if isinstance(image_ids, str) else list(image_ids)
    if not ids and not job_id:
        raise invalid("image_ids", "give at least one image id or a job id")
    return UnaryOp(
        "generator",
        "DeleteImages",
        generator_pb2.DeleteImagesRequest(image_ids=ids, job_id=job_id),
        cv.delete_images_result,
        fanout="all",
        combine=cv.combine_deletes,
    )


# ------------------------------------------------------------------------------------ trainer


def create_training_job(
    options: dict[str, Any], display_name: str = "", job_id: str = "", validate_only: bool = False
) -> UnaryOp[TrainingJob]:
    req = trainer_pb2.CreateTrainingJobRequest(
        config=cv.dreambooth_config(options),
        display_name=display_name,
        job_id=job_id,
        validate_only=validate_only,
    )
    return UnaryOp("trainer", "CreateTrainingJob", req, lambda r: cv.training_job_from_pb(r.job))


def get_training_job(job_id: str) -> UnaryOp[TrainingJob]:
    return UnaryOp(
        "trainer",
        "GetTrainingJob",
        trainer_pb2.GetTrainingJobRequest(job_id=job_id),
        lambda r: cv.training_job_from_pb(r.job),
        idempotent=True,
    )


def list_training_jobs(
    page_size: int = 0,
    page_token: str = "",
    states: Sequence[TrainingState | str] = (),
    base_model_id: str = "",
) -> UnaryOp[Page[TrainingJob]]:
    req = trainer_pb2.ListTrainingJobsRequest(
        page_size=page_size,
        page_token=page_token,
        states=cv.training_states(states),  # type: ignore[arg-type]
        base_model_id=base_model_id,
    )
    return UnaryOp("trainer", "ListTrainingJobs", req, cv.jobs_page, idempotent=True)


def cancel_training_job(job_id: str) -> UnaryOp[TrainingJob]:
    return UnaryOp(
        "trainer",
        "CancelTrainingJob",
        trainer_pb2.CancelTrainingJobRequest(job_id=job_id),
        lambda r: cv.training_job_from_pb(r.job),
        idempotent=True,
    )


def resume_training_job(job_id: str, max_train_steps: int = 0) -> UnaryOp[TrainingJob]:
    return UnaryOp(
        "trainer",
        "ResumeTrainingJob",
        trainer_pb2.ResumeTrainingJobRequest(job_id=job_id, max_train_steps=max_train_steps),
        lambda r: cv.training_job_from_pb(r.job),
    )


def delete_training_job(job_id: str, force: bool = False) -> UnaryOp[int]:
    return UnaryOp(
        "trainer",
        "DeleteTrainingJob",
        trainer_pb2.DeleteTrainingJobRequest(job_id=job_id, force=force),
        lambda r: int(r.freed_bytes),
    )
