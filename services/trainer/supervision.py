"""Worker processes: one per running job, started from the queue, reaped, restarted on a crash.

- At most `max_running` workers; the queue is read again whenever something may have changed
  (wake) and at least once a second.
- A worker that dies (kill -9, OOM, segfault) is restarted from the job's last checkpoint up to
  `max_attempts` times; then the job is FAILED and ResumeTrainingJob continues it.
- At start, jobs left active by a killed service are re-queued (their stale workers killed).
- SIGTERM (drain) asks running workers to checkpoint and stop; their jobs are re-queued for the
  next start.

Every state change is a compare-and-set in the job store, so a cancel or delete that lands
first is never overwritten. Queued jobs are claimed with a row lock that other replicas skip
(JobStore.claim_queued), so Trainer replicas sharing one database never start the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from boothstudio.services.trainer.metrics import TrainerMetrics
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.store import ACTIVE, JobRow, JobStore
from boothstudio.services.trainer.worker import (
    STOP_FILE,
    WORKER_DATABASE_URL_ENV,
    worker_storage_env,
)
from boothstudio.shared.server import ServiceContext
from boothstudio.shared.storage import atomic_write_text
from boothstudio.v1 import trainer_pb2


class Supervisor:
    def __init__(self, ctx: ServiceContext, store: JobStore, metrics: TrainerMetrics,
                 settings: TrainerSettings, catalog_address: str) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics
        self.service_dir = ctx.config.service_dir
        self.catalog_address = catalog_address
        self.max_running = settings.max_running
        self.max_attempts = settings.max_attempts
        self.worker_threads = settings.worker_threads
        self.sample_steps = settings.sample_steps
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.crashes: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._reapers: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    def recover(self) -> None:
        """Jobs left active by a killed service: re-queue them (or finish a pending cancel)."""
        for job in self.store.list(states=ACTIVE):
            self._kill_stale_worker(job)
            if job.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
                self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
                                     "CANCELLED", "cancelled while the service was down")
                continue
            ckpt = self.store.latest_full_checkpoint(job.id)
            where = f"step {ckpt.step}" if ckpt else "the start"
            self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_QUEUED, "RECOVERED",
                                 f"service restarted; resuming from {where}")
            self.metrics.restarts.labels("service_restart").inc()
            self.store.add_warning(job.id, "RECOVERED",
                                   f"the service stopped while the job ran; resumed from {where}")

    def _kill_stale_worker(self, job: JobRow) -> None:
        pid = job.worker_pid
        if not pid:
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        # only that job's worker: the pid may have been reused by another process since
        if b"boothstudio.services.trainer.worker" in cmdline and job.id.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._schedule_loop())

    def wake(self) -> None:
        """Read the queue again now (a job was queued, or a worker exited)."""
        self._wake.set()

    async def drain(self, grace: float) -> None:
        """SIGTERM: ask running workers to checkpoint and stop; they re-queue their jobs."""
        for job_id in list(self.workers):
            job = self.store.get(job_id)
            if job is not None and job.state != trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
                with contextlib.suppress(OSError):
                    atomic_write_text(job.job_dir / STOP_FILE, "drain")
        deadline = time.monotonic() + max(0.0, grace - 0.5)
        while self.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for proc in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    # ------------------------------------------------------------------ one job's worker

    def has_worker(self, job_id: str) -> bool:
        return job_id in self.workers

    def forget_crashes(self, job_id: str) -> None:
        """A resumed job gets `max_attempts` starts again."""
        self.crashes.pop(job_id, None)

    async def kill(self, job_id: str) -> None:
        """Kill the job's worker, if it has one, and wait (10 s at most) for it to exit."""
        proc = self.workers.get(job_id)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)

    # ------------------------------------------------------------------ scheduling

    async def _schedule_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            if self.ctx.draining.is_set():
                continue
            try:
                # Claim jobs first (QUEUED -> PREPARING, row-locked, skipping rows another
                # replica is claiming): a cancel or delete that came first wins, and two
                # replicas on one database never start the same job.
                claimed = await asyncio.to_thread(
                    self.store.claim_queued, self.max_running - len(self.workers),
                    list(self.workers))
                for job in claimed:
                    await self._start_worker(job)
            except Exception:
                self.ctx.logger.exception("scheduler error")

    async def _start_worker(self, job: JobRow) -> None:
        """Start the worker of a job this replica claimed (store.claim_queued)."""
        (job.job_dir / STOP_FILE).unlink(missing_ok=True)
        env = dict(os.environ)
        if self.ctx.config.service_api_key:
            env["BOOTHSTUDIO_SERVICE_API_KEY"] = self.ctx.config.service_api_key
        # the worker opens the service's metadata store (empty: the SQLite file in
        # --service-dir); in the environment, not the command line, where a password would show
        env[WORKER_DATABASE_URL_ENV] = self.ctx.config.database_url
        env.update(worker_storage_env(self.ctx.config))
        args = [sys.executable, "-m", "boothstudio.services.trainer.worker",
                "--service-dir", str(self.service_dir),
                "--job-id", job.id, "--catalog", self.catalog_address,
                "--sample-steps", str(self.sample_steps)]
        if self.worker_threads:
            args += ["--threads", str(self.worker_threads)]
        try:
            log = open(job.job_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=log, stderr=log, env=env, start_new_session=True)
            finally:
                log.close()
        except OSError as exc:
            self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_FAILED,
                                 "WORKER_START_FAILED", f"could not start a worker: {exc}",
                                 expect={trainer_pb2.TRAINING_JOB_STATE_PREPARING})
            return
        self.workers[job.id] = proc
        self.store.update(job.id, worker_pid=proc.pid)
        self.ctx.logger.info("worker started", extra={"job_id": job.id, "pid": proc.pid})
        task = asyncio.create_task(self._reap(job.id, proc))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _reap(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        self.workers.pop(job_id, None)
        self.ctx.logger.info("worker exited", extra={"job_id": job_id, "returncode": rc})
        # Each change is a compare-and-set on the state read just before; when a cancel or
        # delete lands in between, read again and decide on what is there now.
        for _ in range(5):
            job = self.store.get(job_id)
            if job is None or self._settle(job, rc):
                break
        self._wake.set()

    def _settle(self, job: JobRow, rc: int) -> bool:
        """The job's state after its worker exited with `rc`; False when it changed under us."""
        if job.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
            return self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
                                        "CANCELLED", f"worker exited with code {rc}",
                                        expect={job.state}) is not None
        if job.state not in ACTIVE or self.ctx.draining.is_set():
            return True
        crashes = self.crashes.get(job.id, 0) + 1
        ckpt = self.store.latest_full_checkpoint(job.id)
        where = f"step {ckpt.step}" if ckpt else "the start"
        if crashes < self.max_attempts:
            if self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_QUEUED,
                                    "WORKER_CRASHED",
                                    f"worker exited with code {rc}; restarting from {where}",
                                    expect={job.state}, queued_at=0.0) is None:
                return False
            self.metrics.restarts.labels("crash").inc()
            self.store.add_warning(job.id, "WORKER_CRASHED",
                                   f"worker exited with code {rc}; restarted from {where}")
        elif self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_FAILED,
                                  "WORKER_CRASHED",
                                  f"worker exited with code {rc} {crashes} times; "
                                  f"ResumeTrainingJob continues from {where}",
                                  expect={job.state}) is None:
            return False
        self.crashes[job.id] = crashes
        return True
