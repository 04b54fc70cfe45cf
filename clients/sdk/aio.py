"""The asyncio client (grpc.aio channels): the same surface as `BoothStudio`, awaited.

Requests and answers go through the same conversion code as the sync client
(`clients.sdk._convert`, `clients.sdk._ops`); only the transport loop differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

import grpc
import grpc.aio

from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk import _ops as ops
from boothstudio.clients.sdk._base import (
    ClientBase,
    Pool,
    StreamState,
    check_training_outcome,
    dataset_name,
    fanout_result,
    health_result,
    is_terminal_event,
    training_spec,
)
from boothstudio.clients.sdk.concepts import concept_uploads
from boothstudio.clients.sdk.config import RetryState
from boothstudio.clients.sdk.errors import BoothStudioError, NotFound, from_rpc_error
from boothstudio.clients.sdk.types import (
    Backend,
    Dataset,
    DeleteImagesResult,
    GalleryImage,
    GenerateEvent,
    GenerateParams,
    GenerationResult,
    Model,
    ModelKind,
    Page,
    PredictionType,
    SamplerList,
    ServiceHealth,
    TrainingEvent,
    TrainingJob,
    TrainingOptions,
    TrainingState,
)
from boothstudio.shared.channels import aio_channel

T = TypeVar("T")
EventT = TypeVar("EventT")


class _AsyncEventStream(Generic[EventT]):
    """What both async streams share: iteration, and closing with `aclose()`, an ``async with``
    block or when dropped (the RPC is cancelled)."""

    _state: StreamState
    _agen: AsyncGenerator[EventT, None]

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> EventT:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        await _aclose(self._state, self._agen)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            _cancel_call(self._state)


class AsyncGenerationStream(_AsyncEventStream[GenerateEvent]):
    """The events of one generation, as an async iterator (see `GenerationStream`).

    Leave early with ``break`` (the RPC is cancelled when the stream is dropped), an
    ``async with`` block or `aclose()`; `await cancel()` asks the server to cancel and keeps
    reading until Finished(CANCELLED)."""

    def __init__(self, client: AsyncBoothStudio, request: Any, timeout: float | None) -> None:
        self._client = client
        self._request = request
        self._pool = client._pools["generator"]
        self._state = StreamState(client.config.retry, timeout, resume_anytime=False)
        self._state.index = self._pool.next_index()
        self._agen = _generate_events(self._pool, request, self._state)

    @property
    def job_id(self) -> str:
        return str(self._request.job_id)

    @property
    def address(self) -> str:
        return self._pool.addresses[self._state.index]

    async def cancel(self, timeout: float | None = None) -> bool:
        op = ops.cancel_generation(self.job_id)
        timeout_s = self._client._timeout(timeout)
        try:
            done: bool = await self._client._invoke(op, self._state.index, timeout_s)
            return done
        except NotFound:
            return False


def _cancel_call(st: StreamState) -> None:
    st.closed = True
    if st.call is not None and not st.call.done():
        st.call.cancel()


async def _aclose(st: StreamState, agen: AsyncGenerator[Any, None]) -> None:
    _cancel_call(st)
    with contextlib.suppress(RuntimeError):
        await agen.aclose()


async def _generate_events(
    pool: Pool[grpc.aio.Channel], request: Any, st: StreamState
) -> AsyncGenerator[GenerateEvent, None]:
    while True:
        st.call = pool.stub(st.index).Generate(request, timeout=st.retry.start_attempt())
        try:
            async for resp in st.call:
                event = cv.generate_event(resp)
                if event is not None:
                    st.got_event()
                    yield event
            return
        except grpc.RpcError as err:
            if st.closed:
                return
            delay = st.retry_delay(err)
            if delay is None:
                address = pool.addresses[st.index]
                raise from_rpc_error(err, service="generator", address=address) from None
            await asyncio.sleep(delay)
            st.index = pool.next_index()


async def _watch_events(
    pool: Pool[grpc.aio.Channel], job_id: str, history: bool, logs: bool, st: StreamState
) -> AsyncGenerator[TrainingEvent, None]:
    while True:
        req = cv.watch_request(job_id, history or st.received > 0, logs)
        st.call = pool.stub(0).WatchTrainingJob(req, timeout=st.retry.start_attempt())
        try:
            async for resp in st.call:
                event = cv.training_event(resp)
                if event is None or st.seen(event.sequence):
                    continue
                st.got_event()
                yield event
            return
        except grpc.RpcError as err:
            if st.closed:
                return
            delay = st.retry_delay(err)
            if delay is None:
                address = pool.addresses[0]
                raise from_rpc_error(err, service="trainer", address=address) from None
            st.reconnecting()
            await asyncio.sleep(delay)


class AsyncTrainingWatch(_AsyncEventStream[TrainingEvent]):
    """A training job's events as an async iterator (see `TrainingWatch`)."""

    def __init__(
        self,
        client: AsyncBoothStudio,
        job_id: str,
        include_history: bool,
        include_logs: bool,
        timeout: float | None,
    ) -> None:
        self.job_id = job_id
        self._state = StreamState(client.config.retry, timeout, resume_anytime=True)
        self._agen = _watch_events(
            client._pools["trainer"], job_id, include_history, include_logs, self._state
        )


