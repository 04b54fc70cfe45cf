"""The Trainer's job store on the metadata store (shared.metadata_store): real processes, a real
PostgreSQL server (tests/stores/postgres.py), SQLite files of yesterday's layout.

- a short DreamBooth job through a Catalog and a Trainer on PostgreSQL runs to SUCCEEDED, with
  its Watch events, and its worker writes to the same database (no trainer.sqlite3 anywhere);
- two Trainer processes share one queue: every job runs exactly once, on one of them; claims
  skip rows another replica has locked (FOR UPDATE SKIP LOCKED) and never hand out a job twice;
- a trainer.sqlite3 of the pre-Alembic layout (PRAGMA user_version 1 or 2) is stamped and
  migrated, its jobs, events, checkpoints, datasets and observations kept;
- a database that goes away while serving answers UNAVAILABLE (DATABASE_UNAVAILABLE,
  retry_after), and the Trainer recovers by itself when it is back.

Rerun: `.venv/bin/pytest tests/stores/test_trainer_store.py -v`
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from boothstudio.services.trainer.store import (
    LEGACY_REVISIONS,
    JobRow,
    JobStore,
    Lease,
    LeaseLost,
)
from boothstudio.v1 import catalog_pb2, trainer_pb2
from tests.helpers import ServiceProcess
from tests.stores.helpers import rpc_error
from tests.stores.postgres import PostgresServer
from tests.trainer.helpers import (
    JobState,
    Stack,
    create,
    get,
    job_config,
    start_trainer,
    states,
    wait_state,
    watch,
    worker_log,
)

HEAD = "0003"
TERMINAL = {JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED,
            JobState.TRAINING_JOB_STATE_CANCELLED}

# The trainer's schema before Alembic, frozen here as shared.storage.SQLiteDatabase wrote it
# (the two migrations of the old services/trainer/store.py; PRAGMA user_version 1, then 2).
LEGACY_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    state INTEGER NOT NULL,
    config BLOB NOT NULL,            -- DreamBoothConfig, resolved, without image bytes
    base_model TEXT NOT NULL,        -- JSON: what Catalog said about the base model
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    failure_reason TEXT NOT NULL DEFAULT '',
    failure_message TEXT NOT NULL DEFAULT '',
    create_time REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    update_time REAL NOT NULL,
    queued_at REAL NOT NULL,         -- queue order
    output_model_id TEXT NOT NULL DEFAULT '',
    trigger_phrase TEXT NOT NULL DEFAULT '',
    last_metrics BLOB,
    warnings TEXT NOT NULL DEFAULT '[]',
    attempts INTEGER NOT NULL DEFAULT 0,
    instance_image_count INTEGER NOT NULL DEFAULT 0,
    job_dir TEXT NOT NULL,
    worker_pid INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state ON jobs(state, queued_at);
CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,           -- serialized WatchTrainingJobResponse
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    checkpoint_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    create_time REAL NOT NULL,
    PRIMARY KEY (job_id, checkpoint_id, kind)
);
CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    create_time REAL NOT NULL
);
CREATE TABLE dataset_images (
    dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    caption TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (dataset_id, filename)
);
"""
LEGACY_V2 = """
CREATE TABLE observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    value REAL NOT NULL
);
"""


def pg_env(database_url: str) -> dict[str, str]:
    return {"BOOTHSTUDIO_DATABASE_URL": database_url}


def start_pg_stack(start_service: Any, model_dir: Path, database_url: str,
                   trainers: int = 1, trainer_args: list[str] | None = None,
                   shared_store: Path | None = None) -> tuple[Stack, list[ServiceProcess]]:
    """A Catalog and `trainers` Trainers, all on `database_url`, each with its own data dir
    (and, with `shared_store`, one shared storage_url: what replicas need)."""
    env = pg_env(database_url)
    if shared_store is not None:
        env["BOOTHSTUDIO_STORAGE_URL"] = str(shared_store)
    catalog = start_service("catalog", env=env)
    stub = Stack(catalog, catalog, "", model_dir).catalog_stub
    model = stub.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(model_dir), model_id="untrained-tiny"), timeout=60).model
    started, shared = [], env
    for _ in range(trainers):
        # start_trainer's factory call, with the database in the environment
        def factory(name: str, args: Any = (), env: Any = None, **kw: Any) -> ServiceProcess:
            return start_service(name, args, {**(env or {}), **shared}, **kw)
        started.append(start_trainer(factory, catalog, trainer_args))
    return Stack(catalog, started[0], model.id, model_dir), started


