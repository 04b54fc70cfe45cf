"""Helpers for trainer end-to-end tests: a Catalog + Trainer pair on loopback, job requests
with tiny settings, and stream watching."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from boothstudio.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from tests.helpers import ServiceProcess

JobState = trainer_pb2.TrainingJobState
TERMINAL = {JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED,
            JobState.TRAINING_JOB_STATE_CANCELLED}

# Tiny everything: one thread per worker (2 shared cores), 2-step validation samples.
TRAINER_ARGS = ["--set", "worker_threads=1", "--set", "sample_steps=2",
                "--set", "max_instance_images=8"]


@dataclass
class Stack:
    catalog: ServiceProcess
    trainer: ServiceProcess
    base_model_id: str
    model_dir: Path
    extra: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def trainer_stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.trainer.channel())

    @property
    def catalog_stub(self) -> catalog_pb2_grpc.CatalogServiceStub:
        return catalog_pb2_grpc.CatalogServiceStub(self.catalog.channel())


def start_stack(factory: Callable[..., ServiceProcess], model_dir: Path,
                trainer_args: list[str] | None = None,
                trainer_data_dir: Path | None = None) -> Stack:
    catalog = factory("catalog")
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    model = stub.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(model_dir), model_id="untrained-tiny"), timeout=60).model
    trainer = start_trainer(factory, catalog, trainer_args, trainer_data_dir)
    return Stack(catalog, trainer, model.id, model_dir)


def start_trainer(factory: Callable[..., ServiceProcess], catalog: ServiceProcess,
                  args: list[str] | None = None, data_dir: Path | None = None) -> ServiceProcess:
    kw = {"data_dir": data_dir} if data_dir is not None else {}
    return factory("trainer", [*TRAINER_ARGS, *(args or [])],
                   env={"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address,
                        "PYTHONFAULTHANDLER": "1"}, **kw)


def job_config(base_model_id: str, pngs: list[bytes], steps: int = 2, *, prior: bool = False,
               class_prompt: str = "", **kw: object) -> trainer_pb2.DreamBoothConfig:
    fields: dict[str, object] = {"seed": 11, "learning_rate": 1e-4, **kw}
    cfg = trainer_pb2.DreamBoothConfig(base_model_id=base_model_id, class_noun="circle",
                             max_train_steps=steps, **fields)  # type: ignore[arg-type]
    for i, data in enumerate(pngs):
        cfg.instance_images.add(data=data, filename=f"subject-{i}.png")
    if prior:
        cfg.prior_preservation.enabled = True
        cfg.prior_preservation.class_image_count = 2
        cfg.prior_preservation.generation.steps = 2
        cfg.class_prompt = class_prompt
    return cfg


def create(stack: Stack, cfg: trainer_pb2.DreamBoothConfig,
           **kw: object) -> trainer_pb2.TrainingJob:
    return stack.trainer_stub.CreateTrainingJob(
        trainer_pb2.CreateTrainingJobRequest(config=cfg, **kw), timeout=60).job  # type: ignore[arg-type]


def run_to_success(stack: Stack, cfg: trainer_pb2.DreamBoothConfig, **kw: object
                   ) -> tuple[trainer_pb2.TrainingJob, list[trainer_pb2.WatchTrainingJobResponse]]:
    """Create a job, follow it to its end, and assert it SUCCEEDED (the worker's log as the
    message otherwise); the finished job and its whole event history."""
    job = create(stack, cfg, **kw)
    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, job)
    return job, events


def get(stack: Stack, job_id: str) -> trainer_pb2.TrainingJob:
    return stack.trainer_stub.GetTrainingJob(trainer_pb2.GetTrainingJobRequest(job_id=job_id),
                                             timeout=30).job


def watch(stack: Stack, job_id: str, timeout: float = 900, history: bool = False
          ) -> list[trainer_pb2.WatchTrainingJobResponse]:
    """Events until the server ends the stream (terminal state).

    Streams are not cancelled mid-way here: a client cancel can crash the service in the shared
    logging interceptor (context.peer() after the call is gone; see the trainer report).
    """
    events: list[trainer_pb2.WatchTrainingJobResponse] = []
    call = stack.trainer_stub.WatchTrainingJob(
        trainer_pb2.WatchTrainingJobRequest(job_id=job_id, include_history=history),
        timeout=timeout)
    try:
        for ev in call:
            events.append(ev)
    except grpc.RpcError as err:
        raise AssertionError(f"watch failed: {err}; events: {kinds(events)}") from err
    return events


def wait_job(stack: Stack, job_id: str, pred: Callable[[trainer_pb2.TrainingJob], bool],
             timeout: float = 600) -> trainer_pb2.TrainingJob:
    """Poll GetTrainingJob until pred(job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(stack, job_id)
        if pred(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"condition not met for job {job_id} after {timeout}s: {job}")


def wait_state(stack: Stack, job_id: str, states: set[int], timeout: float = 600
               ) -> trainer_pb2.TrainingJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(stack, job_id)
        if job.state in states:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")


def kinds(events: list[trainer_pb2.WatchTrainingJobResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


def states(events: list[trainer_pb2.WatchTrainingJobResponse]) -> list[str]:
    return [JobState.Name(e.state_changed.state).removeprefix("TRAINING_JOB_STATE_")
            for e in events if e.WhichOneof("event") == "state_changed"]


def worker_pids(job_id: str) -> list[int]:
    """Pids of worker processes running `job_id` (started by the trainer under test)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"boothstudio.services.trainer.worker" in cmd and job_id.encode() in cmd:
            pids.append(int(entry))
    return pids


def worker_log(stack: Stack, job: trainer_pb2.TrainingJob) -> str:
    try:
        return (Path(job.job_dir) / "worker.log").read_text(errors="replace")[-6000:]
    except OSError:
        return ""


def png_bytes(img: Any) -> bytes:
    """A PIL image encoded as PNG (alpha kept)."""
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