class AsyncBoothStudio(ClientBase[grpc.aio.Channel]):
    """Asyncio client with the same methods as `BoothStudio` (coroutines; streams are async
    iterators). Channels are opened on first use inside the running event loop; use
    ``async with AsyncBoothStudio() as client:`` or ``await client.close()``."""

    def _make_channel(self, address: str) -> grpc.aio.Channel:
        return aio_channel(address, **self._channel_kwargs())

    async def close(self) -> None:
        for pool in self._pools.values():
            for channel in pool.open_channels():
                await channel.close()

    async def __aenter__(self) -> AsyncBoothStudio:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------------- call machinery

    async def _invoke(self, op: ops.UnaryOp[T], index: int | None, timeout: float) -> T:
        pool = self._pools[op.service]
        state = RetryState(self.config.retry, timeout, op.idempotent)
        i = pool.next_index() if index is None else index
        while True:
            try:
                resp = await getattr(pool.stub(i), op.method)(
                    op.request, timeout=state.start_attempt()
                )
            except grpc.RpcError as err:
                delay = state.retry_delay(err)
                if delay is None:
                    raise from_rpc_error(
                        err, service=op.service, address=pool.addresses[i]
                    ) from None
                await asyncio.sleep(delay)
                if index is None:
                    i = pool.next_index()
                continue
            return op.parse(resp)

    async def _run(self, op: ops.UnaryOp[T], timeout: float | None = None) -> T:
        t = self._timeout(timeout)
        pool = self._pools[op.service]
        if op.fanout == "one" or len(pool) == 1:
            return await self._invoke(op, None, t)
        results: list[T] = []
        errors: list[BaseException] = []
        for i in pool.order_from_next():
            try:
                result = await self._invoke(op, i, t)
            except BoothStudioError as exc:
                if op.fanout == "first_found" and not isinstance(exc, NotFound):
                    raise
                errors.append(exc)
                continue
            if op.fanout == "first_found":
                return result
            results.append(result)
        return fanout_result(results, errors, op.combine)  # type: ignore[no-any-return]

    # ---------------------------------------------------------------------------- catalog

    async def list_models(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        kind: ModelKind | str | None = None,
        backend_id: str = "",
        base_model_id: str = "",
        timeout: float | None = None,
    ) -> Page[Model]:
        op = ops.list_models(page_size, page_token, kind, backend_id, base_model_id)
        return await self._run(op, timeout)

    async def get_model(self, model_id: str, *, timeout: float | None = None) -> Model:
        return await self._run(ops.get_model(model_id), timeout)

    async def import_model(
        self,
        source: str | os.PathLike[str],
        *,
        source_type: str = "auto",
        model_id: str = "",
        display_name: str = "",
        kind: ModelKind | str | None = None,
        architecture: str = "",
        backend_id: str = "",
        prediction_type: PredictionType | str | None = None,
        trigger_phrase: str = "",
        base_model_id: str = "",
        config_path: str | os.PathLike[str] = "",
        hf_revision: str = "",
        copy_files: bool = False,
        description: str = "",
        preview: bytes | str | os.PathLike[str] | None = None,
        timeout: float | None = None,
    ) -> Model:
        op = ops.import_model(
            source,
            source_type=source_type,
            model_id=model_id,
            display_name=display_name,
            kind=kind,
            architecture=architecture,
            backend_id=backend_id,
            prediction_type=prediction_type,
            trigger_phrase=trigger_phrase,
            base_model_id=base_model_id,
            config_path=config_path,
            hf_revision=hf_revision,
            copy_files=copy_files,
            description=description,
            preview=preview,
        )
        return await self._run(op, timeout)

    async def get_model_preview(self, model_id: str, *, timeout: float | None = None) -> bytes:
        return await self._run(ops.get_model_preview(model_id), timeout)

    async def delete_model(
        self, model_id: str, *, delete_files: bool = False, timeout: float | None = None
    ) -> int:
        return await self._run(ops.delete_model(model_id, delete_files), timeout)

    async def list_samplers(
        self, *, backend_id: str = "", model_id: str = "", timeout: float | None = None
    ) -> SamplerList:
        return await self._run(ops.list_samplers(backend_id, model_id), timeout)

    async def list_backends(
        self, *, refresh: bool = False, timeout: float | None = None
    ) -> list[Backend]:
        return await self._run(ops.list_backends(refresh), timeout)

    # -------------------------------------------------------------------------- generation

    def stream_generate(
        self, prompt: str, *, timeout: float | None = None, **params: Unpack[GenerateParams]
    ) -> AsyncGenerationStream:
        """Start a generation; ``async for event in client.stream_generate(...)``."""
        request = cv.generate_request(prompt, params)
        return AsyncGenerationStream(
            self, request, timeout if timeout is not None else self.config.generate_timeout
        )

    async def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[GenerateEvent], None] | None = None,
        **params: Unpack[GenerateParams],
    ) -> GenerationResult:
        collector = cv.GenerationCollector()
        async with self.stream_generate(prompt, timeout=timeout, **params) as stream:
            async for event in stream:
                collector.add(event)
                if on_event is not None:
                    on_event(event)
        return collector.result()

    async def cancel_generation(self, job_id: str, *, timeout: float | None = None) -> bool:
        try:
            return await self._run(ops.cancel_generation(job_id), timeout)
        except NotFound:
            return False

    # ----------------------------------------------------------------------------- gallery

    async def list_images(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        model_id: str = "",
        job_id: str = "",
        timeout: float | None = None,
    ) -> Page[GalleryImage]:
        return await self._run(ops.list_images(page_size, page_token, model_id, job_id), timeout)

    async def get_image(
        self, image_id: str, *, metadata_only: bool = False, timeout: float | None = None
    ) -> GalleryImage:
        return await self._run(ops.get_image(image_id, metadata_only), timeout)

    async def delete_images(
        self,
        image_ids: str | Sequence[str] = (),
        *,
        job_id: str = "",
        timeout: float | None = None,
    ) -> DeleteImagesResult:
        return await self._run(ops.delete_images(image_ids, job_id), timeout)

    # ---------------------------------------------------------------------------- training

    async def upload_images(
        self,
        images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        name: str = "",
        dataset_id: str = "",
        chunk_size: int = cv.UPLOAD_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Dataset:
        files = cv.image_files(images)
        requests = cv.upload_requests(
            files, name=name, dataset_id=dataset_id, chunk_size=chunk_size
        )
        pool = self._pools["trainer"]
        try:
            resp = await pool.stub(0).UploadImages(requests, timeout=self._timeout(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="trainer", address=pool.addresses[0]) from None
        return cv.dataset_from_pb(resp)

    async def create_training_job(
        self,
        images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        display_name: str = "",
        job_id: str = "",
        validate_only: bool = False,
        timeout: float | None = None,
        **settings: Unpack[TrainingOptions],
    ) -> TrainingJob:
        spec, files = training_spec(images, config, settings, display_name, job_id)
        if files is not None:
            dataset = await self.upload_images(
                files, name=dataset_name(images, spec), timeout=timeout
            )
            spec.options["dataset_id"] = dataset.dataset_id
        for concept, pictures, name in concept_uploads(spec.options):
            uploaded = await self.upload_images(pictures, name=name, timeout=timeout)
            concept["dataset_id"] = uploaded.dataset_id
        op = ops.create_training_job(spec.options, spec.display_name, spec.job_id, validate_only)
        return await self._run(op, timeout)

    async def get_training_job(self, job_id: str, *, timeout: float | None = None) -> TrainingJob:
        return await self._run(ops.get_training_job(job_id), timeout)

    async def list_training_jobs(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        states: Sequence[TrainingState | str] = (),
        base_model_id: str = "",
        timeout: float | None = None,
    ) -> Page[TrainingJob]:
        return await self._run(
            ops.list_training_jobs(page_size, page_token, states, base_model_id), timeout
        )

    def watch_training_job(
        self,
        job_id: str,
        *,
        include_history: bool = False,
        include_logs: bool = False,
        timeout: float | None = None,
    ) -> AsyncTrainingWatch:
        return AsyncTrainingWatch(
            self,
            job_id,
            include_history,
            include_logs,
            timeout if timeout is not None else self.config.watch_timeout,
        )

    async def wait_for_training_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        on_event: Callable[[TrainingEvent], None] | None = None,
    ) -> TrainingJob:
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.get_training_job(job_id)
        while not job.done:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            ended = False
            async with self.watch_training_job(job_id, timeout=left) as watch:
                async for event in watch:
                    if on_event is not None:
                        on_event(event)
                    if is_terminal_event(event):
                        ended = True
                        break
            job = await self.get_training_job(job_id)
            if not job.done and not ended:
                await asyncio.sleep(0.2)
        return check_training_outcome(job, raise_on_failure)

    async def cancel_training_job(
        self, job_id: str, *, timeout: float | None = None
    ) -> TrainingJob:
        return await self._run(ops.cancel_training_job(job_id), timeout)

    async def resume_training_job(
        self, job_id: str, *, max_train_steps: int = 0, timeout: float | None = None
    ) -> TrainingJob:
        return await self._run(ops.resume_training_job(job_id, max_train_steps), timeout)

    async def delete_training_job(
        self, job_id: str, *, force: bool = False, timeout: float | None = None
    ) -> int:
        return await self._run(ops.delete_training_job(job_id, force), timeout)

    # ------------------------------------------------------------------------------ health

    async def health(self, *, timeout: float = 2.0) -> list[ServiceHealth]:
        out = []
        for service, address, stub, request in self._health_checks():
            try:
                resp = await stub.Check(request, timeout=timeout)
            except grpc.RpcError as err:
                out.append(ServiceHealth(service, address, err.code().name))
            else:
                out.append(health_result(service, address, resp))
        return out


__all__ = ["AsyncBoothStudio", "AsyncGenerationStream", "AsyncTrainingWatch"]
