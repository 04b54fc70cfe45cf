"""Machinery shared by the sync and asyncio clients: configuration, channel pools with
round-robin, stream book-keeping and the training-job preparation steps."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc

from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk.concepts import settings_only
from boothstudio.clients.sdk.config import (
    ClientConfig,
    RetryPolicy,
    RetryState,
    ServiceName,
    TLSOptions,
)
from boothstudio.clients.sdk.errors import InvalidArgument, NotFound, TrainingJobFailed, invalid
from boothstudio.clients.sdk.types import ServiceHealth, TrainingEvent, TrainingJob, TrainingState
from boothstudio.v1 import catalog_pb2_grpc, generator_pb2_grpc, trainer_pb2_grpc

C = TypeVar("C")

STUBS: dict[ServiceName, Callable[[Any], Any]] = {
    "catalog": catalog_pb2_grpc.CatalogServiceStub,
    "generator": generator_pb2_grpc.GeneratorServiceStub,
    "trainer": trainer_pb2_grpc.TrainerServiceStub,
}
SERVICES: tuple[ServiceName, ...] = ("catalog", "generator", "trainer")
FULL_NAMES: dict[ServiceName, str] = {
    "catalog": "boothstudio.v1.CatalogService",
    "generator": "boothstudio.v1.GeneratorService",
    "trainer": "boothstudio.v1.TrainerService",
}


class Pool(Generic[C]):
    """The channels (created on first use) of one service; `next_index()` is round-robin."""

    def __init__(
        self, service: ServiceName, addresses: Sequence[str], factory: Callable[[str], C]
    ) -> None:
        self.service = service
        self.addresses = list(addresses)
        self._factory = factory
        self._channels: dict[int, C] = {}
        self._stubs: dict[int, Any] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self.addresses)

    def next_index(self) -> int:
        return next(self._counter) % len(self.addresses)

    def channel(self, index: int) -> C:
        if index not in self._channels:
            self._channels[index] = self._factory(self.addresses[index])
        return self._channels[index]

    def stub(self, index: int) -> Any:
        if index not in self._stubs:
            self._stubs[index] = STUBS[self.service](self.channel(index))
        return self._stubs[index]

    def order_from_next(self) -> list[int]:
        """Every index once, starting at the next round-robin one."""
        start = self.next_index()
        n = len(self.addresses)
        return [(start + k) % n for k in range(n)]

    def open_channels(self) -> list[C]:
        channels = list(self._channels.values())
        self._channels.clear()
        self._stubs.clear()
        return channels


class ClientBase(Generic[C]):
    """Configuration and channel pools. Subclasses supply the channel factory."""

    def __init__(
        self,
        catalog: str | None = None,
        generator: str | Sequence[str] | None = None,
        trainer: str | None = None,
        *,
        host: str | None = None,
        api_key: str | None = None,
        tls: bool | TLSOptions | None = None,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        client_certificate: bytes | str | os.PathLike[str] | None = None,
        client_key: bytes | str | os.PathLike[str] | None = None,
        server_name: str | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self.config = config or ClientConfig.resolve(
            catalog,
            generator,
            trainer,
            host=host,
            api_key=api_key,
            tls=tls,
            root_certificates=root_certificates,
            client_certificate=client_certificate,
            client_key=client_key,
            server_name=server_name,
            timeout=timeout,
            retry=retry,
        )
        self._pools: dict[ServiceName, Pool[C]] = {
            s: Pool(s, self.config.address(s), self._make_channel) for s in SERVICES
        }

    def _make_channel(self, address: str) -> C:
        raise NotImplementedError

    def _channel_kwargs(self) -> dict[str, Any]:
        """Arguments for shared.channels' factories (API key interceptor, TLS, options)."""
        c = self.config
        tls = c.tls
        return {
            "api_key": c.api_key or None,
            "tls": tls is not None,
            "root_ca": tls.root_certificates if tls else None,
            "client_cert": tls.client_certificate if tls else None,
            "client_key": tls.client_key if tls else None,
            "max_message_bytes": c.max_message_bytes,
            "extra_options": c.grpc_options(),
        }

    def _timeout(self, timeout: float | None) -> float:
        return self.config.timeout if timeout is None else timeout

    def stub(self, service: ServiceName, index: int = 0) -> Any:
        """The raw generated stub of a service, on the client's channel (API key, TLS and
        message limits included), for callers who want the protobuf API.

        `index` picks one of several generator addresses."""
        return self._pools[service].stub(index)

    def _health_checks(self) -> list[tuple[ServiceName, str, Any, Any]]:
        """(service, address, health stub, request) for every service address."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        checks = []
        for service, pool in self._pools.items():
            request = health_pb2.HealthCheckRequest(service=FULL_NAMES[service])
            for i, address in enumerate(pool.addresses):
                channel: Any = pool.channel(i)
                checks.append((service, address, health_pb2_grpc.HealthStub(channel), request))
        return checks

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}(catalog={c.catalog!r}, generator={list(c.generators)!r}, "
            f"trainer={c.trainer!r})"
        )


def health_result(service: ServiceName, address: str, resp: Any) -> ServiceHealth:
    from grpc_health.v1 import health_pb2

    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return ServiceHealth(service, address, status)


class StreamState:
    """Book-keeping of one server stream across reconnects (shared by sync and asyncio).

    `resume_anytime=False` (Generate): reconnect only if nothing was received yet.
    `resume_anytime=True` (WatchTrainingJob): reconnect whenever UNAVAILABLE, replaying history
    and dropping events already seen (by sequence number)."""

    def __init__(self, policy: RetryPolicy, timeout: float | None, resume_anytime: bool) -> None:
        self.retry = RetryState(policy, timeout, idempotent=True)
        self.resume_anytime = resume_anytime
        self.received = 0
        self.last_sequence = -1  # highest sequence delivered
        self.resume_after = -1  # after a reconnect: events up to here were already delivered
        self.closed = False
        # The live call and the channel index. They live here, not on the stream object, so
        # that the event generator does not reference the stream: dropping the stream (e.g.
        # breaking out of a for loop) then frees it at once and its __del__ cancels the call.
        self.call: Any = None
        self.index = 0

    def reconnecting(self) -> None:
        self.resume_after = self.last_sequence

    def seen(self, sequence: int) -> bool:
        """True when an event with this sequence number was delivered before a reconnect (the
        replayed history repeats it)."""
        if sequence and sequence <= self.resume_after:
            return True
        self.last_sequence = max(self.last_sequence, sequence)
        return False

    def got_event(self) -> None:
        self.received += 1
        if self.resume_anytime:
            self.retry.attempt = 0  # a healthy stream earns a fresh retry budget

    def retry_delay(self, err: grpc.RpcError) -> float | None:
        if self.closed or (self.received and not self.resume_anytime):
            return None
        return self.retry.retry_delay(err)


def training_spec(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    config: str | os.PathLike[str] | Mapping[str, Any] | None,
    fields: Mapping[str, Any],
    display_name: str,
    job_id: str,
) -> tuple[cv.TrainingSpec, list[Path] | None]:
    """Merge a YAML file or mapping, keyword settings and an image folder into one job spec.

    Everything is checked locally (unknown settings, bad enum names, missing images) before
    anything is uploaded."""
    if isinstance(config, str | os.PathLike):
        spec = cv.load_training_yaml(config)
    else:
        spec = cv.TrainingSpec(options=dict(config or {}))
    spec.options.update({k: v for k, v in fields.items() if v is not None})
    spec.display_name = display_name or spec.display_name
    spec.job_id = job_id or spec.job_id
    # validate now: fail before uploading (a concept's `images` are uploaded, not a setting)
    concepts = spec.options.get("concepts") or []
    pictures = [c.get("images") if isinstance(c, Mapping) else None for c in concepts]
    cv.dreambooth_config(settings_only(spec.options))
    for i, source in enumerate(pictures):
        if source is not None:
            try:
                cv.image_files(source)
            except InvalidArgument as exc:
                raise invalid(f"config.concepts[{i}].images", str(exc)) from None
    source = images if images is not None else spec.images
    files = cv.image_files(source) if source is not None else None
    if (
        files is None
        and not concepts
        and not spec.options.get("dataset_id")
        and not spec.options.get("instance_images")
    ):
        raise invalid("images", "give a folder of instance images (or a dataset_id)")
    return spec, files


def dataset_name(images: Any, spec: cv.TrainingSpec) -> str:
    if spec.display_name:
        return spec.display_name
    if isinstance(images, str | os.PathLike):
        return Path(images).name
    if isinstance(spec.images, Path):
        return spec.images.name
    return ""


def check_training_outcome(job: TrainingJob, raise_on_failure: bool) -> TrainingJob:
    if raise_on_failure and job.state in (TrainingState.FAILED, TrainingState.CANCELLED):
        what = "failed" if job.state is TrainingState.FAILED else "was cancelled"
        detail = f": {job.failure_message}" if job.failure_message else ""
        exc = TrainingJobFailed(
            f"training job {job.job_id} {what}{detail}",
            reason=job.failure_reason or job.state.value.upper(),
        )
        exc.job = job
        raise exc
    return job


def is_terminal_event(event: TrainingEvent) -> bool:
    from boothstudio.clients.sdk.types import StateChanged

    return isinstance(event, StateChanged) and event.state.terminal


def fanout_result(results: list[Any], errors: list[BaseException], combine: Any) -> Any:
    """Combine the answers of a call sent to every channel: NOT_FOUND answers count only when
    every channel gave one."""
    if results:
        return combine(results) if combine is not None else results[0]
    for e in errors:
        if not isinstance(e, NotFound):
            raise e
    raise errors[0]
