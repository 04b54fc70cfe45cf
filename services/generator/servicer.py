"""GeneratorService: validation, queue + micro-batcher, streams, gallery; adapters per backend.

Settings: services/generator/settings.py (GeneratorSettings).
The Catalog address comes from BOOTHSTUDIO_CATALOG_ADDRESS / `addresses.catalog`.
The artifact store (storage_url) is opened once at start: a store that cannot be used stops the
start with one line naming storage_url. Replicas on one database find each other's jobs through
services.generator.replicas (CancelGeneration is forwarded to the replica running the job).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from boothstudio.services.diffusion.backends import remote_backends
from boothstudio.services.diffusion.model_cache import ModelCache
from boothstudio.services.generator import metrics
from boothstudio.services.generator.adapters.base import Adapter
from boothstudio.services.generator.adapters.diffusers import DiffusersAdapter
from boothstudio.services.generator.gallery import Gallery
from boothstudio.services.generator.job_queue import (
    Job,
    JobQueue,
    now_timestamp,
    priority_rank,
    queue_owner,
)
from boothstudio.services.generator.replicas import (
    Forwarder,
    ReplicaRegistry,
    advertised_address,
    is_forwarded,
)
from boothstudio.services.generator.settings import GeneratorSettings
from boothstudio.services.generator.validation import Validator, check_id_list, model_ref
from boothstudio.services.settings import load_settings
from boothstudio.shared.artifact_store import store_for
from boothstudio.shared.auth import current_principal
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.errors import (
    AlreadyExists,
    BoothStudioError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from boothstudio.shared.ids import check_id, new_id
from boothstudio.shared.pagination import decode_offset, encode_token, page_size
from boothstudio.shared.server import RpcContext, ServiceContext, ServiceSpec
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, generator_pb2, generator_pb2_grpc

DESCRIPTOR = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"]


def make_adapters(
    settings: GeneratorSettings, model_cache: ModelCache | None = None
) -> dict[str, Adapter]:
    adapters: dict[str, Adapter] = {
        "diffusers": DiffusersAdapter(
            device=settings.device,
            cache_size=settings.pipeline_cache,
            threads=settings.torch_threads,
            model_cache=model_cache,
        )
    }
    remotes = remote_backends(settings)
    if "a1111" in remotes:
        from boothstudio.services.generator.adapters.a1111 import A1111Adapter

        adapters["a1111"] = A1111Adapter(remotes["a1111"].url)
    if "hosted" in remotes:
        from boothstudio.services.generator.adapters.hosted import HostedAdapter

        adapters["hosted"] = HostedAdapter(remotes["hosted"].url, remotes["hosted"].api_key)
    return adapters


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        settings = load_settings(GeneratorSettings, ctx.config)
        self.log = ctx.logger
        self.adapters = make_adapters(
            settings, ModelCache.for_service(ctx.config, settings.model_cache_bytes)
        )
        cfg = ctx.config
        self.artifacts = store_for(cfg)
        self.gallery = Gallery(cfg.service_dir, cfg.database_url, self.artifacts)
        self.replicas = ReplicaRegistry(
            self.gallery.engine, advertised_address(settings.advertise_address, cfg.host, cfg.port)
        )
        self.forwarder = Forwarder(cfg, self.replicas.replica_id)
        self.jobs = JobQueue(
            self.gallery,
            queue_size=settings.queue_size,
            max_batch_images=settings.max_batch_images,
            batching=settings.batching,
            batch_window=settings.batch_window,
            max_queued_per_key=settings.max_queued_per_key,
            log=self.log,
        )
        self.preview_interval = settings.preview_interval
        self.default_model = settings.default_model
        self.preload = settings.preload
        self.keepalive = settings.keepalive_seconds
        self.catalog_channel: Any = None
        self.validator: Validator | None = None
        self._preload_task: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.ctx.config
        self.catalog_channel = aio_channel(
            cfg.address_of("catalog"), api_key=cfg.service_api_key or None
        )
        catalog = catalog_pb2_grpc.CatalogServiceStub(self.catalog_channel)
        self.validator = Validator(catalog, self.adapters, self.default_model)
        self.jobs.start()
        self._heartbeats = asyncio.create_task(self.replicas.keep_alive(self.log))
        if self.preload:
            self._preload_task = asyncio.create_task(self._preload(catalog))

    async def _preload(self, catalog: catalog_pb2_grpc.CatalogServiceStub) -> None:
        """Load the default model in the device thread so the first request starts warm."""
        for _ in range(50):
            try:
                resp = await catalog.GetModel(
                    catalog_pb2.GetModelRequest(model_id=self.default_model), timeout=2.0
                )
                break
            except grpc.RpcError:
                await asyncio.sleep(0.2)
        else:
            return
        model = model_ref(resp.model)
        adapter = self.adapters.get(model.backend_id)
        if adapter is None:
            return
        self.log.info("preloading default model", extra={"model_id": model.id})
        try:
            await self.jobs.warm(adapter, model)
            self.log.info("default model preloaded", extra={"model_id": model.id})
        except Exception as exc:
            self.log.warning("preloading %s failed: %s", model.id, exc)

    async def drain(self, grace: float) -> None:
        await self.jobs.drain(grace)

    async def stop(self) -> None:
        if self._preload_task is not None:
            self._preload_task.cancel()
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            try:
                await asyncio.to_thread(self.replicas.deregister)
            except BoothStudioError as err:
                self.log.warning("could not deregister this replica: %s", err)
        await self.forwarder.close()
        await self.jobs.stop()
        for a in self.adapters.values():
            a.close()
        if self.catalog_channel is not None:
            await self.catalog_channel.close()
        self.gallery.close()

    # ------------------------------------------------------------------ generation

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: RpcContext
    ) -> AsyncIterator[generator_pb2.GenerateResponse]:
        if self.ctx.draining.is_set():
            raise Unavailable("the generator is shutting down", reason="DRAINING")
        assert self.validator is not None
        try:
            spec, adapter, warnings = await self.validator.resolve(request)
        except BoothStudioError:
            metrics.REQUESTS.labels("invalid").inc()
            raise
        job_id = request.job_id or new_id("gen")
        if self.jobs.known(job_id):
            metrics.REQUESTS.labels("invalid").inc()
            raise AlreadyExists(
                f"job {job_id!r} exists", reason="JOB_EXISTS", violations=[("job_id", "taken")]
            )
        interval = (
            request.preview_interval
            if request.HasField("preview_interval")
            else self.preview_interval
        )
        job = Job(job_id, request, spec, adapter, interval,
                  priority=priority_rank(request.priority),
                  owner=queue_owner(current_principal(), context.peer()))
        self.jobs.submit(job)
        for w in warnings:
            job.events.put_nowait(generator_pb2.GenerateResponse(job_id=job.id, warning=w))
        try:
            # queued first (its place in the queue is its arrival), recorded before the client
            # learns the job id from the first event
            await self._record_job(job_id)
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), self.keepalive)
                except TimeoutError:
                    # an empty event: keeps proxies and HTTP/2 ping policies happy while the
                    # job waits (queue, model load) without progress to report
                    yield generator_pb2.GenerateResponse(job_id=job.id, time=now_timestamp())
                    continue
                yield event
                if event.HasField("finished"):
                    return
        finally:
            if not job.done:
                # the client went away (or the server is stopping): stop the work
                self.jobs.cancel(job.id, "CLIENT_GONE")

    async def _record_job(self, job_id: str) -> None:
        try:
            await asyncio.to_thread(self.replicas.record_job, job_id)
        except BoothStudioError as err:
            # the job still runs; only CancelGeneration through another replica cannot find it
            self.log.warning("job %s not recorded for the other replicas: %s", job_id, err)

    async def CancelGeneration(
        self, request: generator_pb2.CancelGenerationRequest, context: RpcContext
    ) -> generator_pb2.CancelGenerationResponse:
        """Cancels the job here, or on the replica running it (see replicas.py)."""
        job_id = request.job_id
        check_id("job_id", job_id, required=True)
        if not self.jobs.known(job_id) and not is_forwarded(context.invocation_metadata()):
            owner = await asyncio.to_thread(self.replicas.owner_of, job_id)
            if owner is not None and owner.replica_id != self.replicas.replica_id:
                return await self.forwarder.cancel(owner, job_id)
        return generator_pb2.CancelGenerationResponse(cancelled=self.jobs.cancel(job_id))

    # ------------------------------------------------------------------ gallery

    async def ListImages(
        self, request: generator_pb2.ListImagesRequest, context: RpcContext
    ) -> generator_pb2.ListImagesResponse:
        check_id("model_id", request.model_id)
        check_id("job_id", request.job_id)
        size = page_size(request.page_size)
        scope = f"model={request.model_id};job={request.job_id}"
        offset = decode_offset(request.page_token, scope)
        rows, total = await asyncio.to_thread(
            self.gallery.list,
            model_id=request.model_id,
            job_id=request.job_id,
            offset=offset,
            limit=size,
        )
        more = offset + len(rows) < total
        return generator_pb2.ListImagesResponse(
            images=[self.gallery.to_proto(r, with_png=False) for r in rows],
            next_page_token=encode_token(offset + len(rows), scope) if more else "",
            total_size=total,
        )

    async def GetImage(
        self, request: generator_pb2.GetImageRequest, context: RpcContext
    ) -> generator_pb2.GetImageResponse:
        check_id("image_id", request.image_id, required=True)
        row = await asyncio.to_thread(self.gallery.get, request.image_id)
        if row is None:
            raise NotFound(resource_type="image", resource_name=request.image_id, field="image_id")
        image = await asyncio.to_thread(self.gallery.to_proto, row, not request.metadata_only)
        return generator_pb2.GetImageResponse(image=image)

    async def DeleteImages(
        self, request: generator_pb2.DeleteImagesRequest, context: RpcContext
    ) -> generator_pb2.DeleteImagesResponse:
        if not request.image_ids and not request.job_id:
            raise InvalidArgument.for_field("image_ids", "name images or a job_id")
        check_id_list("image_ids", list(request.image_ids))
        check_id("job_id", request.job_id)
        deleted, missing = await asyncio.to_thread(
            self.gallery.delete, list(request.image_ids), request.job_id
        )
        if deleted == 0 and missing:
            # nothing matched at all: an error; a partial miss is reported in not_found_ids
            raise NotFound(
                f"no such images: {', '.join(missing[:10])}",
                resource_type="image",
                field="image_ids",
                metadata={"not_found_ids": ",".join(missing[:50])},
            )
        return generator_pb2.DeleteImagesResponse(deleted_count=deleted, not_found_ids=missing)


def build(ctx: ServiceContext) -> ServiceSpec:
    """Build the generator servicer and hooks for the shared runner."""
    servicer = GeneratorServicer(ctx)
    return ServiceSpec.for_servicer(
        DESCRIPTOR,
        servicer,
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server,
        on_start=servicer.start,
        on_drain=servicer.drain,
        on_stop=servicer.stop,
    )


__all__ = ["GeneratorServicer", "build"]
