"""Client channels (sync and asyncio) with API key metadata, TLS and sane options.

Used by services calling each other (Generator -> Catalog, Trainer -> Catalog) and by the SDK:

    channel = aio_channel("127.0.0.1:50051", api_key=cfg.service_api_key)
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)

Several addresses ("dns:///generator:50052" or "ipv4:10.0.0.1:50052,10.0.0.2:50052") get the
round_robin load-balancing policy so calls spread across servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from boothstudio.shared.auth import API_KEY_HEADER

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(
    address: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if address.startswith(("dns:", "ipv4:", "ipv6:")):
        opts.append(("grpc.lb_policy_name", "round_robin"))
    return opts


def _credentials(
    tls: bool,
    root_ca: bytes | Path | None,
    client_cert: bytes | Path | None,
    client_key: bytes | Path | None,
) -> grpc.ChannelCredentials | None:
    if not tls and root_ca is None:
        return None

    def load(v: bytes | Path | None) -> bytes | None:
        return v.read_bytes() if isinstance(v, Path) else v

    return grpc.ssl_channel_credentials(
        root_certificates=load(root_ca),
        private_key=load(client_key),
        certificate_chain=load(client_cert),
    )


# ------------------------------------------------------------------ metadata interceptors


class _SyncMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, extra: Sequence[tuple[str, str]]) -> None:
        self.extra = list(extra)

    def _details(self, d: Any) -> Any:
        return _ClientCallDetails(
            d.method,
            d.timeout,
            list(d.metadata or []) + self.extra,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iter: Any) -> Any:
        return continuation(self._details(details), request_iter)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iter: Any) -> Any:
        return continuation(self._details(details), request_iter)


class _ClientCallDetails(grpc.ClientCallDetails):
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class _AioMetadataBase:
    def __init__(self, extra: Sequence[tuple[str, str]]) -> None:
        self.extra = list(extra)

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        md = aio.Metadata(*(tuple(d.metadata or ())), *self.extra)
        return aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


class _AioUU(_AioMetadataBase, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUS(_AioMetadataBase, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioSU(_AioMetadataBase, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioSS(_AioMetadataBase, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def auth_metadata(api_key: str | None) -> list[tuple[str, str]]:
    return [(API_KEY_HEADER, api_key)] if api_key else []


# ------------------------------------------------------------------ factories


def aio_channel(
    address: str,
    *,
    api_key: str | None = None,
    tls: bool = False,
    root_ca: bytes | Path | None = None,
    client_cert: bytes | Path | None = None,
    client_key: bytes | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    """An asyncio channel; `api_key` is sent as `x-api-key` on every call."""
    extra = auth_metadata(api_key)
    interceptors: list[Any] = (
        [_AioUU(extra), _AioUS(extra), _AioSU(extra), _AioSS(extra)] if extra else []
    )
    opts = channel_options(address, max_message_bytes) + list(extra_options)
    creds = _credentials(tls, root_ca, client_cert, client_key)
    if creds is None:
        return aio.insecure_channel(address, options=opts, interceptors=interceptors)
    return aio.secure_channel(address, creds, options=opts, interceptors=interceptors)


def sync_channel(
    address: str,
    *,
    api_key: str | None = None,
    tls: bool = False,
    root_ca: bytes | Path | None = None,
    client_cert: bytes | Path | None = None,
    client_key: bytes | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A blocking channel; `api_key` is sent as `x-api-key` on every call."""
    opts = channel_options(address, max_message_bytes) + list(extra_options)
    creds = _credentials(tls, root_ca, client_cert, client_key)
    channel = (
        grpc.insecure_channel(address, options=opts)
        if creds is None
        else grpc.secure_channel(address, creds, options=opts)
    )
    extra = auth_metadata(api_key)
    return grpc.intercept_channel(channel, _SyncMetadata(extra)) if extra else channel
