"""A new training job: its base model and config checked and completed, then its row.

Every problem with the base model and with the config is named at once; a base model that is
missing altogether is NOT_FOUND, one that exists but cannot be fine-tuned is INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from boothstudio.services.trainer import base_model, uploads
from boothstudio.services.trainer.concepts import concepts_dataset_ids, resolve_job
from boothstudio.services.trainer.options import Limits, Resolved
from boothstudio.services.trainer.store import JobRow, JobStore
from boothstudio.shared.artifact_store import ArtifactStore
from boothstudio.shared.errors import InvalidArgument, NotFound
from boothstudio.v1 import catalog_pb2_grpc, trainer_pb2

JobState = trainer_pb2.TrainingJobState


async def check_config(
    config: trainer_pb2.DreamBoothConfig,
    *,
    catalog: catalog_pb2_grpc.CatalogServiceStub,
    catalog_address: str,
    store: JobStore,
    datasets_dir: Path,
    limits: Limits,
    artifacts: ArtifactStore | None = None,
) -> tuple[dict[str, Any], Resolved]:
    """The base model and the checked, completed config."""
    base, model_violation, model_missing = await base_model.look_up(
        catalog, catalog_address, config.base_model_id, config.method)
    datasets = {}
    for part, dataset_id in concepts_dataset_ids(config).items():
        field = "config.dataset_id" if part < 0 else f"config.concepts[{part}].dataset_id"
        try:
            datasets[part] = await asyncio.to_thread(uploads.dataset_images, store, datasets_dir,
                                                     dataset_id, artifacts)
        except NotFound:
            raise NotFound(resource_type="dataset", resource_name=dataset_id,
                           field=field) from None
    vocab = await asyncio.to_thread(base_model.vocabulary, base, artifacts)
    try:
        resolved = await asyncio.to_thread(
            resolve_job, config, base_model=base or {}, limits=limits,
            vocab=vocab, dataset_images=datasets)
    except InvalidArgument as exc:
        if model_violation is not None:
            exc.violations.insert(0, model_violation)
            raise InvalidArgument(violations=exc.violations) from None
        raise
    if model_violation is not None and model_missing:
        raise NotFound(model_violation.description, resource_type="model",
                       resource_name=config.base_model_id, field=model_violation.field)
    if model_violation is not None:  # it exists but cannot be the base of this job
        raise InvalidArgument(violations=[model_violation])
    assert base is not None
    return base, resolved


def new_job(job_id: str, display_name: str, base: dict[str, Any], resolved: Resolved,
            jobs_dir: Path) -> JobRow:
    """The row of a job about to be queued."""
    display = display_name or f"{resolved.trigger_phrase} on {base['id']}"
    now = time.time()
    return JobRow(
        id=job_id, display_name=display[:200], state=JobState.TRAINING_JOB_STATE_QUEUED,
        config=resolved.config, base_model=base, step=0,
        total_steps=resolved.config.max_train_steps, failure_reason="", failure_message="",
        create_time=now, start_time=None, end_time=None, update_time=now, queued_at=now,
        output_model_id="", trigger_phrase=resolved.trigger_phrase, last_metrics=None,
        warnings=[{"reason": r, "message": m, "field": f} for r, m, f in resolved.warnings],
        attempts=0, instance_image_count=len(resolved.images),
        job_dir=jobs_dir / job_id, worker_pid=0)
