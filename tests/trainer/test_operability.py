"""What an operator relies on, against real Catalog + Trainer processes running real (tiny) jobs:
domain metrics on the trainer's /metrics, a job's CSV log and start time through cancel, resume
and a killed worker, exported files' modes, and a cancel that lands during export."""

from __future__ import annotations

import csv
import os
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from boothstudio.v1 import catalog_pb2, trainer_pb2
from tests.trainer.helpers import (
    JobState,
    Stack,
    create,
    get,
    job_config,
    start_stack,
    wait_job,
    wait_state,
    watch,
    worker_log,
    worker_pids,
)


@pytest.fixture(scope="module")
def stack(module_services, untrained_model) -> Stack:
    return start_stack(module_services, untrained_model)


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the trainer's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(stack.trainer.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, tuple(sorted(labels.items())))]


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_metrics_log_and_files_through_cancel_resume_and_a_crash(stack, subject_pngs):
    total = 20  # room after the resume for the kill to land mid-run on a slow machine
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=total, prior=True,
                     checkpoint_every_steps=3)
    job = create(stack, cfg)

    # while it runs: the gauges read from the store
    job = wait_job(stack, job.job_id, lambda j: j.step >= 2 or j.state in (
        JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED), timeout=600)
    assert job.state == JobState.TRAINING_JOB_STATE_RUNNING, (job, worker_log(stack, job))
    m = scrape(stack)
    assert sample(m, "boothstudio_trainer_jobs", state="running") == 1
    assert sample(m, "boothstudio_trainer_jobs", state="succeeded") == 0
    assert sample(m, "boothstudio_trainer_loss", job_id=job.job_id, kind="total") > 0
    assert sample(m, "boothstudio_trainer_loss", job_id=job.job_id, kind="prior") > 0
    assert job.HasField("start_time")  # recorded when the worker started
    started = job.start_time.ToNanoseconds()

    stack.trainer_stub.CancelTrainingJob(trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id))
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED}, 300)
    stopped_at = job.step
    assert 2 <= stopped_at < total
    stack.trainer_stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id))
    wait_job(stack, job.job_id, lambda j: j.step >= stopped_at + 2, timeout=600)
    # a worker killed mid-run is restarted from the job's last checkpoint
    for pid in worker_pids(job.job_id):
        os.kill(pid, signal.SIGKILL)
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_SUCCEEDED,
                                         JobState.TRAINING_JOB_STATE_FAILED}, 900)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert "WORKER_CRASHED" in [w.reason for w in job.warnings]
    assert job.start_time.ToNanoseconds() == started  # the first start, kept through resumes

    # the CSV log holds every step exactly once: the resumes kept the earlier rows, and the
    # steps the killed worker did past its checkpoint were replaced by their retraining
    with open(Path(job.job_dir) / "logs" / "csv" / "metrics.csv", newline="") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
    assert sorted(steps) == list(range(total)), steps

    # exported models are as readable as other files (safetensors alone writes 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    want = 0o666 & ~umask
    out = Path(job.job_dir) / "output"
    assert file_mode(out / f"{job.job_id}.safetensors") == want
    weights = list((out / "diffusers").rglob("*.safetensors"))
    assert weights and {file_mode(p) for p in weights} == {want}
    assert {file_mode(p) for p in (Path(job.job_dir) / "exports").glob("*.safetensors")} == {want}

    # the counters: what the workers did, read from the store by the service
    events = watch(stack, job.job_id, history=True)
    metric_steps = [e.metrics.step for e in events if e.WhichOneof("event") == "metrics"]
    m = scrape(stack)
    steps_total = sample(m, "boothstudio_trainer_steps_total")
    assert total - 2 <= steps_total < 2 * total  # a killed worker may lose its last few
    assert sample(m, "boothstudio_trainer_step_seconds_count") == steps_total
    assert sample(m, "boothstudio_trainer_step_seconds_sum") > 0
    saved = len({(e.sequence) for e in events if e.WhichOneof("event") == "checkpoint_saved"})
    assert saved >= 6 and sample(m, "boothstudio_trainer_checkpoint_seconds_count") >= 3
    assert sample(m, "boothstudio_trainer_class_images_total", source="generated") == 2
    assert sample(m, "boothstudio_trainer_class_images_total", source="cached") >= 2
    assert sample(m, "boothstudio_trainer_worker_restarts_total", reason="crash") == 1
    assert sample(m, "boothstudio_trainer_worker_restarts_total", reason="service_restart") == 0
    assert sample(m, "boothstudio_trainer_peak_memory_bytes", device="cpu") > 100 << 20
    assert sample(m, "boothstudio_trainer_jobs", state="succeeded") == 1
    assert sample(m, "boothstudio_trainer_jobs", state="running") == 0
    assert not [k for k in m if k[0] == "boothstudio_trainer_loss"]  # no job runs now
    assert metric_steps[-1] == total


def test_a_cancel_acknowledged_during_export_is_honoured(stack, subject_pngs):
    """The Catalog stops answering (SIGSTOP) so the job sits in EXPORTING, registering its
    model; a cancel then is acknowledged (CANCELLING) and the job ends CANCELLED, resumable,
    with no model left in the Catalog. Resumed, it only exports and registers."""
    job = create(stack, job_config(stack.base_model_id, subject_pngs[:1], steps=2))
    catalog = stack.catalog.proc
    catalog.send_signal(signal.SIGSTOP)
    try:
        wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_EXPORTING,
                                       JobState.TRAINING_JOB_STATE_FAILED}, 600)
        cancelled = stack.trainer_stub.CancelTrainingJob(
            trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=30).job
        assert cancelled.state == JobState.TRAINING_JOB_STATE_CANCELLING, cancelled
        # the worker may finish the cancel at once or only when the Catalog answers again;
        # what it must never do is go on to SUCCEEDED (checked below)
        assert get(stack, job.job_id).state in (JobState.TRAINING_JOB_STATE_CANCELLING,
                                                JobState.TRAINING_JOB_STATE_CANCELLED)
    finally:
        catalog.send_signal(signal.SIGCONT)
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_CANCELLED,
                                         JobState.TRAINING_JOB_STATE_SUCCEEDED}, 300)
    assert job.state == JobState.TRAINING_JOB_STATE_CANCELLED, (job, worker_log(stack, job))
    assert job.resumable and not job.output_model_id and job.step == 2
    model_id = f"ft-{job.job_id}-2".replace("_", "-")  # the id registration would have used
    with pytest.raises(grpc.RpcError) as info:
        stack.catalog_stub.GetModel(catalog_pb2.GetModelRequest(model_id=model_id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    stack.trainer_stub.ResumeTrainingJob(trainer_pb2.ResumeTrainingJobRequest(job_id=job.job_id))
    job = wait_state(stack, job.job_id, {JobState.TRAINING_JOB_STATE_SUCCEEDED,
                                         JobState.TRAINING_JOB_STATE_FAILED}, 600)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert stack.catalog_stub.GetModel(catalog_pb2.GetModelRequest(
        model_id=job.output_model_id)).model.origin.training_job_id == job.job_id
