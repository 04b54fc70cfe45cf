"""The Ray engine end to end: a real local Ray cluster (tests/ray/conftest.py), real Catalog,
Trainer and Generator processes on loopback; the Trainer submits its jobs to the cluster
(BOOTHSTUDIO_RAY_ADDRESS). CPU-tiny: the untrained tiny model, a few 64 px steps, one torch
thread per Ray worker, 2 workers on the cluster's 2 CPUs."""

from __future__ import annotations

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
    watch,
    worker_log,
)
from tests.trainer.test_jobs import generate_pixels

DDP = {"strategy": trainer_pb2.STRATEGY_DDP, "devices": 2, "accelerator": "cpu"}


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

    # the same job on two local processes (the default engine) trains the same weights
    local = Stack(stack.catalog, start_trainer(module_services, stack.catalog),
                  stack.base_model_id, stack.model_dir)
    twin = create(local, cfg)
    watch(local, twin.job_id)
    twin = get(local, twin.job_id)
    assert twin.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(local, twin)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in worker_log(local, twin)
    on_ray, on_host = final_weights(job), final_weights(twin)
    assert on_ray.keys() == on_host.keys()
    worst = max(float((on_ray[k] - on_host[k]).abs().max()) for k in on_ray)
    assert worst <= 1e-6, f"Ray and local DDP differ by {worst}"
