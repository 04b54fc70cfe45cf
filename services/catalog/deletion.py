"""DeleteModel's checks and clean-up: what may not be deleted, and the files a model owns.

A model is kept while it is the embedded default, the base of a LoRA, or the base of an active
training job (asked of the Trainer). When the Trainer cannot be asked: on a single host (no
database_url) it is down and nothing trains; scaled out (database_url set), other Trainer
replicas may be training on the model, so the delete is refused with UNAVAILABLE until it can.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from boothstudio.services.catalog import model_files
from boothstudio.services.catalog.registry import Registry, Row
from boothstudio.shared.artifact_store import ArtifactStore
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.config import ServiceConfig
from boothstudio.shared.errors import FailedPrecondition, Unavailable
from boothstudio.v1 import trainer_pb2, trainer_pb2_grpc

ACTIVE_TRAINING = [
    trainer_pb2.TRAINING_JOB_STATE_QUEUED,
    trainer_pb2.TRAINING_JOB_STATE_PREPARING,
    trainer_pb2.TRAINING_JOB_STATE_RUNNING,
    trainer_pb2.TRAINING_JOB_STATE_EXPORTING,
    trainer_pb2.TRAINING_JOB_STATE_CANCELLING,
]
TRAINER_RETRY_AFTER_S = 5.0


async def check_deletable(
    registry: Registry, row: Row, config: ServiceConfig, log: logging.Logger
) -> None:
    """FAILED_PRECONDITION when something still needs the model."""
    if row["builtin"]:
        raise FailedPrecondition(
            "the embedded default model cannot be deleted",
            reason="MODEL_BUILTIN",
            violations=[("model_id", "the embedded default model cannot be deleted")],
        )
    dependents = registry.dependents(row["id"])
    if dependents:
        names = ", ".join(d["id"] for d in dependents)
        raise FailedPrecondition(
            f"LoRAs depend on {row['id']!r}: {names}",
            reason="MODEL_HAS_DEPENDENTS",
            violations=[("model_id", f"base of {names}")],
        )
    jobs = await training_jobs_using(row["id"], config, log)
    if jobs:
        raise FailedPrecondition(
            f"model {row['id']!r} is the base of running training jobs: {', '.join(jobs)}",
            reason="MODEL_IN_USE",
            violations=[("model_id", "in use by training jobs")],
            metadata={"jobs": ",".join(jobs)},
        )


async def training_jobs_using(
    model_id: str, config: ServiceConfig, log: logging.Logger
) -> list[str]:
    """Ids of active training jobs on this base model. When the Trainer does not answer: empty
    on a single host (it is down, nothing trains), UNAVAILABLE when scaled out."""
    address = config.address_of("trainer")
    try:
        async with aio_channel(address, api_key=config.service_api_key or None) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            resp = await stub.ListTrainingJobs(
                trainer_pb2.ListTrainingJobsRequest(
                    base_model_id=model_id, states=ACTIVE_TRAINING, page_size=100
                ),
                timeout=2.0,
            )
    except grpc.RpcError as exc:
        if config.database_url:
            raise Unavailable(
                f"cannot delete model {model_id!r} now: the Trainer at {address} did not say "
                f"whether a job uses it ({exc.code().name})",
                reason="TRAINER_UNREACHABLE",
                retry_after=TRAINER_RETRY_AFTER_S,
            ) from exc
        log.info("trainer not asked about model use: %s", exc.code())
        return []
    return [j.job_id for j in resp.jobs]


async def remove_owned_files(row: Row, store: ArtifactStore) -> int:
    """Delete the copy ImportModel made (only under the store's catalog/models/); bytes freed."""
    return await asyncio.to_thread(
        model_files.remove_owned, store, row["owned_path"], row["source_path"]
    )