def started_jobs(svc: ServiceProcess) -> list[str]:
    """Job ids of the workers a Trainer started (its JSON log lines)."""
    out = []
    for line in svc.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == "worker started":
                out.append(entry["job_id"])
    return out


def test_a_job_through_catalog_and_trainer_on_postgres_succeeds_with_its_events(
    start_service: Any, untrained_model: Path, subject_pngs: list[bytes], database_url: str
) -> None:
    stack, (trainer,) = start_pg_stack(start_service, untrained_model, database_url)
    job = create(stack, job_config(stack.base_model_id, subject_pngs[:2], steps=2,
                                   checkpoint_every_steps=1), display_name="on postgres")
    assert job.state == JobState.TRAINING_JOB_STATE_QUEUED
    events = watch(stack, job.job_id, history=True)
    job = get(stack, job.job_id)
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (job, worker_log(stack, job))
    assert states(events) == ["QUEUED", "PREPARING", "RUNNING", "EXPORTING", "SUCCEEDED"]
    # keepalives (no event; sent when the job was quiet 10 s on a loaded machine) repeat the
    # last sequence number
    numbered = [e.sequence for e in events if e.WhichOneof("event")]
    assert numbered == list(range(1, len(numbered) + 1))
    metrics = [e.metrics for e in events if e.WhichOneof("event") == "metrics"]
    assert metrics and metrics[-1].step == 2 and metrics[-1].total_steps == 2
    assert any(e.WhichOneof("event") == "checkpoint_saved" for e in events)
    # the fine-tuned model is in the Catalog (same database), the job found by its base model
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id)).model
    assert model.origin.training_job_id == job.job_id
    listed = stack.trainer_stub.ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(base_model_id=stack.base_model_id)).jobs
    assert [j.job_id for j in listed] == [job.job_id]
    # everything went to PostgreSQL: the worker too (no SQLite file in the data dir)
    assert not list(trainer.data_dir.rglob("trainer.sqlite3"))
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT version_num FROM alembic_version_trainer")).scalars().all() == [HEAD]
            assert conn.execute(sa.text("SELECT state, attempts FROM jobs")).all() == [
                (JobState.TRAINING_JOB_STATE_SUCCEEDED, 1)]
            assert conn.execute(sa.text("SELECT COUNT(*) FROM events")).scalar_one() == len(
                events)
            assert conn.execute(sa.text("SELECT COUNT(*) FROM observations")).scalar_one() > 0
    finally:
        engine.dispose()


def test_two_trainers_share_one_queue_and_run_each_job_once(
    start_service: Any, untrained_model: Path, subject_pngs: list[bytes], database_url: str,
    tmp_path: Path
) -> None:
    """Both replicas are up before any job is queued, on one database and one shared store
    (a folder here): a job created on one may run on the other."""
    stack, (a, b) = start_pg_stack(start_service, untrained_model, database_url, trainers=2,
                                   trainer_args=["--set", "max_running=1"],
                                   shared_store=tmp_path / "store")
    stub_b = Stack(stack.catalog, b, stack.base_model_id, untrained_model)
    cfg = job_config(stack.base_model_id, subject_pngs[:1], steps=1)
    ids = [create(stack if i % 2 == 0 else stub_b, cfg, job_id=f"shared-{i}").job_id
           for i in range(4)]
    for job_id in ids:
        job = wait_state(stack, job_id, TERMINAL, timeout=900)
        assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED, (
            job.failure_reason, job.failure_message, worker_log(stack, job))
        # one start, one attempt: no replica claimed it a second time
        events = watch(stub_b, job_id, history=True)
        assert states(events) == ["QUEUED", "PREPARING", "RUNNING", "EXPORTING", "SUCCEEDED"]
    runs = Counter(started_jobs(a) + started_jobs(b))
    assert runs == Counter({job_id: 1 for job_id in ids}), runs
    # both replicas took work (each runs one job at a time, and four were queued at once)
    assert started_jobs(a) and started_jobs(b), (started_jobs(a), started_jobs(b))


