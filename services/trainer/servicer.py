"""TrainerService: DreamBooth jobs in a bounded queue, each run by its own worker process.

The service holds no torch: it validates, stores and schedules. A job's life:

    QUEUED -> PREPARING -> RUNNING -> EXPORTING -> SUCCEEDED
                 \\       (any of these) -> CANCELLING -> CANCELLED (resumable) -> ResumeTrainingJob
                  \\-> FAILED (reason)                                        -> ResumeTrainingJob

State changes are compare-and-set in the job store: the service (cancel, crash handling) and the
worker (progress) never overwrite a change the other made first; an acknowledged cancel always
ends the job CANCELLED (a model registered during the export is removed again).
Domain metrics (services/trainer/metrics.py) are read from the store when /metrics is scraped.

Crash safety: a worker that dies (kill -9, OOM, segfault) is restarted from the job's last
checkpoint up to `max_attempts` times. Jobs found active when the service starts (it was killed)
are re-queued and resume from their last checkpoint by themselves. SIGTERM asks running workers
to checkpoint and stop; those jobs are re-queued for the next start.

Settings: services/trainer/settings.py (TrainerSettings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import REGISTRY

from boothstudio.services.trainer import uploads
from boothstudio.services.trainer.identifiers import Vocabulary
from boothstudio.services.trainer.metrics import TrainerMetrics
from boothstudio.services.trainer.options import Limits, resolve
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.store import ACTIVE, TERMINAL, JobRow, JobStore, timestamp
from boothstudio.services.trainer.worker import STOP_FILE
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from boothstudio.shared.ids import is_valid_id, new_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.server import ServiceContext, ServiceSpec
from boothstudio.shared.settings import load_settings
from boothstudio.shared.storage import atomic_write_text
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, trainer_pb2, trainer_pb2_grpc

DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
S = trainer_pb2.TrainingJobState
FORMATS = {catalog_pb2.MODEL_FORMAT_DIFFUSERS: "diffusers",
           catalog_pb2.MODEL_FORMAT_HF_CACHE: "hf_cache",
           catalog_pb2.MODEL_FORMAT_SINGLE_FILE: "single_file"}
POLL_SECONDS = 0.2
KEEPALIVE_SECONDS = 10.0


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        settings = load_settings(TrainerSettings, cfg)
        self.dir = cfg.service_dir
        self.jobs_dir = self.dir / "jobs"
        self.datasets_dir = self.dir / "datasets"
        self.store = JobStore(self.dir / "trainer.sqlite3")
        self.max_running = settings.max_running
        self.queue_size = settings.queue_size
        self.max_attempts = settings.max_attempts
        self.worker_threads = settings.worker_threads
        self.sample_steps = settings.sample_steps
        self.limits = Limits(
            max_instance_images=settings.max_instance_images,
            max_image_bytes=settings.max_image_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            gpu_available=Path("/dev/nvidiactl").exists(),
            cpu_count=os.cpu_count() or 1)
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.crashes: dict[str, int] = {}
        self.wake = asyncio.Event()
        self.scheduler: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.catalog_address = cfg.address_of("catalog")
        self._catalog: catalog_pb2_grpc.CatalogServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self.metrics = TrainerMetrics(self.store)

    # ------------------------------------------------------------------ lifecycle

    @property
    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        if self._catalog is None:
            self._channel = aio_channel(self.catalog_address,
                                        api_key=self.ctx.config.service_api_key or None)
            self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        return self._catalog

    async def start(self) -> None:
        await asyncio.to_thread(self.recover)
        await asyncio.to_thread(self.metrics.prune)
        self.metrics.register()
        self.scheduler = asyncio.create_task(self._schedule_loop())

    def recover(self) -> None:
        """Jobs left active by a killed service: re-queue them (or finish a pending cancel)."""
        for job in self.store.list(states=ACTIVE):
            self._kill_stale_worker(job)
            if job.state == S.TRAINING_JOB_STATE_CANCELLING:
                self.store.set_state(job.id, S.TRAINING_JOB_STATE_CANCELLED, "CANCELLED",
                                     "cancelled while the service was down")
                continue
            ckpt = self.store.latest_full_checkpoint(job.id)
            where = f"step {ckpt.step}" if ckpt else "the start"
            self.store.set_state(job.id, S.TRAINING_JOB_STATE_QUEUED, "RECOVERED",
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
        if b"boothstudio.services.trainer.worker" in cmdline and job.id.encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def drain(self, grace: float) -> None:
        """SIGTERM: ask running workers to checkpoint and stop; they re-queue their jobs."""
        for job_id in list(self.workers):
            job = self.store.get(job_id)
            if job is not None and job.state != S.TRAINING_JOB_STATE_CANCELLING:
                with contextlib.suppress(OSError):
                    atomic_write_text(job.job_dir / STOP_FILE, "drain")
        deadline = time.monotonic() + max(0.0, grace - 0.5)
        while self.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.scheduler
        for proc in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if self._channel is not None:
            await self._channel.close()
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.metrics)
        self.store.close()

    # ------------------------------------------------------------------ scheduling

    async def _schedule_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1.0)
            self.wake.clear()
            if self.ctx.draining.is_set():
                continue
            try:
                queued = await asyncio.to_thread(self.store.queued)
                for job in queued:
                    if len(self.workers) >= self.max_running:
                        break
                    if job.id not in self.workers:
                        await self._start_worker(job)
            except Exception:
                self.ctx.logger.exception("scheduler error")

    async def _start_worker(self, job: JobRow) -> None:
        # Claim the job first (QUEUED -> PREPARING as one compare-and-set): a cancel or delete
        # that came after the queue read wins, and no worker starts for it.
        started = {} if job.start_time else {"start_time": time.time()}  # first start only
        if self.store.set_state(job.id, S.TRAINING_JOB_STATE_PREPARING, "STARTED",
                                f"attempt {job.attempts + 1}",
                                expect={S.TRAINING_JOB_STATE_QUEUED},
                                attempts=job.attempts + 1, failure_reason="",
                                failure_message="", **started) is None:
            return
        (job.job_dir / STOP_FILE).unlink(missing_ok=True)
        env = dict(os.environ)
        if self.ctx.config.service_api_key:
            env["BOOTHSTUDIO_SERVICE_API_KEY"] = self.ctx.config.service_api_key
        args = [sys.executable, "-m", "boothstudio.services.trainer.worker",
                "--service-dir", str(self.dir),
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
            self.store.set_state(job.id, S.TRAINING_JOB_STATE_FAILED, "WORKER_START_FAILED",
                                 f"could not start a worker: {exc}",
                                 expect={S.TRAINING_JOB_STATE_PREPARING})
            return
        self.workers[job.id] = proc
        self.store.update(job.id, worker_pid=proc.pid)
        self.ctx.logger.info("worker started", extra={"job_id": job.id, "pid": proc.pid})
        task = asyncio.create_task(self._reap(job.id, proc))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
        self.wake.set()

    def _settle(self, job: JobRow, rc: int) -> bool:
        """The job's state after its worker exited with `rc`; False when it changed under us."""
        if job.state == S.TRAINING_JOB_STATE_CANCELLING:
            return self.store.set_state(job.id, S.TRAINING_JOB_STATE_CANCELLED, "CANCELLED",
                                        f"worker exited with code {rc}",
                                        expect={job.state}) is not None
        if job.state not in ACTIVE or self.ctx.draining.is_set():
            return True
        crashes = self.crashes.get(job.id, 0) + 1
        ckpt = self.store.latest_full_checkpoint(job.id)
        where = f"step {ckpt.step}" if ckpt else "the start"
        if crashes < self.max_attempts:
            if self.store.set_state(job.id, S.TRAINING_JOB_STATE_QUEUED, "WORKER_CRASHED",
                                    f"worker exited with code {rc}; restarting from {where}",
                                    expect={job.state}, queued_at=0.0) is None:
                return False
            self.metrics.restarts.labels("crash").inc()
            self.store.add_warning(job.id, "WORKER_CRASHED",
                                   f"worker exited with code {rc}; restarted from {where}")
        elif self.store.set_state(job.id, S.TRAINING_JOB_STATE_FAILED, "WORKER_CRASHED",
                                  f"worker exited with code {rc} {crashes} times; "
                                  f"ResumeTrainingJob continues from {where}",
                                  expect={job.state}) is None:
            return False
        self.crashes[job.id] = crashes
        return True

    # ------------------------------------------------------------------ views

    def to_proto(self, job: JobRow, queued: list[str] | None = None) -> trainer_pb2.TrainingJob:
        t = trainer_pb2.TrainingJob(
            job_id=job.id, display_name=job.display_name, state=job.state,  # type: ignore[arg-type]
            config=job.config, step=job.step, total_steps=job.total_steps,
            failure_reason=job.failure_reason, failure_message=job.failure_message,
            create_time=timestamp(job.create_time), start_time=timestamp(job.start_time),
            end_time=timestamp(job.end_time), update_time=timestamp(job.update_time),
            output_model_id=job.output_model_id, trigger_phrase=job.trigger_phrase,
            checkpoints=self.store.checkpoints(job.id), attempts=job.attempts,
            resumable=job.state in (S.TRAINING_JOB_STATE_CANCELLED, S.TRAINING_JOB_STATE_FAILED),
            instance_image_count=job.instance_image_count, job_dir=str(job.job_dir),
            warnings=[common_pb2.Warning(**w) for w in job.warnings])
        if job.last_metrics is not None:
            t.last_metrics.CopyFrom(job.last_metrics)
        if job.state == S.TRAINING_JOB_STATE_QUEUED:
            order = queued if queued is not None else [j.id for j in self.store.queued()]
            if job.id in order:
                t.queue_position = order.index(job.id)
        return t

    def _get(self, job_id: str, field: str = "job_id") -> JobRow:
        job = self.store.get(job_id) if job_id else None
        if job is None:
            raise NotFound(resource_type="training job", resource_name=job_id, field=field)
        return job

    # ------------------------------------------------------------------ create

    async def _base_model(self, model_id: str) -> tuple[dict[str, Any] | None,
                                                        FieldViolation | None, bool]:
        """(the base model, or what is wrong with it, and whether it is missing altogether)."""
        field = "config.base_model_id"
        if not model_id:
            return None, None, False  # resolve() names the missing field
        try:
            resp = await self.catalog.GetModel(catalog_pb2.GetModelRequest(model_id=model_id),
                                               timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None, FieldViolation(field, f"no model {model_id!r} in the Catalog"), True
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None, FieldViolation(field, err.details() or "invalid model id"), False
            raise Unavailable(f"Catalog unreachable at {self.catalog_address}: "
                              f"{err.code().name}", retry_after=2.0) from err
        m = resp.model
        problem = ""
        if m.kind == catalog_pb2.MODEL_KIND_LORA:
            problem = (f"{model_id!r} is a LoRA adapter; fine-tune its base model "
                       f"{m.origin.base_model_id!r} instead")
        elif m.format not in FORMATS or (m.format == catalog_pb2.MODEL_FORMAT_SINGLE_FILE
                                         and not m.config_path):
            problem = (f"{model_id!r} cannot be fine-tuned: its weights are not a diffusers "
                       "folder, a cached HF model or a single file with a config folder")
        elif m.architecture == "sdxl":
            # the DreamBooth module trains one text encoder and no size conditioning
            problem = (f"{model_id!r} is SDXL: the trainer fine-tunes SD 1.x/2.x models "
                       "(SDXL generation is supported)")
        if problem:
            return None, FieldViolation(field, problem), False
        return {"id": m.id, "source_path": m.source_path, "format": FORMATS[m.format],
                "config_path": m.config_path,
                "native_resolution": m.native_resolution,
                "prediction_type": catalog_pb2.PredictionType.Name(m.prediction_type),
                "architecture": m.architecture}, None, False

    def _dataset_images(self, dataset_id: str) -> list[tuple[bytes, str, str]]:
        if not self.store.dataset_exists(dataset_id):
            raise NotFound(resource_type="dataset", resource_name=dataset_id,
                           field="config.dataset_id")
        out = []
        for img, caption in self.store.dataset_images(dataset_id):
            out.append(((self.datasets_dir / dataset_id / img.filename).read_bytes(),
                        img.filename, caption))
        return out

    async def CreateTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        if self.ctx.draining.is_set():
            raise Unavailable("trainer is shutting down", retry_after=5.0)
        if request.job_id:
            if not is_valid_id(request.job_id):
                raise InvalidArgument.for_field("job_id", "lowercase letter first, then "
                                                "[a-z0-9_-], at most 128 characters")
            if self.store.get(request.job_id) is not None:
                raise AlreadyExists(f"job {request.job_id!r} exists", reason="JOB_EXISTS")
        cfg = request.config
        base, model_violation, model_missing = await self._base_model(cfg.base_model_id)
        dataset = (await asyncio.to_thread(self._dataset_images, cfg.dataset_id)
                   if cfg.dataset_id and not cfg.instance_images else None)
        vocab = None
        if base and base["format"] in ("diffusers", "single_file"):
            folder = base["source_path"] if base["format"] == "diffusers" else base["config_path"]
            vocab = Vocabulary.from_model_dir(Path(folder))
        try:
            resolved = await asyncio.to_thread(
                resolve, cfg, base_model=base or {}, limits=self.limits, vocab=vocab,
                dataset_images=dataset)
        except InvalidArgument as exc:
            if model_violation is not None:
                exc.violations.insert(0, model_violation)
                raise InvalidArgument(violations=exc.violations) from None
            raise
        if model_violation is not None and model_missing:
            raise NotFound(model_violation.description, resource_type="model",
                           resource_name=cfg.base_model_id, field=model_violation.field)
        if model_violation is not None:  # it exists but cannot be the base of this job
            raise InvalidArgument(violations=[model_violation])
        assert base is not None
        job_id = request.job_id or new_id("job")
        display = request.display_name or f"{resolved.trigger_phrase} on {base['id']}"
        now = time.time()
        job = JobRow(
            id=job_id, display_name=display[:200], state=S.TRAINING_JOB_STATE_QUEUED,
            config=resolved.config, base_model=base, step=0,
            total_steps=resolved.config.max_train_steps, failure_reason="", failure_message="",
            create_time=now, start_time=None, end_time=None, update_time=now, queued_at=now,
            output_model_id="", trigger_phrase=resolved.trigger_phrase, last_metrics=None,
            warnings=[{"reason": r, "message": m, "field": f} for r, m, f in resolved.warnings],
            attempts=0, instance_image_count=len(resolved.images),
            job_dir=self.jobs_dir / job_id, worker_pid=0)
        if request.validate_only:
            view = self.to_proto(job, [])
            view.state = S.TRAINING_JOB_STATE_UNSPECIFIED
            view.job_id = request.job_id
            return trainer_pb2.CreateTrainingJobResponse(job=view)
        if len(self.store.queued()) >= self.queue_size:
            raise ResourceExhausted(f"the training queue is full ({self.queue_size} jobs)",
                                    reason="QUEUE_FULL", retry_after=30.0)
        await asyncio.to_thread(uploads.write_job_dir, job, resolved.images,
                                request.display_name)
        try:  # the row and its first events in one transaction; the folder goes if it fails
            await asyncio.to_thread(self.store.insert_job, job)
        except BaseException as exc:
            await asyncio.to_thread(uploads.remove_job_dir, job)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise Unavailable("the job store is busy", retry_after=1.0) from exc
            raise
        self.wake.set()
        return trainer_pb2.CreateTrainingJobResponse(job=self.to_proto(job))

    # ------------------------------------------------------------------ uploads

    async def UploadImages(self, request_iterator, context):  # type: ignore[no-untyped-def]
        dataset_id, name, files = await uploads.receive(request_iterator, self.store, self.limits)
        return await asyncio.to_thread(uploads.save, self.store, self.datasets_dir, self.limits,
                                       dataset_id, name, files)

    # ------------------------------------------------------------------ reads

    async def GetTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        return trainer_pb2.GetTrainingJobResponse(job=self.to_proto(self._get(request.job_id)))

    async def ListTrainingJobs(self, request, context):  # type: ignore[no-untyped-def]
        size = page_size(request.page_size)
        for i, st in enumerate(request.states):
            if st not in S.values():
                raise InvalidArgument.for_field(f"states[{i}]", f"unknown state {st}")
        scope = f"states={sorted(request.states)};base={request.base_model_id}"
        offset = decode_offset(request.page_token, scope)
        jobs = self.store.list(request.states, request.base_model_id)
        page = jobs[offset:offset + size]
        queued = [j.id for j in self.store.queued()]
        nxt = encode_token(offset + size, scope) if offset + size < len(jobs) else ""
        return trainer_pb2.ListTrainingJobsResponse(
            jobs=[self.to_proto(j, queued) for j in page], next_page_token=nxt,
            total_size=len(jobs))

    async def WatchTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        job = self._get(request.job_id)
        seq = 0
        done = False
        if request.include_history:
            # Every stored event, metrics included: a watcher joining late (the studio's
            # loss curve) sees the whole curve, not just the latest point.
            history = self.store.events_after(job.id, 0, 1_000_000)
            for ev in history:
                seq = ev.sequence
                if ev.WhichOneof("event") != "log" or request.include_logs:
                    yield ev
            if history and history[-1].WhichOneof("event") == "state_changed" and (
                    history[-1].state_changed.state in TERMINAL):
                return
        else:
            seq = self.store.last_event_seq(job.id)
            yield trainer_pb2.WatchTrainingJobResponse(
                job_id=job.id, time=timestamp(time.time()), sequence=seq,
                state_changed=trainer_pb2.TrainingStateChanged(
                    previous_state=job.state, state=job.state, reason="CURRENT"))  # type: ignore[arg-type]
            if job.state in TERMINAL:
                return
        last_sent = time.monotonic()
        while not done:
            events = self.store.events_after(job.id, seq)  # indexed read, well under 1 ms
            for ev in events:
                seq = ev.sequence
                if ev.WhichOneof("event") == "log" and not request.include_logs:
                    continue
                yield ev
                last_sent = time.monotonic()
                if ev.WhichOneof("event") == "state_changed" and ev.state_changed.state in TERMINAL:
                    done = True
                    break
            if done:
                break
            if not events:
                now_job = self.store.get(job.id)
                if now_job is None or (now_job.state in TERMINAL and
                                       self.store.last_event_seq(job.id) <= seq):
                    return  # deleted, or finished with nothing left to send
                if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
                    yield trainer_pb2.WatchTrainingJobResponse(
                        job_id=job.id, time=timestamp(time.time()), sequence=seq)
                    last_sent = time.monotonic()
                await asyncio.sleep(POLL_SECONDS)

    # ------------------------------------------------------------------ control

    async def CancelTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        """Stop a job; an acknowledged cancel is always honoured.

        Queued: CANCELLED at once. Preparing, running or exporting: CANCELLING, and the worker
        stops at the next step (or before registering its export) and ends CANCELLED with a
        checkpoint, resumable. Every change is a compare-and-set against the state the decision
        was made on, so a worker moving on at the same moment (RUNNING -> EXPORTING ->
        SUCCEEDED) cannot silently undo it: the decision is made again on the new state.
        """
        job = self._get(request.job_id)
        for _ in range(5):
            if job.state in (S.TRAINING_JOB_STATE_CANCELLING, S.TRAINING_JOB_STATE_CANCELLED):
                break  # already being cancelled or cancelled: nothing more to do
            if job.state in (S.TRAINING_JOB_STATE_SUCCEEDED, S.TRAINING_JOB_STATE_FAILED):
                raise FailedPrecondition(f"job already {S.Name(job.state)}",
                                         reason="JOB_FINISHED")
            if job.state == S.TRAINING_JOB_STATE_QUEUED:
                done = self.store.set_state(job.id, S.TRAINING_JOB_STATE_CANCELLED, "CANCELLED",
                                            "cancelled while queued", expect={job.state})
            else:
                # the STOP file reaches a worker that runs, or is just starting, at its next check
                await asyncio.to_thread(atomic_write_text, job.job_dir / STOP_FILE, "cancel")
                if job.id in self.workers:
                    done = self.store.set_state(
                        job.id, S.TRAINING_JOB_STATE_CANCELLING, "CANCEL_REQUESTED",
                        "stopping after the current step with a checkpoint", expect={job.state})
                else:  # no worker of ours (exiting, or not yet started): nothing to wait for
                    done = self.store.set_state(job.id, S.TRAINING_JOB_STATE_CANCELLED,
                                                "CANCELLED", "", expect={job.state})
            if done is not None:
                break
            job = self._get(job.id)
        return trainer_pb2.CancelTrainingJobResponse(job=self.to_proto(self._get(job.id)))

    async def ResumeTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        job = self._get(request.job_id)
        new_total = request.max_train_steps
        if new_total and not (job.step < new_total <= 100_000):
            raise InvalidArgument.for_field(
                "max_train_steps", f"must be more than the steps done ({job.step}) and at most "
                "100000")
        if job.state == S.TRAINING_JOB_STATE_SUCCEEDED and not new_total:
            raise FailedPrecondition("job succeeded; give max_train_steps to train further",
                                     reason="JOB_FINISHED")
        if job.state not in (S.TRAINING_JOB_STATE_CANCELLED, S.TRAINING_JOB_STATE_FAILED,
                             S.TRAINING_JOB_STATE_SUCCEEDED):
            raise FailedPrecondition(f"job is {S.Name(job.state)}; only cancelled, failed or "
                                     "succeeded jobs resume", reason="JOB_NOT_RESUMABLE")
        fields: dict[str, Any] = {"queued_at": time.time(), "end_time": None,
                                  "failure_reason": "", "failure_message": ""}
        if new_total:
            cfg = trainer_pb2.DreamBoothConfig()
            cfg.CopyFrom(job.config)
            cfg.max_train_steps = new_total
            fields.update(config=cfg, total_steps=new_total)
        if job.state == S.TRAINING_JOB_STATE_SUCCEEDED:
            fields["output_model_id"] = ""
        self.crashes.pop(job.id, None)
        ckpt = self.store.latest_full_checkpoint(job.id)
        if self.store.set_state(job.id, S.TRAINING_JOB_STATE_QUEUED, "RESUMED",
                                f"from step {ckpt.step}" if ckpt else "from the start",
                                expect={job.state}, **fields) is None:
            raise FailedPrecondition("the job changed state while resuming; try again",
                                     reason="JOB_STATE_CHANGED")
        self.wake.set()
        return trainer_pb2.ResumeTrainingJobResponse(job=self.to_proto(self._get(job.id)))

    async def DeleteTrainingJob(self, request, context):  # type: ignore[no-untyped-def]
        job = self._get(request.job_id)
        if job.state not in TERMINAL:
            if not request.force:
                raise FailedPrecondition(f"job is {S.Name(job.state)}; cancel it first or "
                                         "delete with force", reason="JOB_ACTIVE")
            proc = self.workers.get(job.id)
            self.store.set_state(job.id, S.TRAINING_JOB_STATE_CANCELLED, "DELETED", "")
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
        freed = await asyncio.to_thread(_dir_size, job.job_dir)
        await asyncio.to_thread(shutil.rmtree, job.job_dir, True)
        self.store.delete_job(job.id)
        return trainer_pb2.DeleteTrainingJobResponse(freed_bytes=freed)


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the trainer servicer and hooks for the shared runner."""
    servicer = TrainerServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
        on_start=servicer.start, on_drain=servicer.drain, on_stop=servicer.stop)

