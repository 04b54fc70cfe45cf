"""Trainer replicas sharing one queue under job leases: real Trainer processes on one real
PostgreSQL database (tests/stores/postgres.py), training the tiny untrained model on the CPU.

- a replica killed with SIGKILL mid-job (its worker dies with it) leaves the job to the other
  once the lease expires; the other resumes it from its last checkpoint and it succeeds exactly
  once (the two replicas share a data dir here: the job's files are local until the artifact
  store holds them; tests/stores/test_scale_out.py is the separate-disks scenario);
- a second replica starting while the first is down leaves the first's job alone (its lease is
  long); the first, restarted under the same replica_id, takes it back at once;
- a cancel through the second replica stops the job where the first runs it (with a checkpoint,
  resumable), and a Watch through the second streams the first's steps as they happen.

Rerun: `.venv/bin/pytest tests/stores/test_trainer_replicas.py -v`
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, trainer_pb2
from tests.helpers import ServiceProcess
from tests.stores.helpers import isolated_env
from tests.stores.test_trainer_store import started_jobs
from tests.trainer.helpers import (
    TERMINAL,
    TRAINER_ARGS,
    JobState,
    Stack,
    create,
    get,
    job_config,
    wait_job,
    wait_state,
    watch,
    worker_log,
    worker_pids,
)

FULL_STATE = trainer_pb2.CHECKPOINT_KIND_FULL_STATE


def start_catalog(start_service: Any, database_url: str, model_dir: Path
                  ) -> tuple[ServiceProcess, str]:
    catalog = start_service("catalog", env=isolated_env(database_url))
    stub = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    model = stub.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(model_dir), model_id="untrained-tiny"), timeout=60).model
    return catalog, model.id


def start_replica(start_service: Any, database_url: str, catalog: ServiceProcess,
                  replica_id: str, lease_seconds: float, data_dir: Path) -> ServiceProcess:
    return start_service(
        "trainer", [*TRAINER_ARGS, "--set", f"replica_id={replica_id}",
                    "--set", f"lease_seconds={lease_seconds}"],
        env=isolated_env(database_url, BOOTHSTUDIO_CATALOG_ADDRESS=catalog.address),
        data_dir=data_dir)


def kill_hard(trainer: ServiceProcess, job_id: str) -> None:
    """SIGKILL a Trainer and wait until its worker is gone too (PR_SET_PDEATHSIG)."""
    trainer.proc.send_signal(signal.SIGKILL)
    trainer.proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while worker_pids(job_id):
        assert time.monotonic() < deadline, "the worker outlived its service"
        time.sleep(0.2)


def checkpointed_and_running(step: int) -> Any:
    def pred(job: trainer_pb2.TrainingJob) -> bool:
        return job.state == JobState.TRAINING_JOB_STATE_RUNNING and any(
            c.step >= step and c.kind == FULL_STATE for c in job.checkpoints)
    return pred


def state_changes(events: list[trainer_pb2.WatchTrainingJobResponse]
                  ) -> list[trainer_pb2.TrainingStateChanged]:
    return [e.state_changed for e in events if e.WhichOneof("event") == "state_changed"]


def test_a_replica_killed_mid_job_leaves_it_to_the_other_after_the_lease(
    start_service: Any, untrained_model: Path, subject_pngs: list[bytes], database_url: str,
    tmp_path: Path,
) -> None:
    steps = 16
    catalog, base = start_catalog(start_service, database_url, untrained_model)
    shared_dir = tmp_path / "shared-data"
    a, b = (start_replica(start_service, database_url, catalog, name, 5, shared_dir)
            for name in ("trainer-a", "trainer-b"))
    stack_a = Stack(catalog, a, base, untrained_model)
    job = create(stack_a, job_config(base, subject_pngs[:2], steps=steps,
                                     checkpoint_every_steps=2))
    job = wait_job(stack_a, job.job_id, checkpointed_and_running(2))
    # either replica may have claimed it: the one running it dies
    runner, survivor, runner_id = (a, b, "trainer-a") if job.job_id in started_jobs(a) else (
        b, a, "trainer-b")
    kill_hard(runner, job.job_id)

    stack = Stack(catalog, survivor, base, untrained_model)
    done = wait_state(stack, job.job_id, TERMINAL, timeout=900)
    assert done.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, worker_log(stack, done)
    assert done.step == steps and done.output_model_id and done.attempts == 2
    assert started_jobs(survivor) == [job.job_id]
    assert [w.reason for w in done.warnings].count("TAKEN_OVER") == 1
    events = watch(stack, job.job_id, history=True)
    changes = state_changes(events)
    reasons = [(c.reason, JobState.Name(c.state).removeprefix("TRAINING_JOB_STATE_"))
               for c in changes]
    # succeeded exactly once; taken over once, by the survivor, resumed from a checkpoint
    assert [r for r in reasons if r[1] == "SUCCEEDED"] == [("", "SUCCEEDED")], reasons
    (taken,) = [c for c in changes if c.reason == "TAKEN_OVER"]
    assert taken.state == JobState.TRAINING_JOB_STATE_PREPARING and runner_id in taken.message
    assert [r for r in reasons if r[1] == "RUNNING"] == [("", "RUNNING"), ("RESUMED", "RUNNING")]
    cut = next(i for i, e in enumerate(events) if e.WhichOneof("event") == "state_changed"
               and e.state_changed.reason == "TAKEN_OVER")
    saved = {e.checkpoint_saved.checkpoint.step for e in events[:cut]
             if e.WhichOneof("event") == "checkpoint_saved"}
    resumed = next(c for c in changes if c.reason == "RESUMED")
    from_step = int(resumed.message.rsplit("step-", 1)[1].split(".")[0])
    assert from_step >= 2 and from_step in saved, (resumed, saved)
    after = [e.metrics.step for e in events[cut:] if e.WhichOneof("event") == "metrics"]
    assert from_step < after[0] and after == sorted(set(after)) and after[-1] == steps, after
    # one model registered for the job
    models = catalog_pb2_grpc.CatalogServiceStub(catalog.channel()).ListModels(
        catalog_pb2.ListModelsRequest(page_size=100), timeout=30).models
    assert [m.id for m in models if m.origin.training_job_id == job.job_id] == [
        done.output_model_id]


def test_a_restarted_replica_takes_its_job_back_and_another_cancels_and_watches_it(
    start_service: Any, untrained_model: Path, subject_pngs: list[bytes], database_url: str,
    tmp_path: Path,
) -> None:
    long_lease = 600  # far longer than the test waits: nothing here may wait for it to expire
    steps = 400
    catalog, base = start_catalog(start_service, database_url, untrained_model)
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    a = start_replica(start_service, database_url, catalog, "trainer-a", long_lease, dir_a)
    stack_a = Stack(catalog, a, base, untrained_model)
    job = create(stack_a, job_config(base, subject_pngs[:2], steps=steps,
                                     checkpoint_every_steps=3))
    wait_job(stack_a, job.job_id, checkpointed_and_running(3))
    kill_hard(a, job.job_id)

    # B starts while A is down: A's job is under A's lease, B leaves it alone
    b = start_replica(start_service, database_url, catalog, "trainer-b", long_lease, dir_b)
    stack_b = Stack(catalog, b, base, untrained_model)
    assert get(stack_b, job.job_id).state == JobState.TRAINING_JOB_STATE_RUNNING
    # A again, same replica id, another port: it takes the job back at once
    a = start_replica(start_service, database_url, catalog, "trainer-a", long_lease, dir_a)
    job = wait_job(stack_b, job.job_id, lambda j: j.attempts == 2 and j.state == (
        JobState.TRAINING_JOB_STATE_RUNNING), timeout=300)
    assert started_jobs(a) == [job.job_id] and started_jobs(b) == []
    assert "RECOVERED" in [w.reason for w in job.warnings]

    # a Watch through B streams A's steps as they come
    live: list[trainer_pb2.WatchTrainingJobResponse] = []
    watcher = threading.Thread(target=lambda: live.extend(watch(stack_b, job.job_id)),
                               daemon=True)
    watcher.start()
    started_at = get(stack_b, job.job_id).step
    wait_job(stack_b, job.job_id, lambda j: j.step >= started_at + 2)
    # a cancel through B stops A's worker: it checkpoints where it is and ends the job
    cancelled = stack_b.trainer_stub.CancelTrainingJob(
        trainer_pb2.CancelTrainingJobRequest(job_id=job.job_id), timeout=30).job
    assert cancelled.state == JobState.TRAINING_JOB_STATE_CANCELLING
    done = wait_state(stack_b, job.job_id, TERMINAL, timeout=300)
    assert done.state == JobState.TRAINING_JOB_STATE_CANCELLED, worker_log(stack_a, done)
    assert done.step < steps
    watcher.join(120)
    assert not watcher.is_alive()
    seen = [e.metrics.step for e in live if e.WhichOneof("event") == "metrics"]
    assert seen and seen[-1] >= started_at + 2, seen
    last = state_changes(live)[-1]
    # ended by A's worker itself (a checkpoint at the step it stopped), not by a kill
    assert last.state == JobState.TRAINING_JOB_STATE_CANCELLED
    assert last.message.startswith(f"cancelled at step {done.step}"), last
    saved = [e.checkpoint_saved.checkpoint for e in live
             if e.WhichOneof("event") == "checkpoint_saved"]
    assert (done.step, FULL_STATE) in {(c.step, c.kind) for c in saved}
    deadline = time.monotonic() + 60
    while worker_pids(job.job_id):  # it exits after writing its last state
        assert time.monotonic() < deadline, "A's worker did not exit after the cancel"
        time.sleep(0.2)
    assert started_jobs(b) == []
