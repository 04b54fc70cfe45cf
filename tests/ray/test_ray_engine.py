"""The Ray engine end to end: a real local Ray cluster (tests/ray/conftest.py), real Catalog,
Trainer and Generator processes on loopback; the Trainer submits its jobs to the cluster
(BOOTHSTUDIO_RAY_ADDRESS). CPU-tiny: the untrained tiny model, a few 64 px steps, one torch
thread per Ray worker, 2 workers on the cluster's 2 CPUs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from boothstudio.v1 import catalog_pb2, trainer_pb2
from tests.trainer.helpers import (
    JobState,
    Stack,
    create,
    get,
    job_config,
    start_stack,
    start_trainer,
    states,
    wait_job,
    wait_state,
    watch,
    worker_log,
)
from tests.trainer.test_jobs import generate_pixels

DDP = {"strategy": trainer_pb2.STRATEGY_DDP, "devices": 2, "accelerator": "cpu"}
# a Ray cluster and six Ray Train runs: about 6 minutes on 2 busy cores (make test-fast skips)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(module_services, untrained_model, ray_cluster) -> Stack:
    s = start_stack(module_services, untrained_model,
                    ["--set", f"ray_address={ray_cluster.address}"])
    s.extra["generator"] = module_services(
        "generator", env={"BOOTHSTUDIO_CATALOG_ADDRESS": s.catalog.address})
    return s


def final_weights(job: trainer_pb2.TrainingJob) -> dict[str, torch.Tensor]:
    full = [c for c in job.checkpoints if c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE]
    ckpt = Path(job.job_dir) / "checkpoints" / f"step-{full[-1].step:06d}.ckpt"
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_two_worker_ddp_job_matches_local_ddp_and_generates(stack, module_services,
                                                            subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=3, **DDP)
    job = create(stack, cfg)
    # the same job on two local processes (the default engine), trained while the Ray run
    # waits on its cluster: the two only meet in the weights compared at the end
    local = Stack(stack.catalog, start_trainer(module_services, stack.catalog),
                  stack.base_model_id, stack.model_dir)
    twin = create(local, cfg)

    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    log = worker_log(stack, job)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, log)
    assert states(events)[-4:] == ["PREPARING", "RUNNING", "EXPORTING", "SUCCEEDED"]
    # both ranks ran on Ray Train workers: rank 0 reported, rank 1 trained beside it
    assert "rank 0 of 2" in log and "rank 1 of 2" in log, log
    steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    assert steps and steps[-1] == 3
    assert any(e.WhichOneof("event") == "checkpoint_saved" for e in events)

    # registered in the Catalog, and it generates (differently from the base model)
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id), timeout=30).model
    assert model.origin.training_job_id == job.job_id
    tuned = generate_pixels(stack, model.id, model.trigger_phrase)
    base = generate_pixels(stack, stack.base_model_id, model.trigger_phrase)
    assert abs(tuned - base).mean() > 0.1

    # the local twin trained the same weights
    watch(local, twin.job_id)
    twin = get(local, twin.job_id)
    assert twin.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(local, twin)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in worker_log(local, twin)
    on_ray, on_host = final_weights(job), final_weights(twin)
    assert on_ray.keys() == on_host.keys()
    worst = max(float((on_ray[k] - on_host[k]).abs().max()) for k in on_ray)
    assert worst <= 1e-6, f"Ray and local DDP differ by {worst}"


def _full_checkpoint_at_least(step: int):  # type: ignore[no-untyped-def]
    def pred(job: trainer_pb2.TrainingJob) -> bool:
        return any(c.step >= step and c.kind == trainer_pb2.CHECKPOINT_KIND_FULL_STATE
                   for c in job.checkpoints)
    return pred


def _changes(events):  # type: ignore[no-untyped-def]
    return [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"]


def _models_of(stack: Stack, job_id: str) -> list[str]:
    models = stack.catalog_stub.ListModels(catalog_pb2.ListModelsRequest(page_size=100),
                                           timeout=30).models
    return [m.id for m in models if m.origin.training_job_id == job_id]


def test_killed_ray_worker_continues_from_its_last_checkpoint(stack, ray_cluster,
                                                              subject_pngs):
    """Ray's FailureConfig restarts the worker group; rank 0 resumes from the newest
    checkpoint in the store; the Trainer's attempt count does not move."""
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=24,
                     checkpoint_every_steps=3, **DDP)
    job = create(stack, cfg)
    job = wait_job(stack, job.job_id, _full_checkpoint_at_least(3))
    workers = ray_cluster.train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)

    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert job.step == 24 and job.attempts == 1 and job.output_model_id
    assert "WORKER_GROUP_RESTARTED" in {w.reason for w in job.warnings}
    changes = _changes(events)
    restart = next(i for i, c in enumerate(changes) if c.reason == "WORKER_GROUP_RESTARTED")
    assert changes[restart].state == JobState.TRAINING_JOB_STATE_PREPARING
    resumed = changes[restart + 1]
    assert (resumed.state, resumed.reason) == (JobState.TRAINING_JOB_STATE_RUNNING, "RESUMED")
    ckpt_step = int(resumed.message.split("step-")[1].split(".")[0])
    assert ckpt_step >= 3
    # after the restart the steps go on from that checkpoint, not from the start
    restart_at = events.index(next(e for e in events if e.WhichOneof("event") == "state_changed"
                                   and e.state_changed.reason == "RESUMED"))
    later = [e.metrics.step for e in events[restart_at:] if e.WhichOneof("event") == "metrics"]
    assert later and later[0] > ckpt_step and later[-1] == 24
    assert _models_of(stack, job.job_id) == [job.output_model_id]