def queued_job(job_id: str, tmp: Path, queued_at: float) -> JobRow:
    return JobRow(job_id, job_id, JobState.TRAINING_JOB_STATE_QUEUED,
                  trainer_pb2.DreamBoothConfig(base_model_id="m"), {"id": "m"}, 0, 1, "", "",
                  queued_at, None, None, queued_at, queued_at, "", "", None, [], 0, 1,
                  tmp / job_id, 0)


def test_claims_skip_locked_rows_and_never_hand_out_a_job_twice(
    database_url: str, tmp_path: Path
) -> None:
    stores = [JobStore(tmp_path / "unused.sqlite3", database_url) for _ in range(3)]
    try:
        for i in range(30):
            stores[0].insert_job(queued_job(f"q{i:02}", tmp_path, 1000.0 + i))
        # another replica holds q00's row (its claim is in progress): skipped, not waited for
        with stores[1].engine.connect() as holder, holder.begin():
            holder.execute(sa.text("SELECT id FROM jobs WHERE id = 'q00' FOR UPDATE"))
            t0 = time.monotonic()
            claimed = stores[2].claim_queued(2)
            assert time.monotonic() - t0 < 5
            assert [j.id for j in claimed] == ["q01", "q02"]
            assert all(j.state == JobState.TRAINING_JOB_STATE_PREPARING and j.attempts == 1
                       and j.start_time for j in claimed)
        # replicas claiming at once: every job exactly once
        got: list[list[str]] = [[] for _ in stores]

        def claim_all(i: int) -> None:
            while batch := stores[i].claim_queued(1 + i % 2):
                got[i].extend(j.id for j in batch)

        threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        everyone = [job_id for ids in got for job_id in ids]
        assert sorted(everyone) == [f"q{i:02}" for i in range(30) if i not in (1, 2)]
        assert stores[0].count_by_state() == {JobState.TRAINING_JOB_STATE_PREPARING: 30}
        # a compare-and-set that lost is refused on PostgreSQL too
        assert stores[0].set_state("q00", JobState.TRAINING_JOB_STATE_RUNNING,
                                   expect={JobState.TRAINING_JOB_STATE_QUEUED}) is None
        assert stores[1].set_state("q00", JobState.TRAINING_JOB_STATE_RUNNING,
                                   expect={JobState.TRAINING_JOB_STATE_PREPARING}) == (
            JobState.TRAINING_JOB_STATE_PREPARING)
        assert [e.sequence for e in stores[2].events_after("q00", 0)] == [1, 2, 3]
    finally:
        for s in stores:
            s.close()


