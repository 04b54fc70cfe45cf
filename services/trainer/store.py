"""The trainer's job store: jobs, their events, checkpoints and uploaded datasets in SQLite.

Shared by the service process (queue, RPCs) and the worker processes (progress, events): SQLite
in WAL mode lets several processes write; each write is a short transaction. Events carry a
per-job monotonic sequence number so that watchers can follow a job by polling `events_after`.
No torch here: the service imports this module.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from boothstudio.shared.storage import SQLiteDatabase
from boothstudio.v1 import common_pb2, trainer_pb2

JobState = trainer_pb2.TrainingJobState
TERMINAL = frozenset({JobState.TRAINING_JOB_STATE_SUCCEEDED, JobState.TRAINING_JOB_STATE_FAILED,
                      JobState.TRAINING_JOB_STATE_CANCELLED})
ACTIVE = frozenset({JobState.TRAINING_JOB_STATE_PREPARING, JobState.TRAINING_JOB_STATE_RUNNING,
                    JobState.TRAINING_JOB_STATE_EXPORTING, JobState.TRAINING_JOB_STATE_CANCELLING})

MIGRATIONS = [
    """
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
    """,
    # Domain observations written by workers (step seconds, checkpoint seconds, class images,
    # peak memory) for the service process to turn into Prometheus metrics. AUTOINCREMENT: ids
    # are never reused, so a reader's cursor never skips a row after deletions.
    """
    CREATE TABLE observations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        value REAL NOT NULL
    );
    """,
]


def timestamp(t: float | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


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

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> JobRow:
        cfg = trainer_pb2.DreamBoothConfig.FromString(r["config"])
        metrics = (trainer_pb2.TrainingMetrics.FromString(r["last_metrics"])
                   if r["last_metrics"] else None)
        return cls(r["id"], r["display_name"], r["state"], cfg, json.loads(r["base_model"]),
                   r["step"], r["total_steps"], r["failure_reason"], r["failure_message"],
                   r["create_time"], r["start_time"], r["end_time"], r["update_time"],
                   r["queued_at"], r["output_model_id"], r["trigger_phrase"], metrics,
                   json.loads(r["warnings"]), r["attempts"], r["instance_image_count"],
                   Path(r["job_dir"]), r["worker_pid"])

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class JobStore:
    """Typed access to the trainer database (one per process)."""

    def __init__(self, path: Path) -> None:
        self.db = SQLiteDatabase(path, MIGRATIONS)
        self.db.migrate()

    def close(self) -> None:
        self.db.close()

    # -- jobs

    def insert_job(self, job: JobRow) -> None:
        """Insert a new job with its CREATED event and its warnings, in one transaction."""
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO jobs(id, display_name, state, config, base_model, step, total_steps,"
                " create_time, update_time, queued_at, trigger_phrase, warnings,"
                " instance_image_count, job_dir) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.display_name, job.state, job.config.SerializeToString(),
                 json.dumps(job.base_model), job.step, job.total_steps, job.create_time,
                 job.update_time, job.queued_at, job.trigger_phrase, json.dumps(job.warnings),
                 job.instance_image_count, str(job.job_dir)))
            self._append_event(tx, job.id, job.create_time,
                               state_changed=trainer_pb2.TrainingStateChanged(
                                   previous_state=JobState.TRAINING_JOB_STATE_UNSPECIFIED,
                                   state=job.state, reason="CREATED"))  # type: ignore[arg-type]
            for w in job.warnings:
                self._append_event(tx, job.id, job.create_time,
                                   warning=common_pb2.Warning(**w))

    def get(self, job_id: str) -> JobRow | None:
        row = self.db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return JobRow.from_row(row) if row else None

    def list(self, states: Iterable[int] = (), base_model_id: str = "") -> list[JobRow]:
        sql, params = "SELECT * FROM jobs", []
        where = []
        states = list(states)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += states
        if base_model_id:
            where.append("json_extract(base_model, '$.id') = ?")
            params.append(base_model_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY create_time DESC, id DESC"
        return [JobRow.from_row(r) for r in self.db.query(sql, params)]

    def queued(self) -> list[JobRow]:
        return [JobRow.from_row(r) for r in self.db.query(
            "SELECT * FROM jobs WHERE state = ? ORDER BY queued_at, id",
            (JobState.TRAINING_JOB_STATE_QUEUED,))]

    @staticmethod
    def _columns(fields: dict[str, Any]) -> tuple[str, list[Any]]:
        """"a = ?, b = ?" and its values; protobuf values serialized, dicts/lists as JSON."""
        cols, params = [], []
        for k, v in fields.items():
            if hasattr(v, "SerializeToString"):
                v = v.SerializeToString()
            elif isinstance(v, dict | list):
                v = json.dumps(v)
            elif isinstance(v, Path):
                v = str(v)
            cols.append(f"{k} = ?")
            params.append(v)
        return ", ".join(cols), params

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns; protobuf values are serialized, dicts/lists become JSON."""
        if not fields:
            return
        fields.setdefault("update_time", time.time())
        cols, params = self._columns(fields)
        self.db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*params, job_id])

    def add_warning(self, job_id: str, reason: str, message: str, field: str = "") -> None:
        job = self.get(job_id)
        if job is None:
            return
        warnings = [*job.warnings, {"reason": reason, "message": message, "field": field}]
        self.update(job_id, warnings=warnings)
        self.event(job_id, warning=common_pb2.Warning(reason=reason, message=message,
                                                      field=field))

    def set_state(self, job_id: str, state: int, reason: str = "", message: str = "",
                  *, expect: Iterable[int] | None = None, **fields: Any) -> int | None:
        """Change the state (and any columns) and append its state_changed event, atomically.

        With `expect`, a compare-and-set: the change happens only while the job is in one of
        those states (the service and a worker both change states; neither may overwrite a
        change it has not seen). Returns the previous state, or None when the job does not
        exist or was not in `expect`.
        """
        now = time.time()
        if state in TERMINAL:
            fields.setdefault("end_time", now)
        if state == JobState.TRAINING_JOB_STATE_FAILED:
            fields.setdefault("failure_reason", reason)
            fields.setdefault("failure_message", message)
        fields.setdefault("update_time", now)
        cols, params = self._columns(dict(fields, state=state))
        with self.db.transaction() as tx:
            row = tx.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            previous = int(row["state"])
            if expect is not None and previous not in set(expect):
                return None
            tx.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*params, job_id])
            self._append_event(tx, job_id, now, state_changed=trainer_pb2.TrainingStateChanged(
                previous_state=previous, state=state, reason=reason, message=message))  # type: ignore[arg-type]
        return previous

    def count_by_state(self) -> dict[int, int]:
        return {int(r[0]): int(r[1]) for r in self.db.query(
            "SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def delete_job(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    # -- events

    def event(self, job_id: str, **event: Any) -> int:
        """Append one event (exactly one WatchTrainingJobResponse oneof field) and return its
        sequence number."""
        with self.db.transaction() as tx:
            return self._append_event(tx, job_id, time.time(), **event)

    @staticmethod
    def _append_event(tx: sqlite3.Connection, job_id: str, now: float, **event: Any) -> int:
        msg = trainer_pb2.WatchTrainingJobResponse(job_id=job_id, time=timestamp(now), **event)
        kind = next(iter(event))
        seq = int(tx.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?",
                             (job_id,)).fetchone()[0])
        msg.sequence = seq
        tx.execute("INSERT INTO events(job_id, seq, time, kind, payload) VALUES (?,?,?,?,?)",
                   (job_id, seq, now, kind, msg.SerializeToString()))
        return seq

    def events_after(self, job_id: str, seq: int, limit: int = 500,
                     kinds: Iterable[str] | None = None
                     ) -> list[trainer_pb2.WatchTrainingJobResponse]:
        sql = "SELECT payload FROM events WHERE job_id = ? AND seq > ?"
        params: list[Any] = [job_id, seq]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({','.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [trainer_pb2.WatchTrainingJobResponse.FromString(r["payload"])
                for r in self.db.query(sql, params)]

    def last_event_seq(self, job_id: str) -> int:
        row = self.db.query_one("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?",
                                (job_id,))
        return int(row[0]) if row else 0

    def last_event_of_kind(self, job_id: str, kind: str
                           ) -> trainer_pb2.WatchTrainingJobResponse | None:
        row = self.db.query_one(
            "SELECT payload FROM events WHERE job_id = ? AND kind = ? ORDER BY seq DESC LIMIT 1",
            (job_id, kind))
        return trainer_pb2.WatchTrainingJobResponse.FromString(row["payload"]) if row else None

    # -- checkpoints

    def add_checkpoint(self, job_id: str, ckpt: trainer_pb2.Checkpoint) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO checkpoints(job_id, checkpoint_id, kind, step, path,"
            " size_bytes, create_time) VALUES (?,?,?,?,?,?,?)",
            (job_id, ckpt.checkpoint_id, ckpt.kind, ckpt.step, ckpt.path, ckpt.size_bytes,
             ckpt.create_time.ToNanoseconds() / 1e9))

    def remove_checkpoint(self, job_id: str, checkpoint_id: str, kind: int) -> None:
        self.db.execute("DELETE FROM checkpoints WHERE job_id = ? AND checkpoint_id = ?"
                        " AND kind = ?", (job_id, checkpoint_id, kind))

    def checkpoints(self, job_id: str, kind: int | None = None) -> list[trainer_pb2.Checkpoint]:
        sql = "SELECT * FROM checkpoints WHERE job_id = ?"
        params: list[Any] = [job_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self.db.query(sql + " ORDER BY step, kind", params)
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
        return self.db.query_one("SELECT 1 FROM datasets WHERE id = ?", (dataset_id,)) is not None

    def add_dataset_images(self, dataset_id: str, create_name: str | None,
                           images: list[tuple[trainer_pb2.DatasetImage, str]]) -> None:
        """Add pictures (and, with `create_name`, the dataset itself) in one transaction."""
        with self.db.transaction() as tx:
            if create_name is not None:
                tx.execute("INSERT INTO datasets(id, name, create_time) VALUES (?,?,?)",
                           (dataset_id, create_name, time.time()))
            tx.executemany(
                "INSERT INTO dataset_images(dataset_id, filename, width, height, size_bytes,"
                " sha256, caption) VALUES (?,?,?,?,?,?,?)",
                [(dataset_id, img.filename, img.width, img.height, img.size_bytes, img.sha256,
                  caption) for img, caption in images])

    # -- observations (worker -> service metrics)

    def observe(self, job_id: str, items: Iterable[tuple[str, str, float]]) -> None:
        """Append (name, label, value) observations in one transaction."""
        now = time.time()
        rows = [(now, job_id, name, label, float(value)) for name, label, value in items]
        if rows:
            with self.db.transaction() as tx:
                tx.executemany("INSERT INTO observations(time, job_id, name, label, value)"
                               " VALUES (?,?,?,?,?)", rows)

    def observations_after(self, cursor: int, limit: int = 10_000
                           ) -> list[tuple[int, str, str, float]]:
        """(id, name, label, value) of observations newer than `cursor`, oldest first."""
        return [(int(r[0]), r[1], r[2], float(r[3])) for r in self.db.query(
            "SELECT id, name, label, value FROM observations WHERE id > ? ORDER BY id LIMIT ?",
            (cursor, limit))]

    def last_observation_id(self) -> int:
        row = self.db.query_one("SELECT COALESCE(MAX(id), 0) FROM observations")
        return int(row[0]) if row else 0

    def prune_observations(self, older_than: float) -> None:
        self.db.execute("DELETE FROM observations WHERE time < ?", (older_than,))

    def dataset_images(self, dataset_id: str) -> list[tuple[trainer_pb2.DatasetImage, str]]:
        rows = self.db.query("SELECT * FROM dataset_images WHERE dataset_id = ? ORDER BY filename",
                             (dataset_id,))
        return [(trainer_pb2.DatasetImage(filename=r["filename"], width=r["width"],
                                          height=r["height"], size_bytes=r["size_bytes"],
                                          sha256=r["sha256"]), r["caption"]) for r in rows]