def test_force_delete_stops_the_ray_run(stack, ray_cluster, subject_pngs):
    """Deleting a running job kills its run on the cluster; its resources come back (the
    tests after this one need both CPUs)."""
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=500, **DDP)
    job = create(stack, cfg)
    wait_job(stack, job.job_id, lambda j: j.step >= 1)
    stack.trainer_stub.DeleteTrainingJob(
        trainer_pb2.DeleteTrainingJobRequest(job_id=job.job_id, force=True), timeout=60)
    deadline = time.monotonic() + 120
    while ray_cluster.train_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_cluster.train_workers(), "the run outlived its deleted job"
    assert not Path(job.job_dir).exists()


def test_cancel_and_resume_through_ray(stack, subject_pngs):
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=16,
                     checkpoint_every_steps=100, **DDP)
    job = create(stack, cfg)
    job = wait_job(stack, job.job_id, lambda j: j.step >= 2)
    stack.trainer_stub.CancelTrainingJob(
        trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=30)
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED,
                                         JobState.TRAINING_JOB_STATE_FAILED,
                                         JobState.TRAINING_JOB_STATE_SUCCEEDED})
    assert job.state == JobState.TRAINING_JOB_STATE_CANCELLED, (job, worker_log(stack, job))
    assert job.resumable and 2 <= job.step < 16
    # the stop saved a checkpoint at the step it reached (none was due before)
    assert _full_checkpoint_at_least(job.step)(job)
    stopped_at = job.step

    stack.trainer_stub.ResumeTrainingJob(
        trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id), timeout=30)
    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert job.step == 16 and job.attempts == 2
    running = [c for c in _changes(events) if c.state == JobState.TRAINING_JOB_STATE_RUNNING]
    assert [c.reason for c in running] == ["", "RESUMED"]
    assert f"step-{stopped_at:06d}" in running[-1].message
    assert _models_of(stack, job.job_id) == [job.output_model_id]


def test_killed_trainer_reattaches_to_its_ray_run(module_services, stack, subject_pngs,
                                                  tmp_path, ray_cluster):
    """The Trainer dies hard mid-job; the run goes on on the cluster; the Trainer restarted
    on the same data dir (same replica id) waits on that run again: the job trains once and
    registers one model."""
    data_dir = tmp_path / "trainer-data"
    args = ["--set", f"ray_address={ray_cluster.address}", "--set", "replica_id=ray-trainer"]
    own = Stack(stack.catalog, start_trainer(module_services, stack.catalog, args, data_dir),
                stack.base_model_id, stack.model_dir)
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=40,
                     checkpoint_every_steps=5, **DDP)
    job = create(own, cfg)
    job = wait_job(own, job.job_id, lambda j: j.step >= 2)
    own.trainer.proc.send_signal(signal.SIGKILL)
    own.trainer.proc.wait(timeout=30)
    assert len(ray_cluster.train_workers()) == 2  # the run goes on without its Trainer

    own.trainer = start_trainer(module_services, stack.catalog, args, data_dir)
    events = watch(own, job.job_id, history=True)
    job = get(own, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(own, job))
    assert job.step == 40 and job.attempts == 1
    reasons = {w.reason for w in job.warnings}
    assert "REATTACHED" in reasons and "RECOVERED" not in reasons, reasons
    changes = _changes(events)
    assert [c.reason for c in changes if c.state == JobState.TRAINING_JOB_STATE_RUNNING] == [""]
    steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    assert steps == sorted(steps) and steps[-1] == 40  # trained once, never from the start
    assert _models_of(stack, job.job_id) == [job.output_model_id]
