"""TrainerService: DreamBooth jobs in a bounded queue, each run by its own worker process.

The service holds no torch: it validates, stores and schedules. A job's life:

    QUEUED -> PREPARING -> RUNNING -> EXPORTING -> SUCCEEDED
                 \\       (any of these) -> CANCELLING -> CANCELLED (resumable) -> ResumeTrainingJob
                  \\-> FAILED (reason)                                        -> ResumeTrainingJob

State changes are compare-and-set in the job store: the service (cancel, crash handling) and the
worker (progress) never overwrite a change the other made first; an acknowledged cancel always
ends the job CANCELLED (a model registered during the export is removed again).
Domain metrics (services/trainer/metrics.py) are read from the store when /metrics is scraped.

Modules: store.py (jobs, events, datasets), options.py (a config checked and completed),
base_model.py (the Catalog's model, checked), uploads.py (pictures onto disk), supervision.py
(worker processes: start, reap, crash restarts, recovery, drain), events.py (the watch stream),
mapping.py (rows as messages).

Settings: services/trainer/settings.py (TrainerSettings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import REGISTRY

from boothstudio.services.settings import load_settings
from boothstudio.services.trainer import base_model, events, uploads
from boothstudio.services.trainer.mapping import to_proto
from boothstudio.services.trainer.metrics import TrainerMetrics
from boothstudio.services.trainer.options import Limits, Resolved, resolve
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.store import TERMINAL, JobRow, JobStore
from boothstudio.services.trainer.supervision import Supervisor
from boothstudio.services.trainer.worker import STOP_FILE
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from boothstudio.shared.ids import ID_RULE, is_valid_id, new_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.server import RpcContext, ServiceContext, ServiceSpec
from boothstudio.shared.storage import atomic_write_text, folder_size
from boothstudio.v1 import catalog_pb2_grpc, trainer_pb2, trainer_pb2_grpc

DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
JobState = trainer_pb2.TrainingJobState


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        settings = load_settings(TrainerSettings, cfg)
        self.jobs_dir = cfg.service_dir / "jobs"
        self.datasets_dir = cfg.service_dir / "datasets"
        self.store = JobStore(cfg.service_dir / "trainer.sqlite3")
        self.queue_size = settings.queue_size
        self.limits = Limits(
            max_instance_images=settings.max_instance_images,
            max_image_bytes=settings.max_image_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            gpu_available=Path("/dev/nvidiactl").exists(),
            cpu_count=os.cpu_count() or 1)
        self.catalog_address = cfg.address_of("catalog")
        self._catalog: catalog_pb2_grpc.CatalogServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self.metrics = TrainerMetrics(self.store)
        self.supervisor = Supervisor(ctx, self.store, self.metrics, settings,
                                     self.catalog_address)

    # ------------------------------------------------------------------ lifecycle

    @property
    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        if self._catalog is None:
            self._channel = aio_channel(self.catalog_address,
                                        api_key=self.ctx.config.service_api_key or None)
            self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        return self._catalog

    async def start(self) -> None:
        await asyncio.to_thread(self.supervisor.recover)
        await asyncio.to_thread(self.metrics.prune)
        self.metrics.register()
        self.supervisor.start()

    async def drain(self, grace: float) -> None:
        await self.supervisor.drain(grace)

    async def stop(self) -> None:
        await self.supervisor.stop()
        if self._channel is not None:
            await self._channel.close()
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self.metrics)
        self.store.close()

    def _get(self, job_id: str, field: str = "job_id") -> JobRow:
        job = self.store.get(job_id) if job_id else None
        if job is None:
            raise NotFound(resource_type="training job", resource_name=job_id, field=field)
        return job

    # ------------------------------------------------------------------ create

    async def CreateTrainingJob(
        self, request: trainer_pb2.CreateTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.CreateTrainingJobResponse:
        if self.ctx.draining.is_set():
            raise Unavailable("trainer is shutting down", retry_after=5.0)
        if request.job_id:
            if not is_valid_id(request.job_id):
                raise InvalidArgument.for_field("job_id", ID_RULE)
            if self.store.get(request.job_id) is not None:
                raise AlreadyExists(f"job {request.job_id!r} exists", reason="JOB_EXISTS")
        base, resolved = await self._resolve(request.config)
        job = self._new_job(request.job_id or new_id("job"), request.display_name, base, resolved)
        if request.validate_only:
            view = to_proto(self.store, job, [])
            view.state = JobState.TRAINING_JOB_STATE_UNSPECIFIED
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
        self.supervisor.wake()
        return trainer_pb2.CreateTrainingJobResponse(job=to_proto(self.store, job))

    async def _resolve(self, config: trainer_pb2.DreamBoothConfig
                       ) -> tuple[dict[str, Any], Resolved]:
        """The base model and the checked, completed config; every problem with either is
        named at once (a missing base model alone is NOT_FOUND)."""
        base, model_violation, model_missing = await base_model.look_up(
            self.catalog, self.catalog_address, config.base_model_id)
        dataset = (await asyncio.to_thread(uploads.dataset_images, self.store, self.datasets_dir,
                                           config.dataset_id)
                   if config.dataset_id and not config.instance_images else None)
        try:
            resolved = await asyncio.to_thread(
                resolve, config, base_model=base or {}, limits=self.limits,
                vocab=base_model.vocabulary(base), dataset_images=dataset)
        except InvalidArgument as exc:
            if model_violation is not None:
                exc.violations.insert(0, model_violation)
                raise InvalidArgument(violations=exc.violations) from None
            raise
        if model_violation is not None and model_missing:
            raise NotFound(model_violation.description, resource_type="model",
                           resource_name=config.base_model_id, field=model_violation.field)
        if model_violation is not None:  # it exists but cannot be the base of this job
            raise InvalidArgument(violations=[model_violation])
        assert base is not None
        return base, resolved

    def _new_job(self, job_id: str, display_name: str, base: dict[str, Any],
                 resolved: Resolved) -> JobRow:
        display = display_name or f"{resolved.trigger_phrase} on {base['id']}"
        now = time.time()
        return JobRow(
            id=job_id, display_name=display[:200], state=JobState.TRAINING_JOB_STATE_QUEUED,
            config=resolved.config, base_model=base, step=0,
            total_steps=resolved.config.max_train_steps, failure_reason="", failure_message="",
            create_time=now, start_time=None, end_time=None, update_time=now, queued_at=now,
            output_model_id="", trigger_phrase=resolved.trigger_phrase, last_metrics=None,
            warnings=[{"reason": r, "message": m, "field": f} for r, m, f in resolved.warnings],
            attempts=0, instance_image_count=len(resolved.images),
            job_dir=self.jobs_dir / job_id, worker_pid=0)

    # ------------------------------------------------------------------ uploads

    async def UploadImages(
        self, request_iterator: AsyncIterator[trainer_pb2.UploadImagesRequest],
        context: RpcContext,
    ) -> trainer_pb2.UploadImagesResponse:
        dataset_id, name, files = await uploads.receive(request_iterator, self.store, self.limits)
        return await asyncio.to_thread(uploads.save, self.store, self.datasets_dir, self.limits,
                                       dataset_id, name, files)

    # ------------------------------------------------------------------ reads

    async def GetTrainingJob(
        self, request: trainer_pb2.GetTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.GetTrainingJobResponse:
        return trainer_pb2.GetTrainingJobResponse(
            job=to_proto(self.store, self._get(request.job_id)))

    async def ListTrainingJobs(
        self, request: trainer_pb2.ListTrainingJobsRequest, context: RpcContext
    ) -> trainer_pb2.ListTrainingJobsResponse:
        size = page_size(request.page_size)
        for i, st in enumerate(request.states):
            if st not in JobState.values():
                raise InvalidArgument.for_field(f"states[{i}]", f"unknown state {st}")
        scope = f"states={sorted(request.states)};base={request.base_model_id}"
        offset = decode_offset(request.page_token, scope)
        jobs = self.store.list(request.states, request.base_model_id)
        page = jobs[offset:offset + size]
        queued = [j.id for j in self.store.queued()]
        nxt = encode_token(offset + size, scope) if offset + size < len(jobs) else ""
        return trainer_pb2.ListTrainingJobsResponse(
            jobs=[to_proto(self.store, j, queued) for j in page], next_page_token=nxt,
            total_size=len(jobs))

    async def WatchTrainingJob(
        self, request: trainer_pb2.WatchTrainingJobRequest, context: RpcContext
    ) -> AsyncIterator[trainer_pb2.WatchTrainingJobResponse]:
        job = self._get(request.job_id)
        async for event in events.watch(self.store, job, include_history=request.include_history,
                                        include_logs=request.include_logs):
            yield event

    # ------------------------------------------------------------------ control

    async def CancelTrainingJob(
        self, request: trainer_pb2.CancelTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.CancelTrainingJobResponse:
        """Stop a job; an acknowledged cancel is always honoured.

        Queued: CANCELLED at once. Preparing, running or exporting: CANCELLING, and the worker
        stops at the next step (or before registering its export) and ends CANCELLED with a
        checkpoint, resumable. Every change is a compare-and-set against the state the decision
        was made on, so a worker moving on at the same moment (RUNNING -> EXPORTING ->
        SUCCEEDED) cannot silently undo it: the decision is made again on the new state.
        """
        job = self._get(request.job_id)
        for _ in range(5):
            if job.state in (JobState.TRAINING_JOB_STATE_CANCELLING,
                             JobState.TRAINING_JOB_STATE_CANCELLED):
                break  # already being cancelled or cancelled: nothing more to do
            if job.state in (JobState.TRAINING_JOB_STATE_SUCCEEDED,
                             JobState.TRAINING_JOB_STATE_FAILED):
                raise FailedPrecondition(f"job already {JobState.Name(job.state)}",
                                         reason="JOB_FINISHED")
            if job.state == JobState.TRAINING_JOB_STATE_QUEUED:
                done = self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED,
                                            "CANCELLED", "cancelled while queued",
                                            expect={job.state})
            else:
                # the STOP file reaches a worker that runs, or is just starting, at its next check
                await asyncio.to_thread(atomic_write_text, job.job_dir / STOP_FILE, "cancel")
                if self.supervisor.has_worker(job.id):
                    done = self.store.set_state(
                        job.id, JobState.TRAINING_JOB_STATE_CANCELLING, "CANCEL_REQUESTED",
                        "stopping after the current step with a checkpoint", expect={job.state})
                else:  # no worker of ours (exiting, or not yet started): nothing to wait for
                    done = self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED,
                                                "CANCELLED", "", expect={job.state})
            if done is not None:
                break
            job = self._get(job.id)
        return trainer_pb2.CancelTrainingJobResponse(job=to_proto(self.store, self._get(job.id)))

    async def ResumeTrainingJob(
        self, request: trainer_pb2.ResumeTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.ResumeTrainingJobResponse:
        job = self._get(request.job_id)
        new_total = request.max_train_steps
        if new_total and not (job.step < new_total <= 100_000):
            raise InvalidArgument.for_field(
                "max_train_steps", f"must be more than the steps done ({job.step}) and at most "
                "100000")
        if job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED and not new_total:
            raise FailedPrecondition("job succeeded; give max_train_steps to train further",
                                     reason="JOB_FINISHED")
        if job.state not in (JobState.TRAINING_JOB_STATE_CANCELLED,
                             JobState.TRAINING_JOB_STATE_FAILED,
                             JobState.TRAINING_JOB_STATE_SUCCEEDED):
            raise FailedPrecondition(f"job is {JobState.Name(job.state)}; only cancelled, "
                                     "failed or succeeded jobs resume",
                                     reason="JOB_NOT_RESUMABLE")
        fields: dict[str, Any] = {"queued_at": time.time(), "end_time": None,
                                  "failure_reason": "", "failure_message": ""}
        if new_total:
            cfg = trainer_pb2.DreamBoothConfig()
            cfg.CopyFrom(job.config)
            cfg.max_train_steps = new_total
            fields.update(config=cfg, total_steps=new_total)
        if job.state == JobState.TRAINING_JOB_STATE_SUCCEEDED:
            fields["output_model_id"] = ""
        self.supervisor.forget_crashes(job.id)
        ckpt = self.store.latest_full_checkpoint(job.id)
        if self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_QUEUED, "RESUMED",
                                f"from step {ckpt.step}" if ckpt else "from the start",
                                expect={job.state}, **fields) is None:
            raise FailedPrecondition("the job changed state while resuming; try again",
                                     reason="JOB_STATE_CHANGED")
        self.supervisor.wake()
        return trainer_pb2.ResumeTrainingJobResponse(job=to_proto(self.store, self._get(job.id)))

    async def DeleteTrainingJob(
        self, request: trainer_pb2.DeleteTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.DeleteTrainingJobResponse:
        job = self._get(request.job_id)
        if job.state not in TERMINAL:
            if not request.force:
                raise FailedPrecondition(f"job is {JobState.Name(job.state)}; cancel it first or "
                                         "delete with force", reason="JOB_ACTIVE")
            self.store.set_state(job.id, JobState.TRAINING_JOB_STATE_CANCELLED, "DELETED", "")
            await self.supervisor.kill(job.id)
        freed = await asyncio.to_thread(folder_size, job.job_dir)
        await asyncio.to_thread(shutil.rmtree, job.job_dir, True)
        self.store.delete_job(job.id)
        return trainer_pb2.DeleteTrainingJobResponse(freed_bytes=freed)


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the trainer servicer and hooks for the shared runner."""
    servicer = TrainerServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
        on_start=servicer.start, on_drain=servicer.drain, on_stop=servicer.stop)
