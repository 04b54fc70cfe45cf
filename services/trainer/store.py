"""The trainer's job store: jobs, their events, checkpoints, uploaded datasets and worker
observations in the metadata store (shared.metadata_store): SQLite under the data dir by
default, PostgreSQL when `database_url` is set; the schema is migrated by Alembic (migrations/).

Shared by the service process (queue, RPCs) and the worker processes (progress, events), and by
several Trainer replicas on one database: each write is a short transaction; state changes are
compare-and-set under the job's row lock; queued jobs are claimed FOR UPDATE SKIP LOCKED
(claim_queued).

Leases: the replica that claims a job holds it (lease_owner = its replica_id, the claim's
attempt number as fencing token) until lease_expires, which it renews while the job runs
(hold_leases). Lease times are the DATABASE's clock (`_db_now`, UTC seconds), never a replica's,
so replicas' clocks need not agree. A job whose lease expired (its replica died) is claimed again
like a queued one and re-run from its last checkpoint. A worker process writes under its
replica's lease (WORKER_LEASE_ENV, set by the supervisor): once another claim took the job, its
writes raise LeaseLost instead of overwriting the new runner's state.

Events carry a per-job monotonic sequence number so that watchers (on any replica) follow a job
by polling `events_after`. A database that goes away while serving is
errors.Unavailable (DATABASE_UNAVAILABLE, retry_after). No torch here: the service imports this
module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from boothstudio.services.trainer.migrations import MIGRATIONS_DIR
from boothstudio.shared import metadata_store as mstore
from boothstudio.v1 import common_pb2, trainer_pb2

JobState = trainer_pb2.TrainingJobState
TERMINAL = frozenset({JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED,
                      JobState.TRAINING_JOB_STATE_CANCELLED})
ACTIVE = frozenset({JobState.TRAINING_JOB_STATE_PREPARING, JobState.TRAINING_JOB_STATE_RUNNING,
                    JobState.TRAINING_JOB_STATE_EXPORTING, JobState.TRAINING_JOB_STATE_CANCELLING})

SERVICE = "trainer"
#: PRAGMA user_version of a pre-Alembic trainer.sqlite3 -> the revision that is its schema
LEGACY_REVISIONS = {1: "0001", 2: "0002"}

# The tables as the code reads them (the schema itself is the migrations' business).
metadata = sa.MetaData()
jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("display_name", sa.Text()),
    sa.Column("state", sa.Integer()),
    sa.Column("config", sa.LargeBinary()),
    sa.Column("base_model", sa.Text()),
    sa.Column("step", sa.Integer()),
    sa.Column("total_steps", sa.Integer()),
    sa.Column("failure_reason", sa.Text()),
    sa.Column("failure_message", sa.Text()),
    sa.Column("create_time", sa.Float()),
    sa.Column("start_time", sa.Float()),
    sa.Column("end_time", sa.Float()),
    sa.Column("update_time", sa.Float()),
    sa.Column("queued_at", sa.Float()),
    sa.Column("output_model_id", sa.Text()),
    sa.Column("trigger_phrase", sa.Text()),
    sa.Column("last_metrics", sa.LargeBinary()),
    sa.Column("warnings", sa.Text()),
    sa.Column("attempts", sa.Integer()),
    sa.Column("instance_image_count", sa.Integer()),
    sa.Column("job_dir", sa.Text()),
    sa.Column("worker_pid", sa.Integer()),
    sa.Column("lease_owner", sa.Text()),
    sa.Column("lease_expires", sa.Float()),
    sa.Column("crashes", sa.Integer()),
)
events = sa.Table(
    "events", metadata,
    sa.Column("job_id", sa.Text(), primary_key=True),
    sa.Column("seq", sa.Integer(), primary_key=True),
    sa.Column("time", sa.Float()),
    sa.Column("kind", sa.Text()),
    sa.Column("payload", sa.LargeBinary()),
)
checkpoints = sa.Table(
    "checkpoints", metadata,
    sa.Column("job_id", sa.Text(), primary_key=True),
    sa.Column("checkpoint_id", sa.Text(), primary_key=True),
    sa.Column("kind", sa.Integer(), primary_key=True),
    sa.Column("step", sa.Integer()),
    sa.Column("path", sa.Text()),
    sa.Column("size_bytes", sa.BigInteger()),
    sa.Column("create_time", sa.Float()),
)
datasets = sa.Table(
    "datasets", metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("name", sa.Text()),
    sa.Column("create_time", sa.Float()),
)
dataset_images = sa.Table(
    "dataset_images", metadata,
    sa.Column("dataset_id", sa.Text(), primary_key=True),
    sa.Column("filename", sa.Text(), primary_key=True),
    sa.Column("width", sa.Integer()),
    sa.Column("height", sa.Integer()),
    sa.Column("size_bytes", sa.BigInteger()),
    sa.Column("sha256", sa.Text()),
    sa.Column("caption", sa.Text()),
)
observations = sa.Table(
    "observations", metadata,
    sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float()),
    sa.Column("job_id", sa.Text()),
    sa.Column("name", sa.Text()),
    sa.Column("label", sa.Text()),
    sa.Column("value", sa.Float()),
)


def timestamp(t: float | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


class DuplicateRow(Exception):
    """A row with that key exists already (a concurrent call may have written it)."""


class LeaseLost(Exception):
    """A fenced write (a worker's) to a job that another claim has taken since, or that is gone:
    the writer must stop; nothing was written."""


#: the lease a worker process writes under ("<attempt> <owner>"), set by the supervisor
WORKER_LEASE_ENV = "BOOTHSTUDIO_TRAINER_WORKER_LEASE"


@dataclass(frozen=True)
class Lease:
    """Who runs a job: the replica (`owner`) and which of its claims (`attempt`, the job's
    attempts counter at that claim). The attempt makes the token unique even when a job goes
    back to a replica that ran it before."""

    owner: str
    attempt: int

    def to_env(self) -> str:
        return f"{self.attempt} {self.owner}"

    @classmethod
    def from_env(cls) -> Lease | None:
        given = os.environ.get(WORKER_LEASE_ENV, "")
        if not given:
            return None
        attempt, _, owner = given.partition(" ")
        return cls(owner, int(attempt))

    def holds(self) -> sa.ColumnElement[bool]:
        """SQL condition: the job is still under this lease."""
        return sa.and_(jobs.c.lease_owner == self.owner, jobs.c.attempts == self.attempt)


@dataclass
class JobRow:
    id: str
    display_name: str
    state: int
    config: trainer_pb2.DreamBoothConfig
    base_model: dict[str, Any]
    step: int
    total_steps: int
    failure_reason: str
    failure_message: str
    create_time: float
    start_time: float | None
    end_time: float | None
    update_time: float
    queued_at: float
    output_model_id: str
    trigger_phrase: str
    last_metrics: trainer_pb2.TrainingMetrics | None
    warnings: list[dict[str, str]]
    attempts: int
    instance_image_count: int
    job_dir: Path
    worker_pid: int
    lease_owner: str = ""
    lease_expires: float | None = None
    crashes: int = 0
    #: set by claim_queued only: claimed from a replica whose lease had expired
    taken_over: bool = False

    @property
    def lease(self) -> Lease:
        return Lease(self.lease_owner, self.attempts)

    @classmethod
    def from_row(cls, r: RowMapping, jobs_dir: Path) -> JobRow:
        """A row as this host sees it: the job's folder is this host's `jobs_dir`/<id> (a job
        created on another host runs here from the artifact store), not the path recorded."""
        cfg = trainer_pb2.DreamBoothConfig.FromString(r["config"])
        metrics = (trainer_pb2.TrainingMetrics.FromString(r["last_metrics"])
                   if r["last_metrics"] else None)
        return cls(r["id"], r["display_name"], r["state"], cfg, json.loads(r["base_model"]),
                   r["step"], r["total_steps"], r["failure_reason"], r["failure_message"],
                   r["create_time"], r["start_time"], r["end_time"], r["update_time"],
                   r["queued_at"], r["output_model_id"], r["trigger_phrase"], metrics,
                   json.loads(r["warnings"]), r["attempts"], r["instance_image_count"],
                   jobs_dir / r["id"], r["worker_pid"], r["lease_owner"] or "",
                   r["lease_expires"], r["crashes"] or 0)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class _RawSQL:
    """Plain SQL on the store, for tests and one-off maintenance (not used by the services)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def execute(self, sql: str, params: Any = ()) -> int:
        with mstore.writing(self.engine) as conn:
            return conn.exec_driver_sql(sql, tuple(params)).rowcount

    def query(self, sql: str, params: Any = ()) -> list[sa.Row[Any]]:
        with mstore.reading(self.engine) as conn:
            return list(conn.exec_driver_sql(sql, tuple(params)).all())

    def query_one(self, sql: str, params: Any = ()) -> sa.Row[Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None


class JobStore:
    """Typed access to the trainer's tables (one per process: the service and each worker)."""

    def __init__(self, path: Path, database_url: str = "", *,
                 fence: Lease | None = None) -> None:
        """The store in `database_url`, or in the SQLite file `path` when it is empty;
        migrated to the newest schema (ConfigError naming database_url when unreachable).

        `fence`: the lease this process writes under (default: WORKER_LEASE_ENV, which the
        supervisor sets for its workers; the service itself has none). With a fence, every
        write to a job (state, progress, events, warnings, checkpoints) happens only while the
        job is still under that lease, else LeaseLost."""
        self.engine = mstore.open_database(database_url, path)
        #: this host's job folders: the SQLite file's folder is the service dir
        self.jobs_dir = Path(path).parent / "jobs"
        mstore.migrate(self.engine, MIGRATIONS_DIR, service=SERVICE,
                       legacy_revisions=LEGACY_REVISIONS, legacy_table="jobs")
        self.postgres = self.engine.dialect.name == "postgresql"
        self.db = _RawSQL(self.engine)
        self.fence = fence if fence is not None else Lease.from_env()

    def _db_now(self) -> sa.ColumnElement[float]:
        """The database's clock in UTC seconds: every lease time is read and written by it."""
        if self.postgres:
            return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)
        return (sa.func.julianday("now") - 2440587.5) * 86400.0

    def _fenced(self, tx: sa.Connection, job_id: str) -> None:
        """Lock the job's row; LeaseLost when this process writes under a lease it lost."""
        row = tx.execute(sa.select(jobs.c.lease_owner, jobs.c.attempts)
                         .where(jobs.c.id == job_id).with_for_update()).first()
        if self.fence is not None and (row is None or Lease(row[0], row[1]) != self.fence):
            raise LeaseLost(f"job {job_id} is no longer under lease {self.fence}")

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs

    def insert_job(self, job: JobRow) -> None:
        """Insert a new job with its CREATED event and its warnings, in one transaction."""
        with mstore.writing(self.engine) as tx:
            tx.execute(jobs.insert().values(
                id=job.id, display_name=job.display_name, state=job.state,
                config=job.config.SerializeToString(), base_model=json.dumps(job.base_model),
                step=job.step, total_steps=job.total_steps, create_time=job.create_time,
                update_time=job.update_time, queued_at=job.queued_at,
                trigger_phrase=job.trigger_phrase, warnings=json.dumps(job.warnings),
                instance_image_count=job.instance_image_count, job_dir=str(job.job_dir)))
            self._append_event(tx, job.id, job.create_time,
                               state_changed=trainer_pb2.TrainingStateChanged(
                                   previous_state=JobState.TRAINING_JOB_STATE_UNSPECIFIED,
                                   state=job.state, reason="CREATED"))  # type: ignore[arg-type]
            for w in job.warnings:
                self._append_event(tx, job.id, job.create_time,
                                   warning=common_pb2.Warning(**w))

    def get(self, job_id: str) -> JobRow | None:
        with mstore.reading(self.engine) as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return JobRow.from_row(row, self.jobs_dir) if row else None

    def _base_model_id(self) -> sa.ColumnElement[Any]:
        if self.postgres:
            return sa.cast(jobs.c.base_model, postgresql.JSONB)["id"].astext
        return sa.func.json_extract(jobs.c.base_model, "$.id")

    def list(self, states: Iterable[int] = (), base_model_id: str = "") -> list[JobRow]:
        stmt = sa.select(jobs)
        states = list(states)
        if states:
            stmt = stmt.where(jobs.c.state.in_(states))
        if base_model_id:
            stmt = stmt.where(self._base_model_id() == base_model_id)
        stmt = stmt.order_by(jobs.c.create_time.desc(), jobs.c.id.desc())
        with mstore.reading(self.engine) as conn:
            return [JobRow.from_row(r, self.jobs_dir) for r in conn.execute(stmt).mappings()]

    def queued(self) -> list[JobRow]:
        stmt = (sa.select(jobs).where(jobs.c.state == JobState.TRAINING_JOB_STATE_QUEUED)
                .order_by(jobs.c.queued_at, jobs.c.id))
        with mstore.reading(self.engine) as conn:
            return [JobRow.from_row(r, self.jobs_dir) for r in conn.execute(stmt).mappings()]

    def claim_queued(self, limit: int, exclude: Iterable[str] = (), *, owner: str = "",
                     lease_seconds: float = 30.0) -> list[JobRow]:
        """Take up to `limit` jobs, oldest first, for the replica `owner`: queued ones (but not
        those reserved for another replica: `reserve`), and active ones whose lease expired
        (their replica died; `taken_over` is set on those).
        Each moves to PREPARING (STARTED or TAKEN_OVER, attempt N; start_time on its first
        start) under a lease of `lease_seconds` with its state_changed event, in one
        transaction. An expired job that was being cancelled is CANCELLED instead (nobody is
        left to stop). Several Trainer replicas may share the queue: on PostgreSQL the rows
        are locked FOR UPDATE SKIP LOCKED (another replica's claim in progress is skipped, not
        waited for), on SQLite the write lock serializes claims; either way a job is claimed
        by exactly one caller. `exclude`: ids not to take (jobs this process still runs)."""
        if limit <= 0:
            return []
        exclude = [*exclude]
        unleased = sa.or_(jobs.c.lease_expires.is_(None), jobs.c.lease_expires < self._db_now())
        queued = sa.and_(jobs.c.state == JobState.TRAINING_JOB_STATE_QUEUED,
                         sa.or_(unleased, jobs.c.lease_owner == owner))  # or reserved for us
        stmt = sa.select(jobs).where(sa.or_(queued, sa.and_(jobs.c.state.in_(ACTIVE), unleased)))
        if exclude:
            stmt = stmt.where(jobs.c.id.not_in(exclude))
        stmt = stmt.order_by(jobs.c.queued_at, jobs.c.id).limit(limit)
        with mstore.reading(self.engine) as conn:  # most calls find nothing: no write lock
            if conn.execute(stmt.with_only_columns(jobs.c.id)).first() is None:
                return []
        stmt = stmt.with_for_update(skip_locked=True)
        claimed = []
        with mstore.writing(self.engine) as tx:
            rows = tx.execute(stmt).mappings().all()
            for job in [JobRow.from_row(r, self.jobs_dir) for r in rows]:
                if job.state == JobState.TRAINING_JOB_STATE_CANCELLING:
                    self._change(tx, job, JobState.TRAINING_JOB_STATE_CANCELLED, "CANCELLED",
                                 f"replica {job.lease_owner or '?'} stopped while cancelling",
                                 {"end_time": time.time(), "update_time": time.time()})
                    continue
                taken_over = job.state != JobState.TRAINING_JOB_STATE_QUEUED
                fields: dict[str, Any] = {
                    "state": JobState.TRAINING_JOB_STATE_PREPARING, "attempts": job.attempts + 1,
                    "failure_reason": "", "failure_message": "", "update_time": time.time(),
                    "lease_owner": owner, "lease_expires": self._db_now() + lease_seconds}
                if not job.start_time:  # first start only
                    fields["start_time"] = fields["update_time"]
                if taken_over:
                    message = (f"replica {job.lease_owner or '?'} stopped renewing its lease; "
                               f"attempt {job.attempts + 1} resumes from the last checkpoint")
                    self._change(tx, job, JobState.TRAINING_JOB_STATE_PREPARING, "TAKEN_OVER",
                                 message, fields)
                    self._add_warning(tx, job.id, "TAKEN_OVER", message)
                else:
                    self._change(tx, job, JobState.TRAINING_JOB_STATE_PREPARING, "STARTED",
                                 f"attempt {job.attempts + 1}", fields)
                fields.pop("lease_expires")  # an SQL expression; not needed by the caller
                for k, v in fields.items():
                    setattr(job, k, v)
                job.taken_over = taken_over
                claimed.append(job)
        return claimed

    def _change(self, tx: sa.Connection, job: JobRow, state: int, reason: str, message: str,
                fields: dict[str, Any]) -> None:
        """Move a job the caller holds locked (read in this transaction) and log the event."""
        tx.execute(jobs.update().where(jobs.c.id == job.id).values(dict(fields, state=state)))
        self._append_event(tx, job.id, time.time(), lock=False,
                           state_changed=trainer_pb2.TrainingStateChanged(
                               previous_state=job.state,  # type: ignore[arg-type]
                               state=state, reason=reason, message=message))  # type: ignore[arg-type]

    def hold_leases(self, leases: Mapping[str, Lease], *,
                    renew_seconds: float | None = None) -> dict[str, int]:
        """Of the jobs a replica runs (job id -> the lease it claimed it under), those still
        active under that lease -> their state; with `renew_seconds`, their leases are
        extended to that long from now, in one UPDATE (a compare-and-set on the lease: one
        another replica took over is never renewed back). A job missing from the answer was
        taken over, ended or deleted: its worker must stop."""
        if not leases:
            return {}
        held = sa.or_(*(sa.and_(jobs.c.id == job_id, lease.holds())
                        for job_id, lease in leases.items()))
        active = jobs.c.state.in_(ACTIVE)
        if renew_seconds is None:
            with mstore.reading(self.engine) as conn:
                rows = conn.execute(sa.select(jobs.c.id, jobs.c.state).where(held, active))
                return {r[0]: int(r[1]) for r in rows}
        with mstore.writing(self.engine) as tx:
            rows = tx.execute(jobs.update().where(held, active)
                              .values(lease_expires=self._db_now() + renew_seconds)
                              .returning(jobs.c.id, jobs.c.state))
            return {r[0]: int(r[1]) for r in rows}

    def reserve(self, job_id: str, lease: Lease, owner: str, reason: str, message: str,
                lease_seconds: float) -> int | None:
        """Queue an active job still under `lease` again, for the replica `owner` only, for
        `lease_seconds` (a restarted replica taking its jobs back: no other replica claims
        them meanwhile); the previous state, or None when the job left that lease."""
        return self.set_state(job_id, JobState.TRAINING_JOB_STATE_QUEUED, reason, message,
                              expect=ACTIVE, lease=lease, lease_owner=owner,
                              lease_expires=self._db_now() + lease_seconds)

    def lease_is_live(self, job_id: str) -> bool:
        """Whether a replica holds the job's lease now (it runs the job, or is starting it)."""
        stmt = sa.select(jobs.c.id).where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE),
                                          jobs.c.lease_expires >= self._db_now())
        with mstore.reading(self.engine) as conn:
            return conn.execute(stmt).first() is not None

    @staticmethod
    def _values(fields: dict[str, Any]) -> dict[str, Any]:
        """Column values: protobuf values serialized, dicts/lists as JSON, paths as text."""
        values = {}
        for k, v in fields.items():
            if hasattr(v, "SerializeToString"):
                v = v.SerializeToString()
            elif isinstance(v, dict | list):
                v = json.dumps(v)
            elif isinstance(v, Path):
                v = str(v)
            values[k] = v
        return values

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns; protobuf values are serialized, dicts/lists become JSON."""
        if not fields:
            return
        fields.setdefault("update_time", time.time())
        stmt = jobs.update().where(jobs.c.id == job_id).values(self._values(fields))
        if self.fence is not None:
            stmt = stmt.where(self.fence.holds())
        with mstore.writing(self.engine) as tx:
            if tx.execute(stmt).rowcount != 1 and self.fence is not None:
                raise LeaseLost(f"job {job_id} is no longer under lease {self.fence}")

    def add_warning(self, job_id: str, reason: str, message: str, field: str = "") -> None:
        """Append a warning to the job's list and its event, in one transaction."""
        with mstore.writing(self.engine) as tx:
            self._fenced(tx, job_id)
            self._add_warning(tx, job_id, reason, message, field)

    def _add_warning(self, tx: sa.Connection, job_id: str, reason: str, message: str,
                     field: str = "") -> None:
        """add_warning inside the caller's transaction (which may hold the row lock)."""
        warning = {"reason": reason, "message": message, "field": field}
        row = tx.execute(self._locked(job_id, jobs.c.warnings)).first()
        if row is None:
            return
        tx.execute(jobs.update().where(jobs.c.id == job_id).values(
            warnings=json.dumps([*json.loads(row[0]), warning]), update_time=time.time()))
        self._append_event(tx, job_id, time.time(), lock=False,
                           warning=common_pb2.Warning(**warning))

    @staticmethod
    def _locked(job_id: str, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """Read a job's columns and lock its row until the transaction ends (PostgreSQL; on
        SQLite the transaction holds the write lock already)."""
        return sa.select(*columns).where(jobs.c.id == job_id).with_for_update()

    def set_state(self, job_id: str, state: int, reason: str = "", message: str = "",
                  *, expect: Iterable[int] | None = None, lease: Lease | None = None,
                  **fields: Any) -> int | None:
        """Change the state (and any columns) and append its state_changed event, atomically.

        With `expect`, a compare-and-set: the change happens only while the job is in one of
        those states (the service and a worker both change states; neither may overwrite a
        change it has not seen). With `lease`, likewise only while the job is under that lease
        (a replica changing a job it runs). Returns the previous state, or None when the job
        does not exist, was not in `expect` or not under `lease`. A fenced store (a worker's)
        raises LeaseLost instead when the job left its lease.
        """
        now = time.time()
        if state == JobState.TRAINING_JOB_STATE_QUEUED:
            fields.setdefault("lease_expires", None)  # for any replica, unless `reserve`d
        if state in TERMINAL:
            fields.setdefault("end_time", now)
        if state == JobState.TRAINING_JOB_STATE_FAILED:
            fields.setdefault("failure_reason", reason)
            fields.setdefault("failure_message", message)
        fields.setdefault("update_time", now)
        values = self._values(dict(fields, state=state))
        with mstore.writing(self.engine) as tx:
            self._fenced(tx, job_id)
            row = tx.execute(self._locked(job_id, jobs.c.state, jobs.c.lease_owner,
                                          jobs.c.attempts)).first()
            if row is None:
                return None
            previous = int(row[0])
            if expect is not None and previous not in set(expect):
                return None
            if lease is not None and Lease(row[1], row[2]) != lease:
                return None
            # the row is locked (or the database is): the WHERE re-checks what was read
            if tx.execute(jobs.update()
                          .where(jobs.c.id == job_id, jobs.c.state == previous)
                          .values(values)).rowcount != 1:
                return None
            self._append_event(tx, job_id, now, lock=False,
                               state_changed=trainer_pb2.TrainingStateChanged(
                                   previous_state=previous,  # type: ignore[arg-type]
                                   state=state, reason=reason, message=message))  # type: ignore[arg-type]
        return previous

    def count_by_state(self) -> dict[int, int]:
        stmt = sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)
        with mstore.reading(self.engine) as conn:
            return {int(r[0]): int(r[1]) for r in conn.execute(stmt)}

    def delete_job(self, job_id: str) -> None:
        with mstore.writing(self.engine) as tx:
            tx.execute(jobs.delete().where(jobs.c.id == job_id))

    # -- events

    def event(self, job_id: str, **event: Any) -> int:
        """Append one event (exactly one WatchTrainingJobResponse oneof field) and return its
        sequence number."""
        with mstore.writing(self.engine) as tx:
            return self._append_event(tx, job_id, time.time(), **event)

    def _append_event(self, tx: sa.Connection, job_id: str, now: float, *, lock: bool = True,
                      **event: Any) -> int:
        """Insert the job's next event. The next sequence number is read under the job's row
        lock (taken here, fenced, unless the caller holds it: `lock=False`), so two processes
        appending to one job never pick the same number."""
        if lock:
            self._fenced(tx, job_id)
        msg = trainer_pb2.WatchTrainingJobResponse(job_id=job_id, time=timestamp(now), **event)
        kind = next(iter(event))
        seq = int(tx.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0) + 1)
                             .where(events.c.job_id == job_id)).scalar_one())
        msg.sequence = seq
        tx.execute(events.insert().values(job_id=job_id, seq=seq, time=now, kind=kind,
                                          payload=msg.SerializeToString()))
        return seq

    def events_after(self, job_id: str, seq: int, limit: int = 500,
                     kinds: Iterable[str] | None = None
                     ) -> list[trainer_pb2.WatchTrainingJobResponse]:
        stmt = sa.select(events.c.payload).where(events.c.job_id == job_id, events.c.seq > seq)
        if kinds is not None:
            stmt = stmt.where(events.c.kind.in_(list(kinds)))
        stmt = stmt.order_by(events.c.seq).limit(limit)
        with mstore.reading(self.engine) as conn:
            return [trainer_pb2.WatchTrainingJobResponse.FromString(r[0])
                    for r in conn.execute(stmt)]

    def last_event_seq(self, job_id: str) -> int:
        stmt = (sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))
                .where(events.c.job_id == job_id))
        with mstore.reading(self.engine) as conn:
            return int(conn.execute(stmt).scalar_one())

    def last_event_of_kind(self, job_id: str, kind: str
                           ) -> trainer_pb2.WatchTrainingJobResponse | None:
        stmt = (sa.select(events.c.payload)
                .where(events.c.job_id == job_id, events.c.kind == kind)
                .order_by(events.c.seq.desc()).limit(1))
        with mstore.reading(self.engine) as conn:
            payload = conn.execute(stmt).scalar()
        return trainer_pb2.WatchTrainingJobResponse.FromString(payload) if payload else None

    # -- checkpoints

    def add_checkpoint(self, job_id: str, ckpt: trainer_pb2.Checkpoint) -> None:
        """Record a checkpoint (one of the same id and kind is replaced)."""
        row = {"job_id": job_id, "checkpoint_id": ckpt.checkpoint_id, "kind": ckpt.kind,
               "step": ckpt.step, "path": ckpt.path, "size_bytes": ckpt.size_bytes,
               "create_time": ckpt.create_time.ToNanoseconds() / 1e9}
        with mstore.writing(self.engine) as tx:
            self._fenced(tx, job_id)
            insert = (postgresql if self.postgres else sqlite).insert(checkpoints).values(row)
            tx.execute(insert.on_conflict_do_update(
                index_elements=[checkpoints.c.job_id, checkpoints.c.checkpoint_id,
                                checkpoints.c.kind],
                set_={k: row[k] for k in ("step", "path", "size_bytes", "create_time")}))

    def remove_checkpoint(self, job_id: str, checkpoint_id: str, kind: int) -> None:
        with mstore.writing(self.engine) as tx:
            self._fenced(tx, job_id)
            tx.execute(checkpoints.delete().where(checkpoints.c.job_id == job_id,
                                                  checkpoints.c.checkpoint_id == checkpoint_id,
                                                  checkpoints.c.kind == kind))

    def checkpoints(self, job_id: str, kind: int | None = None) -> list[trainer_pb2.Checkpoint]:
        stmt = sa.select(checkpoints).where(checkpoints.c.job_id == job_id)
        if kind is not None:
            stmt = stmt.where(checkpoints.c.kind == kind)
        stmt = stmt.order_by(checkpoints.c.step, checkpoints.c.kind)
        with mstore.reading(self.engine) as conn:
            rows = conn.execute(stmt).mappings().all()
        return [trainer_pb2.Checkpoint(
            checkpoint_id=r["checkpoint_id"], step=r["step"], kind=r["kind"], path=r["path"],
            size_bytes=r["size_bytes"], create_time=timestamp(r["create_time"]))
            for r in rows]

    def latest_full_checkpoint(self, job_id: str) -> trainer_pb2.Checkpoint | None:
        """The newest full-state checkpoint whose file still exists."""
        for ckpt in reversed(self.checkpoints(job_id, trainer_pb2.CHECKPOINT_KIND_FULL_STATE)):
            if Path(ckpt.path).exists():
                return ckpt
        return None

    # -- datasets

    def dataset_exists(self, dataset_id: str) -> bool:
        with mstore.reading(self.engine) as conn:
            return conn.execute(
                sa.select(datasets.c.id).where(datasets.c.id == dataset_id)).first() is not None

    def add_dataset_images(self, dataset_id: str, create_name: str | None,
                           images: list[tuple[trainer_pb2.DatasetImage, str]]) -> None:
        """Add pictures (and, with `create_name`, the dataset itself) in one transaction.
        A taken dataset id or file name raises DuplicateRow, whatever the database (uploads
        answer ALREADY_EXISTS to it)."""
        try:
            with mstore.writing(self.engine) as tx:
                if create_name is not None:
                    tx.execute(datasets.insert().values(id=dataset_id, name=create_name,
                                                        create_time=time.time()))
                if images:
                    tx.execute(dataset_images.insert(), [
                        {"dataset_id": dataset_id, "filename": img.filename,
                         "width": img.width, "height": img.height,
                         "size_bytes": img.size_bytes, "sha256": img.sha256,
                         "caption": caption} for img, caption in images])
        except sa.exc.IntegrityError as err:
            raise DuplicateRow(str(err.orig)) from err

    def dataset_images(self, dataset_id: str) -> list[tuple[trainer_pb2.DatasetImage, str]]:
        stmt = (sa.select(dataset_images).where(dataset_images.c.dataset_id == dataset_id)
                .order_by(dataset_images.c.filename))
        with mstore.reading(self.engine) as conn:
            rows = conn.execute(stmt).mappings().all()
        return [(trainer_pb2.DatasetImage(filename=r["filename"], width=r["width"],
                                          height=r["height"], size_bytes=r["size_bytes"],
                                          sha256=r["sha256"]), r["caption"]) for r in rows]

    # -- observations (worker -> service metrics)

    def observe(self, job_id: str, items: Iterable[tuple[str, str, float]]) -> None:
        """Append (name, label, value) observations in one transaction."""
        now = time.time()
        rows = [{"time": now, "job_id": job_id, "name": name, "label": label,
                 "value": float(value)} for name, label, value in items]
        if rows:
            with mstore.writing(self.engine) as tx:
                tx.execute(observations.insert(), rows)

    def observations_after(self, cursor: int, limit: int = 10_000
                           ) -> list[tuple[int, str, str, float]]:
        """(id, name, label, value) of observations newer than `cursor`, oldest first."""
        o = observations.c
        stmt = (sa.select(o.id, o.name, o.label, o.value).where(o.id > cursor)
                .order_by(o.id).limit(limit))
        with mstore.reading(self.engine) as conn:
            return [(int(r[0]), r[1], r[2], float(r[3])) for r in conn.execute(stmt)]

    def last_observation_id(self) -> int:
        stmt = sa.select(sa.func.coalesce(sa.func.max(observations.c.id), 0))
        with mstore.reading(self.engine) as conn:
            return int(conn.execute(stmt).scalar_one())

    def prune_observations(self, older_than: float) -> None:
        with mstore.writing(self.engine) as tx:
            tx.execute(observations.delete().where(observations.c.time < older_than))