def test_leases_are_claimed_renewed_taken_over_when_expired_and_fence_the_old_runner(
    database_url: str, tmp_path: Path
) -> None:
    a, b = (JobStore(tmp_path / "unused.sqlite3", database_url) for _ in range(2))
    try:
        a.insert_job(queued_job("leased", tmp_path, 1000.0))
        (job,) = a.claim_queued(1, owner="replica-a", lease_seconds=3)
        assert (job.lease_owner, job.attempts, job.taken_over) == ("replica-a", 1, False)
        # a live lease is left alone by another replica; renewals are compare-and-set on it
        assert b.claim_queued(1, owner="replica-b", lease_seconds=3) == []
        assert a.lease_is_live("leased")
        first = Lease("replica-a", 1)
        assert a.hold_leases({"leased": first}, renew_seconds=3) == {
            "leased": JobState.TRAINING_JOB_STATE_PREPARING}
        worker_a = JobStore(tmp_path / "unused.sqlite3", database_url, fence=first)
        try:
            worker_a.set_state("leased", JobState.TRAINING_JOB_STATE_RUNNING)
            worker_a.update("leased", step=1)
            # replica A stops renewing: after the lease, B takes the job over (attempt 2)
            deadline = time.monotonic() + 30
            while not (taken := b.claim_queued(1, owner="replica-b", lease_seconds=30)):
                assert time.monotonic() < deadline, "the expired lease was never taken over"
                time.sleep(0.2)
            assert [(j.id, j.lease_owner, j.attempts, j.taken_over, j.state)
                    for j in taken] == [("leased", "replica-b", 2, True,
                                         JobState.TRAINING_JOB_STATE_PREPARING)]
            # A's renewal, state changes and its worker's writes no longer reach the job
            assert a.hold_leases({"leased": first}, renew_seconds=3) == {}
            assert a.set_state("leased", JobState.TRAINING_JOB_STATE_QUEUED,
                               lease=first) is None
            for write in (lambda: worker_a.update("leased", step=9),
                          lambda: worker_a.event("leased", checkpoint_saved=(
                              trainer_pb2.CheckpointSaved())),
                          lambda: worker_a.add_warning("leased", "LATE", "from A"),
                          lambda: worker_a.set_state("leased",
                                                     JobState.TRAINING_JOB_STATE_SUCCEEDED)):
                with pytest.raises(LeaseLost):
                    write()
        finally:
            worker_a.close()
        job = b.get("leased")
        assert job is not None and job.step == 1
        assert job.state == JobState.TRAINING_JOB_STATE_PREPARING
        assert b.hold_leases({"leased": Lease("replica-b", 2)}) == {
            "leased": JobState.TRAINING_JOB_STATE_PREPARING}
        changes = [e.state_changed for e in b.events_after("leased", 0)
                   if e.WhichOneof("event") == "state_changed"]
        assert [c.reason for c in changes] == ["CREATED", "STARTED", "", "TAKEN_OVER"]
        assert [w["reason"] for w in job.warnings] == ["TAKEN_OVER"]
        # an expired job that was being cancelled ends CANCELLED: nobody is left to stop
        b.set_state("leased", JobState.TRAINING_JOB_STATE_CANCELLING, lease=Lease("replica-b", 2),
                    lease_expires=0.0)
        assert not b.lease_is_live("leased")
        assert a.claim_queued(1, owner="replica-a") == []
        assert a.get("leased").state == JobState.TRAINING_JOB_STATE_CANCELLED  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def legacy_file(path: Path, version: int) -> None:
    """A trainer.sqlite3 of the pre-Alembic layout at `version`, with one finished job (its
    events and a checkpoint) and a dataset with one picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = trainer_pb2.DreamBoothConfig(base_model_id="kept-base", max_train_steps=7)
    first = trainer_pb2.WatchTrainingJobResponse(
        job_id="kept-job", sequence=1, state_changed=trainer_pb2.TrainingStateChanged(
            state=JobState.TRAINING_JOB_STATE_QUEUED, reason="CREATED"))
    last = trainer_pb2.WatchTrainingJobResponse(
        job_id="kept-job", sequence=2, state_changed=trainer_pb2.TrainingStateChanged(
            previous_state=JobState.TRAINING_JOB_STATE_EXPORTING,
            state=JobState.TRAINING_JOB_STATE_SUCCEEDED))
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_V1 + (LEGACY_V2 if version == 2 else ""))
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(
            "INSERT INTO jobs(id, display_name, state, config, base_model, step, total_steps,"
            " create_time, start_time, end_time, update_time, queued_at, output_model_id,"
            " trigger_phrase, warnings, attempts, instance_image_count, job_dir)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("kept-job", "Kept", JobState.TRAINING_JOB_STATE_SUCCEEDED, cfg.SerializeToString(),
             json.dumps({"id": "kept-base"}), 7, 7, 1_700_000_000.5, 1_700_000_001.0,
             1_700_000_100.0, 1_700_000_100.0, 1_700_000_000.5, "kept-model", "a zwx dog",
             json.dumps([{"reason": "OLD", "message": "from yesterday", "field": ""}]), 1, 3,
             str(path.parent / "jobs" / "kept-job")))
        conn.executemany("INSERT INTO events(job_id, seq, time, kind, payload)"
                         " VALUES (?,?,?,?,?)",
                         [("kept-job", 1, 1_700_000_000.5, "state_changed",
                           first.SerializeToString()),
                          ("kept-job", 2, 1_700_000_100.0, "state_changed",
                           last.SerializeToString())])
        conn.execute("INSERT INTO checkpoints VALUES (?,?,?,?,?,?,?)",
                     ("kept-job", "step-7", trainer_pb2.CHECKPOINT_KIND_FULL_STATE, 7,
                      "/gone/step-7.ckpt", 3 * 2**31, 1_700_000_090.0))
        conn.execute("INSERT INTO datasets VALUES ('kept-set', 'Kept set', 1700000000.0)")
        conn.execute("INSERT INTO dataset_images VALUES ('kept-set', 'a.png', 64, 64, 100,"
                     " 'abc', 'a caption')")
        if version == 2:
            # recent: the service prunes observations older than a day when it starts
            conn.execute("INSERT INTO observations(time, job_id, name, label, value)"
                         " VALUES (?, 'kept-job', 'step_seconds', '', 0.5)", (time.time(),))


def test_an_old_layout_trainer_sqlite3_is_migrated_with_its_rows(
    start_service: Any, tmp_path: Path
) -> None:
    path = tmp_path / "trainer" / "trainer.sqlite3"
    legacy_file(path, 2)
    assert LEGACY_REVISIONS == {1: "0001", 2: "0002"}
    svc = start_service("trainer", data_dir=tmp_path)
    stack = Stack(svc, svc, "kept-base", tmp_path)
    job = get(stack, "kept-job")
    assert job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED
    assert job.display_name == "Kept" and job.output_model_id == "kept-model"
    assert job.config.max_train_steps == 7 and job.create_time.seconds == 1_700_000_000
    assert [w.reason for w in job.warnings] == ["OLD"]
    listed = stack.trainer_stub.ListTrainingJobs(
        trainer_pb2.ListTrainingJobsRequest(base_model_id="kept-base")).jobs
    assert [j.job_id for j in listed] == ["kept-job"]
    events = watch(stack, "kept-job", history=True, timeout=60)
    assert states(events) == ["QUEUED", "SUCCEEDED"]
    svc.stop()

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version_trainer").fetchall() == [
            (HEAD,)]
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
        assert conn.execute("SELECT size_bytes FROM checkpoints").fetchall() == [(3 * 2**31,)]
        assert conn.execute("SELECT caption FROM dataset_images").fetchall() == [("a caption",)]
        assert conn.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_version_1_trainer_sqlite3_is_stamped_then_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "trainer.sqlite3"
    legacy_file(path, 1)
    store = JobStore(path)
    try:
        job = store.get("kept-job")
        assert job is not None and job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED
        assert [c.step for c in store.checkpoints("kept-job")] == [7]
        assert [i.filename for i, _ in store.dataset_images("kept-set")] == ["a.png"]
        store.observe("kept-job", [("step_seconds", "", 0.25)])  # 0002 added the table
        assert store.last_observation_id() == 1
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version_trainer").fetchall() == [
            (HEAD,)]


def test_a_database_that_goes_away_answers_unavailable_and_the_trainer_recovers(
    start_service: Any, postgres: PostgresServer, database_url: str, tmp_path: Path
) -> None:
    store = JobStore(tmp_path / "unused.sqlite3", database_url)
    try:
        store.insert_job(queued_job("before", tmp_path, time.time()))
        store.set_state("before", JobState.TRAINING_JOB_STATE_CANCELLED, "CANCELLED")
    finally:
        store.close()
    svc = start_service("trainer", env=pg_env(database_url))
    stack = Stack(svc, svc, "m", tmp_path)
    assert get(stack, "before").state == JobState.TRAINING_JOB_STATE_CANCELLED
    postgres.stop()
    try:
        for call in (
            lambda: get(stack, "before"),
            lambda: stack.trainer_stub.ListTrainingJobs(trainer_pb2.ListTrainingJobsRequest()),
        ):
            err = rpc_error(call)
            assert err.code == grpc.StatusCode.UNAVAILABLE, err
            assert err.reason == "DATABASE_UNAVAILABLE"
            assert err.retry_after and err.retry_after > 0
    finally:
        postgres.restart()
    # no restart of the service: the pool checks its connections and opens new ones
    assert get(stack, "before").state == JobState.TRAINING_JOB_STATE_CANCELLED
