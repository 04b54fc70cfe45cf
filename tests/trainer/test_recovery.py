"""Crash safety: kill -9 of the worker, then of the whole service; the job continues from its
last checkpoint by itself and finishes with nothing lost."""

from __future__ import annotations

import os
import re
import signal
import time

from boothstudio.v1 import trainer_pb2
from tests.trainer.helpers import (
    JobState,
    create,
    job_config,
    start_stack,
    start_trainer,
    wait_job,
    wait_state,
    watch,
    worker_log,
    worker_pids,
)


def _checkpoint_at_least(step: int):
    def pred(job: trainer_pb2.TrainingJob) -> bool:
        return any(c.step >= step and c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE
                   for c in job.checkpoints)
    return pred


def test_kill9_worker_then_service(start_service, untrained_model, subject_pngs, tmp_path):
    data_dir = tmp_path / "trainer-data"
    # the same replica restarts (on another free port): it takes its job back at once
    same_replica = ["--set", "replica_id=trainer-1"]
    stack = start_stack(start_service, untrained_model, same_replica, trainer_data_dir=data_dir)
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=8, checkpoint_every_steps=1)
    job = create(stack, cfg)

    # 1. the worker dies hard: the service restarts it from the last checkpoint
    job = wait_job(stack, job.job_id, _checkpoint_at_least(1))
    (pid,) = worker_pids(job.job_id)
    os.kill(pid, signal.SIGKILL)
    job = wait_job(stack, job.job_id, lambda j: j.attempts == 2 and j.step >= 2
                   and j.state == JobState.TRAINING_JOB_STATE_RUNNING)

    # 2. the whole service dies hard (its worker goes with it), then starts again
    stack.trainer.proc.send_signal(signal.SIGKILL)
    stack.trainer.proc.wait(timeout=30)
    for _ in range(50):
        if not worker_pids(job.job_id):
            break
        time.sleep(0.2)
    assert not worker_pids(job.job_id), "the worker outlived its service"
    stack.trainer = start_trainer(start_service, stack.catalog, same_replica, data_dir=data_dir)
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_SUCCEEDED,
                                         JobState.TRAINING_JOB_STATE_FAILED}, timeout=300)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, job)
    assert job.step == 8 and job.attempts == 3 and job.output_model_id
    assert {w.reason for w in job.warnings} >= {"WORKER_CRASHED", "RECOVERED"}
    events = watch(stack, job.job_id, history=True)
    changes = [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"]
    reasons = [(c.reason, JobState.Name(c.state)) for c in changes]
    assert ("WORKER_CRASHED", "TRAINING_JOB_STATE_QUEUED") in reasons, reasons
    assert ("RECOVERED", "TRAINING_JOB_STATE_QUEUED") in reasons, reasons
    resumed = [c for c in changes if c.state == JobState.TRAINING_JOB_STATE_RUNNING]
    assert [c.reason for c in resumed] == ["", "RESUMED", "RESUMED"], reasons
    # every step's metrics seen once per attempt; the second and third attempts continued
    steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    assert steps[-1] == 8


def test_sigterm_checkpoints_and_requeues(start_service, untrained_model, subject_pngs,
                                          tmp_path):
    """A graceful stop (SIGTERM, e.g. a pod eviction) checkpoints the running job at the step
    it reached and queues it again; the next start resumes it from there by itself."""
    data_dir = tmp_path / "trainer-data"
    stack = start_stack(start_service, untrained_model, trainer_data_dir=data_dir)
    # no periodic checkpoint before the stop: the one found afterwards is the drain's own
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=120,
                     checkpoint_every_steps=1000)
    job = create(stack, cfg)
    job = wait_job(stack, job.job_id, lambda j: j.step >= 3)
    stack.trainer.proc.send_signal(signal.SIGTERM)
    assert stack.trainer.proc.wait(timeout=60) == 0
    assert not worker_pids(job.job_id), "the worker outlived its service"

    stack.trainer = start_trainer(start_service, stack.catalog, data_dir=data_dir)
    events = watch(stack, job.job_id, history=True, timeout=600)
    changes = [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"]
    reasons = [(c.reason, JobState.Name(c.state)) for c in changes]
    assert ("INTERRUPTED", "TRAINING_JOB_STATE_QUEUED") in reasons, reasons
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_SUCCEEDED,
                                         JobState.TRAINING_JOB_STATE_FAILED}, timeout=300)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, job)
    assert job.attempts == 2 and job.step == 120
    resumed = [c for c in changes if c.state == JobState.TRAINING_JOB_STATE_RUNNING]
    assert [c.reason for c in resumed] == ["", "RESUMED"], reasons
    # the drain checkpointed the very step it stopped at, and the next attempt went on from it
    stop = next(c for c in changes if c.reason == "INTERRUPTED")
    stopped_at = int(re.search(r"resumes from step (\d+)", stop.message).group(1))
    assert stopped_at >= 3
    saved = [e.checkpoint_saved.checkpoint for e in events
             if e.WhichOneof("event") == "checkpoint_saved"]
    assert (stopped_at, trainer_pb2.CHECKPOINT_KIND_FULL_STATE) in {(c.step, c.kind) for c in saved}
    after = events[next(i for i, e in enumerate(events)
                        if e.WhichOneof("event") == "state_changed"
                        and e.state_changed.reason == "INTERRUPTED"):]
    first = next(e.metrics.step for e in after if e.WhichOneof("event") == "metrics")
    assert first == stopped_at + 1
