"""The synchronous client (grpc sync channels)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, Unpack

import grpc

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
from boothstudio.shared.channels import sync_channel

T = TypeVar("T")
EventT = TypeVar("EventT")


class _EventStream(Generic[EventT]):
    """What both streams share: iteration, and closing with `close()`, a ``with`` block or when
    dropped."""

    _state: StreamState
    _it: Generator[EventT, None, None]

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> EventT:
        return next(self._it)

    def close(self) -> None:
        """Stop reading and cancel the RPC (for a generation, the server cancels the job)."""
        _close(self._state, self._it)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class GenerationStream(_EventStream[GenerateEvent]):
    """The events of one generation, as an iterator.

    Leaving it early cancels the job: break out of the ``for`` loop (the stream is closed when
    dropped), use it as a context manager, or call `close()`. `cancel()` asks the server to
    cancel and keeps the stream open, so the final `Finished` (status CANCELLED) still arrives.
    """

    def __init__(self, client: BoothStudio, request: Any, timeout: float | None) -> None:
        self._client = client
        self._request = request
        self._pool = client._pools["generator"]
        self._state = StreamState(client.config.retry, timeout, resume_anytime=False)
        self._state.index = self._pool.next_index()
        self._it = _generate_events(self._pool, request, self._state)

    @property
    def job_id(self) -> str:
        """The job id (chosen by the SDK before the request is sent)."""
        return str(self._request.job_id)

    @property
    def address(self) -> str:
        """The generator address serving this stream."""
        return self._pool.addresses[self._state.index]

    def cancel(self, timeout: float | None = None) -> bool:
        """Ask the generator to cancel the job; the stream then ends with Finished(CANCELLED).

        Returns False when the job had already finished."""
        op = ops.cancel_generation(self.job_id)
        timeout_s = self._client._timeout(timeout)
        try:
            return bool(self._client._invoke(op, self._state.index, timeout_s))
        except NotFound:
            return False


def _close(st: StreamState, it: Generator[Any, None, None]) -> None:
    if st.closed:
        return
    st.closed = True
    if st.call is not None:
        st.call.cancel()
    with contextlib.suppress(ValueError):  # closing from another thread while it runs
        it.close()


def _generate_events(
    pool: Pool[grpc.Channel], request: Any, st: StreamState
) -> Generator[GenerateEvent, None, None]:
    while True:
        st.call = pool.stub(st.index).Generate(request, timeout=st.retry.start_attempt())
        try:
            for resp in st.call:
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
            time.sleep(delay)
            st.index = pool.next_index()  # try another generator, if any


def _watch_events(
    pool: Pool[grpc.Channel], job_id: str, history: bool, logs: bool, st: StreamState
) -> Generator[TrainingEvent, None, None]:
    while True:
        req = cv.watch_request(job_id, history or st.received > 0, logs)
        st.call = pool.stub(0).WatchTrainingJob(req, timeout=st.retry.start_attempt())
        try:
            for resp in st.call:
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
            time.sleep(delay)


class TrainingWatch(_EventStream[TrainingEvent]):
    """The events of a training job, as an iterator; ends when the job reaches a final state.

    Reconnects by itself when the trainer is briefly unavailable (events are not repeated).
    Leave it with ``break``, a ``with`` block or `close()`."""

    def __init__(
        self,
        client: BoothStudio,
        job_id: str,
        include_history: bool,
        include_logs: bool,
        timeout: float | None,
    ) -> None:
        self.job_id = job_id
        self._state = StreamState(client.config.retry, timeout, resume_anytime=True)
        self._it = _watch_events(
            client._pools["trainer"], job_id, include_history, include_logs, self._state
        )


class BoothStudio(ClientBase[grpc.Channel]):
    """Synchronous client of the Catalog, Generator and Trainer services.

    ``BoothStudio()`` reads BOOTHSTUDIO_CATALOG / _GENERATOR / _TRAINER (defaults
    localhost:50051/50052/50053) and BOOTHSTUDIO_API_KEY. Give several generator addresses
    (a list, or comma-separated) to spread generations over them round-robin. Every unary
    call has a deadline (`timeout`, default 30 s); idempotent calls are retried with
    exponential backoff when a service is UNAVAILABLE. Errors are raised as
    `boothstudio.clients.sdk.errors` exceptions. Use as a context manager, or call `close()`.
    """

    def _make_channel(self, address: str) -> grpc.Channel:
        return sync_channel(address, **self._channel_kwargs())

    def close(self) -> None:
        """Close every channel (streams still open are cancelled)."""
        for pool in self._pools.values():
            for channel in pool.open_channels():
                channel.close()

    def __enter__(self) -> BoothStudio:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------- call machinery

    def _invoke(self, op: ops.UnaryOp[T], index: int | None, timeout: float) -> T:
        """One call with retries; index None = round-robin (moving on after a failure)."""
        pool = self._pools[op.service]
        state = RetryState(self.config.retry, timeout, op.idempotent)
        i = pool.next_index() if index is None else index
        while True:
            try:
                resp = getattr(pool.stub(i), op.method)(op.request, timeout=state.start_attempt())
            except grpc.RpcError as err:
                delay = state.retry_delay(err)
                if delay is None:
                    raise from_rpc_error(
                        err, service=op.service, address=pool.addresses[i]
                    ) from None
                time.sleep(delay)
                if index is None:
                    i = pool.next_index()
                continue
            return op.parse(resp)

    def _run(self, op: ops.UnaryOp[T], timeout: float | None = None) -> T:
        t = self._timeout(timeout)
        pool = self._pools[op.service]
        if op.fanout == "one" or len(pool) == 1:
            return self._invoke(op, None, t)
        results: list[T] = []
        errors: list[BaseException] = []
        for i in pool.order_from_next():
            try:
                result = self._invoke(op, i, t)
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

    def list_models(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        kind: ModelKind | str | None = None,
        backend_id: str = "",
        base_model_id: str = "",
        timeout: float | None = None,
    ) -> Page[Model]:
        """One page of registered models, newest first (filters: kind, backend, base model)."""
        op = ops.list_models(page_size, page_token, kind, backend_id, base_model_id)
        return self._run(op, timeout)

    def get_model(self, model_id: str, *, timeout: float | None = None) -> Model:
        """One model by id (NotFound when unknown)."""
        return self._run(ops.get_model(model_id), timeout)

    def import_model(
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
        """Register a model from a diffusers folder, a single .safetensors/.ckpt file or a
        Hugging Face cache id (`source_type` "auto" guesses which). `preview`: a picture for
        it (bytes or a file's path). Returns the model; its `warnings` hold the server's
        remarks."""
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
        return self._run(op, timeout)

    def get_model_preview(self, model_id: str, *, timeout: float | None = None) -> bytes:
        """A model's preview as PNG bytes, at most 512 px a side (NotFound when the model has
        none: see Model.has_preview)."""
        return self._run(ops.get_model_preview(model_id), timeout)

    def delete_model(
        self, model_id: str, *, delete_files: bool = False, timeout: float | None = None
    ) -> int:
        """Remove a model from the catalog; returns the bytes freed on disk."""
        return self._run(ops.delete_model(model_id, delete_files), timeout)

    def list_samplers(
        self, *, backend_id: str = "", model_id: str = "", timeout: float | None = None
    ) -> SamplerList:
        """The samplers of a backend (or a model's backend), with schedules and option schemas."""
        return self._run(ops.list_samplers(backend_id, model_id), timeout)

    def list_backends(
        self, *, refresh: bool = False, timeout: float | None = None
    ) -> list[Backend]:
        """The generation backends, their reachability and capabilities."""
        return self._run(ops.list_backends(refresh), timeout)

    # -------------------------------------------------------------------------- generation

    def stream_generate(
        self, prompt: str, *, timeout: float | None = None, **params: Unpack[GenerateParams]
    ) -> GenerationStream:
        """Start a generation and iterate its events: Queued, Started, Progress (step, total,
        eta, preview), ImageReady (one per image), Finished. See `GenerationStream`."""
        request = cv.generate_request(prompt, params)
        return GenerationStream(
            self, request, timeout if timeout is not None else self.config.generate_timeout
        )

    def generate(
        self,
        prompt: str,
        *,
        timeout: float | None = None,
        on_event: Callable[[GenerateEvent], None] | None = None,
        **params: Unpack[GenerateParams],
    ) -> GenerationResult:
        """Generate images and return them (a list of GeneratedImage with `.seeds`, `.job_id`).

        Options (all optional): negative_prompt, model_id, sampler, schedule, steps,
        cfg_scale, width, height, seed, count; img2img: init_image, strength; inpainting: mask,
        mask_blur, invert_mask, mask_fill; sampler_options, backend_options. Raises
        GenerationFailed when the job fails and Cancelled when it is cancelled."""
        collector = cv.GenerationCollector()
        with self.stream_generate(prompt, timeout=timeout, **params) as stream:
            for event in stream:
                collector.add(event)
                if on_event is not None:
                    on_event(event)
        return collector.result()

    def cancel_generation(self, job_id: str, *, timeout: float | None = None) -> bool:
        """Cancel a queued or running generation job; False when it had already finished."""
        try:
            return self._run(ops.cancel_generation(job_id), timeout)
        except NotFound:
            return False

    # ----------------------------------------------------------------------------- gallery

    def list_images(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        model_id: str = "",
        job_id: str = "",
        timeout: float | None = None,
    ) -> Page[GalleryImage]:
        """One page of gallery images (metadata only), newest first."""
        return self._run(ops.list_images(page_size, page_token, model_id, job_id), timeout)

    def get_image(
        self, image_id: str, *, metadata_only: bool = False, timeout: float | None = None
    ) -> GalleryImage:
        """One gallery image with its PNG bytes (unless metadata_only) and parameters."""
        return self._run(ops.get_image(image_id, metadata_only), timeout)

    def delete_images(
        self,
        image_ids: str | Sequence[str] = (),
        *,
        job_id: str = "",
        timeout: float | None = None,
    ) -> DeleteImagesResult:
        """Delete gallery images by id, and/or every image of a generation job."""
        return self._run(ops.delete_images(image_ids, job_id), timeout)

    # ---------------------------------------------------------------------------- training

    def upload_images(
        self,
        images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        name: str = "",
        dataset_id: str = "",
        chunk_size: int = cv.UPLOAD_CHUNK_BYTES,
        timeout: float | None = None,
    ) -> Dataset:
        """Upload a folder (or list) of images in chunks; returns the dataset to train on."""
        files = cv.image_files(images)
        requests = cv.upload_requests(
            files, name=name, dataset_id=dataset_id, chunk_size=chunk_size
        )
        pool = self._pools["trainer"]
        try:
            resp = pool.stub(0).UploadImages(requests, timeout=self._timeout(timeout))
        except grpc.RpcError as err:
            raise from_rpc_error(err, service="trainer", address=pool.addresses[0]) from None
        return cv.dataset_from_pb(resp)

    def create_training_job(
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
        """Create (and queue) a DreamBooth job.

        `images`: a folder (or list) of instance images, uploaded in chunks first. `config`: a
        YAML file path or a mapping of DreamBoothConfig settings (a YAML file may name its
        `images` folder, relative to the file). Keyword settings override both, e.g.
        ``create_training_job("photos/", class_noun="dog", max_train_steps=200)``."""
        spec, files = training_spec(images, config, settings, display_name, job_id)
        if files is not None:
            dataset = self.upload_images(files, name=dataset_name(images, spec), timeout=timeout)
            spec.options["dataset_id"] = dataset.dataset_id
        for concept, pictures, name in concept_uploads(spec.options):
            concept["dataset_id"] = self.upload_images(pictures, name=name,
                                                       timeout=timeout).dataset_id
        op = ops.create_training_job(spec.options, spec.display_name, spec.job_id, validate_only)
        return self._run(op, timeout)

    def get_training_job(self, job_id: str, *, timeout: float | None = None) -> TrainingJob:
        return self._run(ops.get_training_job(job_id), timeout)

    def list_training_jobs(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        states: Sequence[TrainingState | str] = (),
        base_model_id: str = "",
        timeout: float | None = None,
    ) -> Page[TrainingJob]:
        """One page of training jobs, newest first."""
        return self._run(
            ops.list_training_jobs(page_size, page_token, states, base_model_id), timeout
        )

    def watch_training_job(
        self,
        job_id: str,
        *,
        include_history: bool = False,
        include_logs: bool = False,
        timeout: float | None = None,
    ) -> TrainingWatch:
        """Iterate a job's events (StateChanged, TrainingProgress with loss, SampleReady,
        CheckpointSaved, LogMessage, ...) until it reaches a final state."""
        return TrainingWatch(
            self,
            job_id,
            include_history,
            include_logs,
            timeout if timeout is not None else self.config.watch_timeout,
        )

    def wait_for_training_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        on_event: Callable[[TrainingEvent], None] | None = None,
    ) -> TrainingJob:
        """Block until the job ends; returns it (TrainingJobFailed when it failed or was
        cancelled, unless raise_on_failure=False). `timeout` None waits for ever."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get_training_job(job_id)
        while not job.done:
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            ended = False
            with self.watch_training_job(job_id, timeout=left) as watch:
                for event in watch:
                    if on_event is not None:
                        on_event(event)
                    if is_terminal_event(event):
                        ended = True
                        break
            job = self.get_training_job(job_id)
            if not job.done and not ended:
                time.sleep(0.2)  # the stream closed early: look again
        return check_training_outcome(job, raise_on_failure)

    def cancel_training_job(self, job_id: str, *, timeout: float | None = None) -> TrainingJob:
        """Cancel a job (a running one stops at the next step and leaves a checkpoint)."""
        return self._run(ops.cancel_training_job(job_id), timeout)

    def resume_training_job(
        self, job_id: str, *, max_train_steps: int = 0, timeout: float | None = None
    ) -> TrainingJob:
        """Re-queue a cancelled or failed job from its last checkpoint (optionally longer)."""
        return self._run(ops.resume_training_job(job_id, max_train_steps), timeout)

    def delete_training_job(
        self, job_id: str, *, force: bool = False, timeout: float | None = None
    ) -> int:
        """Delete a finished job and its files (force: cancel it first); returns bytes freed."""
        return self._run(ops.delete_training_job(job_id, force), timeout)

    # ------------------------------------------------------------------------------ health

    def health(self, *, timeout: float = 2.0) -> list[ServiceHealth]:
        """The grpc.health.v1 status of every service address (never raises)."""
        out = []
        for service, address, stub, request in self._health_checks():
            try:
                resp = stub.Check(request, timeout=timeout)
            except grpc.RpcError as err:
                out.append(ServiceHealth(service, address, err.code().name))
            else:
                out.append(health_result(service, address, resp))
        return out


__all__ = ["BoothStudio", "GenerationStream", "TrainingWatch"]
