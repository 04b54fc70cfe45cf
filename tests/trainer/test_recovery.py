"""Crash safety: kill -9 of the worker, then of the whole service; the job continues from its
last checkpoint by itself and finishes with nothing lost."""

from __future__ import annotations

import os
import signal
import time

from tests.trainer.helpers import (
    P,
    S,
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
    def pred(job: P.TrainingJob) -> bool:
        return any(c.step >= step and c.kind == P.CHECKPOINT_KIND_FULL_STATE
                   for c in job.checkpoints)
    return pred


def test_kill9_worker_then_service(start_service, untrained_model, subject_pngs, tmp_path):
    data_dir = tmp_path / "trainer-data"
    stack = start_stack(start_service, untrained_model, trainer_data_dir=data_dir)
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=8, checkpoint_every_steps=1)
    job = create(stack, cfg)

    # 1. the worker dies hard: the service restarts it from the last checkpoint
    job = wait_job(stack, job.job_id, _checkpoint_at_least(1))
    (pid,) = worker_pids(job.job_id)
    os.kill(pid, signal.SIGKILL)
    job = wait_job(stack, job.job_id, lambda j: j.attempts == 2 and j.step >= 2
                   and j.state == S.TRAINING_JOB_STATE_RUNNING)

    # 2. the whole service dies hard (its worker goes with it), then starts again
    stack.trainer.proc.send_signal(signal.SIGKILL)
    stack.trainer.proc.wait(timeout=30)
    for _ in range(50):
        if not worker_pids(job.job_id):
            break
        time.sleep(0.2)
    assert not worker_pids(job.job_id), "the worker outlived its service"
    stack.trainer = start_trainer(start_service, stack.catalog, data_dir=data_dir)
    job = wait_state(stack, job.job_id, {S.TRAINING_JOB_STATE_SUCCEEDED,
                                         S.TRAINING_JOB_STATE_FAILED}, timeout=300)
    assert job.state == S.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, job)
    assert job.step == 8 and job.attempts == 3 and job.output_model_id
    assert {w.reason for w in job.warnings} >= {"WORKER_CRASHED", "RECOVERED"}
    events = watch(stack, job.job_id, history=True)
    changes = [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"]
    reasons = [(c.reason, S.Name(c.state)) for c in changes]
    assert ("WORKER_CRASHED", "TRAINING_JOB_STATE_QUEUED") in reasons, reasons
    assert ("RECOVERED", "TRAINING_JOB_STATE_QUEUED") in reasons, reasons
    resumed = [c for c in changes if c.state == S.TRAINING_JOB_STATE_RUNNING]
    assert [c.reason for c in resumed] == ["", "RESUMED", "RESUMED"], reasons
    # every step's metrics seen once per attempt; the second and third attempts continued
    steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    assert steps[-1] == 8
