"""Worker processes: one per running job, started from the queue, reaped, restarted on a crash.

- At most `max_running` workers; the queue is read again whenever something may have changed
  (wake) and at least once a second.
- A worker that dies (kill -9, OOM, segfault) is restarted from the job's last checkpoint up to
  `max_attempts` times (counted in the job's row, so across replicas); then the job is FAILED
  and ResumeTrainingJob continues it.
- Several Trainer replicas share one queue under leases (store.py): claiming a job leases it to
  this replica (`replica_id`); the supervisor renews the leases of the jobs it runs every third
  of `lease_seconds` in one UPDATE, and reads their states every second. A job whose lease is
  gone (another replica took it over after this one stalled longer than the lease), that was
  deleted, or that ended has its local worker killed (fencing; the worker's own writes are
  fenced in the store too); a job another replica moved to CANCELLING gets its STOP file here,
  on the disk its worker reads. A replica that dies leaves its jobs to the others once their
  leases expire; they resume them from their last checkpoints.
- At start, the jobs this replica id still holds (a restart of the same replica; jobs from
  before leases have no owner) are re-queued at once, reserved for this replica for one lease
  (so it, not another replica, takes them back), their stale workers killed; other replicas'
  jobs are left alone. `replica_id` defaults to host name + ':' + port, stable across
  restarts of the same service on the same host (set it where those change, e.g. a pod name).
- SIGTERM (drain) asks running workers to checkpoint and stop; their jobs are re-queued for the
  next start (leases are renewed until they are out).

With `ray_address` set, a claimed job runs as a Ray Train run on the cluster instead of a
local worker (ray_engine.py); the supervisor treats the run like a worker (wait, kill, lease
renewal, crash accounting). Runs outlive the Trainer: at start, a job of this replica whose run
is still on the cluster is reattached (waited on again, its lease renewed), not started again;
SIGTERM leaves runs going for the restarted service to reattach.

Every state change is a compare-and-set in the job store (on the state, and on this replica's
lease where another replica may have taken the job), so a cancel or delete that lands first is
never overwritten, and a replica that lost a job never changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boothstudio.services.trainer.metrics import TrainerMetrics
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.store import ACTIVE, WORKER_LEASE_ENV, JobRow, JobStore, Lease
from boothstudio.services.trainer.worker import (
    STOP_FILE,
    WORKER_DATABASE_URL_ENV,
    worker_storage_env,
)
from boothstudio.shared.server import ServiceContext
from boothstudio.shared.storage import atomic_write_text
from boothstudio.v1 import trainer_pb2

if TYPE_CHECKING:
    from boothstudio.services.trainer.ray_engine import RayEngine, RayRun


class Supervisor:
    def __init__(self, ctx: ServiceContext, store: JobStore, metrics: TrainerMetrics,
                 settings: TrainerSettings, catalog_address: str, replica_id: str) -> None:
        self.ctx = ctx
        self.store = store
        self.metrics = metrics
        self.service_dir = ctx.config.service_dir
        self.catalog_address = catalog_address
        self.replica_id = replica_id
        self.lease_seconds = settings.lease_seconds
        self.max_running = settings.max_running
        self.max_attempts = settings.max_attempts
        self.worker_threads = settings.worker_threads
        self.sample_steps = settings.sample_steps
        self.max_failures = settings.max_attempts - 1  # Ray's retries of a run's group
        self.ray: RayEngine | None = None
        if settings.ray_address:
            from boothstudio.services.trainer.ray_engine import RayEngine

            self.ray = RayEngine(settings.ray_address)
        #: job id -> its local worker process, or its run on the Ray cluster
        self.workers: dict[str, asyncio.subprocess.Process | RayRun] = {}
        self._reattached: list[tuple[JobRow, RayRun]] = []
        self.leases: dict[str, Lease] = {}  # job id -> the lease its worker runs under
        self._stops_sent: set[str] = set()  # jobs whose worker got a STOP for a remote cancel
        self._renewed_at = time.monotonic()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._reapers: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    def recover(self) -> None:
        """Jobs this replica held when it was killed: re-queue them at once (or finish a pending
        cancel); with Ray, a job whose run is still on the cluster is reattached instead.
        Jobs of other replicas are theirs until their leases expire."""
        for job in self.store.list(states=ACTIVE):
            if job.lease_owner not in (self.replica_id, ""):  # "": active before leases
                continue
            if self.ray is not None and self._reattach(job):
                continue
            self._kill_stale_worker(job)
            if job.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
                self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
                                     "CANCELLED", "cancelled while the service was down",
                                     expect={job.state}, lease=job.lease)
                continue
            ckpt = self.store.latest_full_checkpoint(job.id)
            where = f"step {ckpt.step}" if ckpt else "the start"
            # queued for this replica only: its scheduler claims it at once, no other replica
            # does before the reservation (one lease long) expires
            if self.store.reserve(job.id, job.lease, self.replica_id, "RECOVERED",
                                  f"service restarted; resuming from {where}",
                                  self.lease_seconds) is None:
                continue  # taken over meanwhile
            self.metrics.restarts.labels("service_restart").inc()
            self.store.add_warning(job.id, "RECOVERED",
                                   f"the service stopped while the job ran; resumed from {where}")

    def _reattach(self, job: JobRow) -> bool:
        """Wait again on the Ray run of the job's claim when it is still on the cluster (it kept
        training, and writing to the job store, while this service was down)."""
        assert self.ray is not None
        run = self.ray.find(job.id, job.attempts)
        if run is None or self.store.hold_leases(
                {job.id: job.lease}, renew_seconds=self.lease_seconds).get(job.id) is None:
            return False
        self._reattached.append((job, run))
        self.store.add_warning(job.id, "REATTACHED", "the service restarted while the job ran "
                               "on Ray; it waits on the same run again")
        return True

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
        for job, run in self._reattached:
            self._watch(job, run)
            self.ctx.logger.info("Ray run reattached", extra={"job_id": job.id})
        self._reattached.clear()
        self._loop_task = asyncio.create_task(self._schedule_loop())

    def wake(self) -> None:
        """Read the queue again now (a job was queued, or a worker exited)."""
        self._wake.set()

    def job_dir(self, job_id: str) -> Path:
        """The job's folder on this host: its worker's log and STOP file live there."""
        return self.service_dir / "jobs" / job_id

    def request_stop(self, job_id: str, why: str) -> None:
        """Ask the job's worker here to checkpoint and stop at its next step ("cancel" or
        "drain")."""
        atomic_write_text(self.job_dir(job_id) / STOP_FILE, why)

    def _local_workers(self) -> list[str]:
        return [job_id for job_id, w in self.workers.items()
                if isinstance(w, asyncio.subprocess.Process)]

    async def drain(self, grace: float) -> None:
        """SIGTERM: ask running local workers to checkpoint and stop; they re-queue their jobs.
        Ray runs go on: the restarted service reattaches them (or, after the lease, another
        replica takes them over)."""
        for job_id in self._local_workers():
            job = self.store.get(job_id)
            if job is not None and job.state != trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
                with contextlib.suppress(OSError):
                    self.request_stop(job_id, "drain")
        deadline = time.monotonic() + max(0.0, grace - 0.5)
        while self._local_workers() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for job_id in self._local_workers():  # Ray runs outlive the service
            with contextlib.suppress(ProcessLookupError):
                self.workers[job_id].kill()

    # ------------------------------------------------------------------ one job's worker

    def has_worker(self, job_id: str) -> bool:
        return job_id in self.workers

    async def kill(self, job_id: str) -> None:
        """Kill the job's local worker, if it has one, and wait (10 s at most) for it to
        exit."""
        proc = self.workers.get(job_id)
        if not isinstance(proc, asyncio.subprocess.Process):
            return  # none, or a Ray run: it stops by itself (ray_engine.RayRun)
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
            try:
                # leases are held while draining too: the workers are still checkpointing
                await self._tend_leases()
                if self.ctx.draining.is_set():
                    continue
                # Claim jobs first (QUEUED -> PREPARING, or a dead replica's job, row-locked,
                # skipping rows another replica is claiming): a cancel or delete that came
                # first wins, and two replicas on one database never start the same job.
                claimed = await asyncio.to_thread(
                    self.store.claim_queued, self.max_running - len(self.workers),
                    list(self.workers), owner=self.replica_id,
                    lease_seconds=self.lease_seconds)
                for job in claimed:
                    if job.taken_over:
                        self.metrics.restarts.labels("takeover").inc()
                    await self._start_worker(job)
            except Exception:
                self.ctx.logger.exception("scheduler error")

    async def _tend_leases(self) -> None:
        """Renew the running jobs' leases when a third of the lease has passed, else read their
        states (a second at most behind the database): stop the workers of jobs no longer ours,
        and pass a cancel made on another replica to our worker."""
        now = time.monotonic()
        renew = now - self._renewed_at >= self.lease_seconds / 3
        if not self.leases:
            self._renewed_at = now
            return
        leases = dict(self.leases)
        held = await asyncio.to_thread(self.store.hold_leases, leases,
                                       renew_seconds=self.lease_seconds if renew else None)
        if renew:
            self._renewed_at = now
        for job_id, lease in leases.items():
            state = held.get(job_id)
            if self.leases.get(job_id) != lease:
                continue  # its worker exited meanwhile
            if state is None:
                # Taken over (this replica stalled past its lease), deleted, or ended by its
                # worker (which is exiting anyway): fence it off.
                self.ctx.logger.warning("job no longer held; stopping its worker",
                                        extra={"job_id": job_id})
                await self.kill(job_id)
            elif (state == trainer_pb2.TRAINING_JOB_STATE_CANCELLING
                  and job_id not in self._stops_sent):
                self._stops_sent.add(job_id)
                await asyncio.to_thread(self.request_stop, job_id, "cancel")

    def _worker_env(self, job: JobRow) -> dict[str, str]:
        """What a job's worker (or Ray rank) needs to reach the service's stores, fenced on
        the lease the job was claimed under; in the environment, not on a command line, where
        a password would show."""
        env = {WORKER_DATABASE_URL_ENV: self.ctx.config.database_url,
               WORKER_LEASE_ENV: job.lease.to_env(), **worker_storage_env(self.ctx.config)}
        if self.ctx.config.service_api_key:
            env["BOOTHSTUDIO_SERVICE_API_KEY"] = self.ctx.config.service_api_key
        return env

    async def _start_worker(self, job: JobRow) -> None:
        """Start the worker (or the Ray run) of a job this replica claimed
        (store.claim_queued)."""
        if self.ray is not None:
            await self._submit_to_ray(job)
            return
        job_dir = self.job_dir(job.id)
        env = {**os.environ, **self._worker_env(job)}
        args = [sys.executable, "-m", "boothstudio.services.trainer.worker",
                "--service-dir", str(self.service_dir),
                "--job-id", job.id, "--catalog", self.catalog_address,
                "--sample-steps", str(self.sample_steps)]
        if self.worker_threads:
            args += ["--threads", str(self.worker_threads)]
        try:
            job_dir.mkdir(parents=True, exist_ok=True)  # a job created on another host
            (job_dir / STOP_FILE).unlink(missing_ok=True)
            log = open(job_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=log, stderr=log, env=env, start_new_session=True)
            finally:
                log.close()
        except OSError as exc:
            self._start_failed(job, f"could not start a worker: {exc}")
            return
        self.store.update(job.id, worker_pid=proc.pid)
        self.ctx.logger.info("worker started", extra={"job_id": job.id, "pid": proc.pid,
                                                      "attempt": job.attempts})
        self._watch(job, proc)

    async def _submit_to_ray(self, job: JobRow) -> None:
        from boothstudio.services.trainer.ray_engine import run_params

        assert self.ray is not None
        params = run_params(job.id, job.lease.to_env(), job.config,
                            service_dir=self.service_dir, catalog=self.catalog_address,
                            sample_steps=self.sample_steps, threads=self.worker_threads,
                            max_failures=self.max_failures, env=self._worker_env(job))
        try:
            self.job_dir(job.id).mkdir(parents=True, exist_ok=True)
            (self.job_dir(job.id) / STOP_FILE).unlink(missing_ok=True)
            run = await asyncio.to_thread(self.ray.submit, params)
        except Exception as exc:  # the cluster is unreachable, or refused the actor
            self.ctx.logger.exception("Ray submit failed", extra={"job_id": job.id})
            self._start_failed(job, f"could not submit to Ray at {self.ray.address}: {exc}",
                               "RAY_SUBMIT_FAILED")
            return
        self.ctx.logger.info("Ray run submitted", extra={
            "job_id": job.id, "attempt": job.attempts, "workers": params.num_workers})
        self._watch(job, run)

    def _start_failed(self, job: JobRow, message: str,
                      reason: str = "WORKER_START_FAILED") -> None:
        self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_FAILED, reason, message,
                             expect={trainer_pb2.TRAINING_JOB_STATE_PREPARING}, lease=job.lease)

    def _watch(self, job: JobRow, worker: asyncio.subprocess.Process | RayRun) -> None:
        """Hold the job's lease for its worker and settle the job when the worker ends."""
        self.workers[job.id] = worker
        self.leases[job.id] = job.lease
        self._stops_sent.discard(job.id)
        task = asyncio.create_task(self._reap(job.id, worker))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _reap(self, job_id: str, proc: asyncio.subprocess.Process | RayRun) -> None:
        rc = await proc.wait()
        self.workers.pop(job_id, None)
        lease = self.leases.pop(job_id)
        self.ctx.logger.info("worker exited", extra={"job_id": job_id, "returncode": rc})
        # Each change is a compare-and-set on the state read just before; when a cancel or
        # delete lands in between, read again and decide on what is there now.
        for _ in range(5):
            job = await asyncio.to_thread(self.store.get, job_id)
            if job is None or await asyncio.to_thread(self._settle, job, lease, rc):
                break
        self._wake.set()

    def _settle(self, job: JobRow, lease: Lease, rc: int) -> bool:
        """The job's state after its worker exited with `rc`; False when it changed under us."""
        if job.lease != lease:
            return True  # another replica (or a later claim of ours) runs it now
        if job.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLING:
            return self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_CANCELLED,
                                        "CANCELLED", f"worker exited with code {rc}",
                                        expect={job.state}, lease=lease) is not None
        if job.state not in ACTIVE or self.ctx.draining.is_set():
            return True
        crashes = job.crashes + 1
        ckpt = self.store.latest_full_checkpoint(job.id)
        where = f"step {ckpt.step}" if ckpt else "the start"
        if crashes < self.max_attempts:
            if self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_QUEUED,
                                    "WORKER_CRASHED",
                                    f"worker exited with code {rc}; restarting from {where}",
                                    expect={job.state}, lease=lease, queued_at=0.0,
                                    crashes=crashes) is None:
                return False
            self.metrics.restarts.labels("crash").inc()
            self.store.add_warning(job.id, "WORKER_CRASHED",
                                   f"worker exited with code {rc}; restarted from {where}")
        elif self.store.set_state(job.id, trainer_pb2.TRAINING_JOB_STATE_FAILED,
                                  "WORKER_CRASHED",
                                  f"worker exited with code {rc} {crashes} times; "
                                  f"ResumeTrainingJob continues from {where}",
                                  expect={job.state}, lease=lease, crashes=crashes) is None:
            return False
        return True
