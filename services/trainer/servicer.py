"""TrainerService: DreamBooth jobs in a bounded queue, each run by its own worker process.

The service holds no torch: it validates, stores and schedules. A job's life:

    QUEUED -> PREPARING -> RUNNING -> EXPORTING -> SUCCEEDED
                 \\       (any of these) -> CANCELLING -> CANCELLED (resumable) -> ResumeTrainingJob
                  \\-> FAILED (reason)                                        -> ResumeTrainingJob

State changes are compare-and-set in the job store: the service (cancel, crash handling) and the
worker (progress) never overwrite a change the other made first; an acknowledged cancel always
ends the job CANCELLED (a model registered during the export is removed again).
Domain metrics (services/trainer/metrics.py) are read from the store when /metrics is scraped.

Modules: store.py (jobs, events, datasets), job_creation.py (base model and config checked and
completed: options.py, base_model.py), uploads.py (pictures onto disk), job_control.py (cancel,
resume, delete), supervision.py (worker processes: start, reap, crash restarts, recovery,
drain, job leases between replicas), events.py (the watch stream), mapping.py (rows as
messages).

Replicas: several Trainers may share one database (database_url). Each job is run by one of
them at a time under a lease (supervision.py, store.py); any replica answers every RPC: Watch
reads the job's events from the database, a cancel or delete reaches the replica running it
through the job's row.

Settings: services/trainer/settings.py (TrainerSettings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from boothstudio.services.settings import load_settings
from boothstudio.services.trainer import events, job_creation, uploads
from boothstudio.services.trainer.job_control import JobControl
from boothstudio.services.trainer.mapping import to_proto
from boothstudio.services.trainer.metrics import TrainerMetrics
from boothstudio.services.trainer.options import Limits
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.services.trainer.store import JobRow, JobStore
from boothstudio.services.trainer.supervision import Supervisor
from boothstudio.shared.artifact_store import store_for
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from boothstudio.shared.ids import check_id, new_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.server import RpcContext, ServiceContext, ServiceSpec
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
        self.store = JobStore(cfg.service_dir / "trainer.sqlite3", cfg.database_url)
        self.artifacts = store_for(cfg)  # a storage_url that cannot be used stops the start
        self.queue_size = settings.queue_size
        self.limits = Limits(
            max_instance_images=settings.max_instance_images,
            max_image_bytes=settings.max_image_bytes,
            max_upload_bytes=settings.max_upload_bytes,
            gpu_available=Path("/dev/nvidiactl").exists(),
            cpu_count=os.cpu_count() or 1, on_ray=bool(settings.ray_address))
        self.catalog_address = cfg.address_of("catalog")
        self._catalog: catalog_pb2_grpc.CatalogServiceStub | None = None
        self._channel: grpc.aio.Channel | None = None
        self.metrics = TrainerMetrics(self.store)
        # stable across restarts of this service on this host: a restart takes its jobs back
        self.replica_id = settings.replica_id or f"{socket.gethostname()}:{cfg.port}"
        self.supervisor = Supervisor(ctx, self.store, self.metrics, settings,
                                     self.catalog_address, self.replica_id)
        self.control = JobControl(self.store, self.supervisor, self.artifacts)

    # ------------------------------------------------------------------ lifecycle

    @property
    def catalog(self) -> catalog_pb2_grpc.CatalogServiceStub:
        if self._catalog is None:
            self._channel = aio_channel(self.catalog_address,
                                        api_key=self.ctx.config.service_api_key or None)
            self._catalog = catalog_pb2_grpc.CatalogServiceStub(self._channel)
        return self._catalog

    async def start(self) -> None:
        self.ctx.logger.info("trainer replica", extra={"replica_id": self.replica_id})
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
        check_id("job_id", request.job_id)
        if request.job_id and self.store.get(request.job_id) is not None:
            raise AlreadyExists(f"job {request.job_id!r} exists", reason="JOB_EXISTS")
        base, resolved = await job_creation.check_config(
            request.config, catalog=self.catalog, catalog_address=self.catalog_address,
            store=self.store, datasets_dir=self.datasets_dir, limits=self.limits,
            artifacts=self.artifacts)
        job = job_creation.new_job(request.job_id or new_id("job"), request.display_name, base,
                                   resolved, self.jobs_dir)
        if request.validate_only:
            view = to_proto(self.store, job, [])
            view.state = JobState.TRAINING_JOB_STATE_UNSPECIFIED
            view.job_id = request.job_id
            return trainer_pb2.CreateTrainingJobResponse(job=view)
        if len(self.store.queued()) >= self.queue_size:
            raise ResourceExhausted(f"the training queue is full ({self.queue_size} jobs)",
                                    reason="QUEUE_FULL", retry_after=30.0)
        await asyncio.to_thread(uploads.write_job_dir, job, resolved.images,
                                request.display_name, self.artifacts)
        try:  # the row and its first events in one transaction; the folder goes if it fails
            await asyncio.to_thread(self.store.insert_job, job)
        except BaseException as exc:
            await asyncio.to_thread(uploads.remove_job_dir, job, self.artifacts)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise Unavailable("the job store is busy", retry_after=1.0) from exc
            raise
        self.supervisor.wake()
        return trainer_pb2.CreateTrainingJobResponse(job=to_proto(self.store, job))

    # ------------------------------------------------------------------ uploads

    async def UploadImages(
        self, request_iterator: AsyncIterator[trainer_pb2.UploadImagesRequest],
        context: RpcContext,
    ) -> trainer_pb2.UploadImagesResponse:
        dataset_id, name, files = await uploads.receive(request_iterator, self.store, self.limits)
        return await asyncio.to_thread(uploads.save, self.store, self.datasets_dir, self.limits,
                                       dataset_id, name, files, self.artifacts)

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
        job = self._get(request.job_id)
        await self.control.cancel(job)
        return trainer_pb2.CancelTrainingJobResponse(job=to_proto(self.store, self._get(job.id)))

    async def ResumeTrainingJob(
        self, request: trainer_pb2.ResumeTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.ResumeTrainingJobResponse:
        job = self._get(request.job_id)
        await self.control.resume(job, request.max_train_steps)
        return trainer_pb2.ResumeTrainingJobResponse(job=to_proto(self.store, self._get(job.id)))

    async def DeleteTrainingJob(
        self, request: trainer_pb2.DeleteTrainingJobRequest, context: RpcContext
    ) -> trainer_pb2.DeleteTrainingJobResponse:
        job = self._get(request.job_id)
        freed = await self.control.delete(job, request.force)
        return trainer_pb2.DeleteTrainingJobResponse(freed_bytes=freed)


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the trainer servicer and hooks for the shared runner."""
    servicer = TrainerServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
        on_start=servicer.start, on_drain=servicer.drain, on_stop=servicer.stop)
