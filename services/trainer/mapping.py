"""A job store row as the TrainingJob message the RPCs answer with."""

from __future__ import annotations

from boothstudio.services.trainer.store import JobRow, JobStore, timestamp
from boothstudio.v1 import common_pb2, trainer_pb2

RESUMABLE = (trainer_pb2.TRAINING_JOB_STATE_CANCELLED, trainer_pb2.TRAINING_JOB_STATE_FAILED)


def to_proto(store: JobStore, job: JobRow, queued: list[str] | None = None
             ) -> trainer_pb2.TrainingJob:
    """`queued`: the queue's job ids in order when the caller has read it already (a list of
    many jobs reads it once); else it is read here for a queued job's position."""
    t = trainer_pb2.TrainingJob(
        job_id=job.id, display_name=job.display_name, state=job.state,  # type: ignore[arg-type]
        config=job.config, step=job.step, total_steps=job.total_steps,
        failure_reason=job.failure_reason, failure_message=job.failure_message,
        create_time=timestamp(job.create_time), start_time=timestamp(job.start_time),
        end_time=timestamp(job.end_time), update_time=timestamp(job.update_time),
        output_model_id=job.output_model_id, trigger_phrase=job.trigger_phrase,
        checkpoints=store.checkpoints(job.id), attempts=job.attempts,
        resumable=job.state in RESUMABLE,
        instance_image_count=job.instance_image_count, job_dir=str(job.job_dir),
        warnings=[common_pb2.Warning(**w) for w in job.warnings])
    if job.last_metrics is not None:
        t.last_metrics.CopyFrom(job.last_metrics)
    if job.state == trainer_pb2.TRAINING_JOB_STATE_QUEUED:
        order = queued if queued is not None else [j.id for j in store.queued()]
        if job.id in order:
            t.queue_position = order.index(job.id)
    return t


def state_name(state: int) -> str:
    """A state as people read it: `queued`, not TRAINING_JOB_STATE_QUEUED (messages, metric
    labels)."""
    return trainer_pb2.TrainingJobState.Name(state).removeprefix("TRAINING_JOB_STATE_").lower()
