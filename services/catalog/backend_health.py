"""The backends this Catalog is configured with, and whether each answers.

The local diffusers backend is the Generator (asked over gRPC health); a remote one (A1111,
hosted) is asked over HTTP at its health path. Answers are kept 10 s unless a refresh is asked.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from boothstudio.services.catalog.mapping import backend_proto
from boothstudio.services.diffusion.backends import BACKEND_KINDS, BackendKindInfo, RemoteEndpoint
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.config import ServiceConfig
from boothstudio.shared.errors import NotFound
from boothstudio.v1 import catalog_pb2

DEFAULT_BACKEND = "diffusers"
CACHE_SECONDS = 10.0


class Backends:
    def __init__(
        self, config: ServiceConfig, remotes: dict[str, RemoteEndpoint], device: str
    ) -> None:
        self.config = config
        self.remotes = remotes
        self.device = device
        self._cache: tuple[float, list[catalog_pb2.Backend]] | None = None

    def ids(self) -> list[str]:
        return [DEFAULT_BACKEND, *self.remotes]

    def get(self, backend_id: str, field: str = "backend_id") -> BackendKindInfo:
        """The backend's kind; NOT_FOUND on `field` when it is not configured here."""
        known = self.ids()
        if backend_id not in known:
            raise NotFound(
                f"backend {backend_id!r} is not configured (configured: {', '.join(known)})",
                resource_type="backend",
                resource_name=backend_id,
                field=field,
            )
        return BACKEND_KINDS[backend_id]

    async def with_reachability(self, refresh: bool) -> list[catalog_pb2.Backend]:
        """Every configured backend with its reachability, asked again when older than 10 s."""
        cached = self._cache
        if refresh or cached is None or time.monotonic() - cached[0] > CACHE_SECONDS:
            backends = await asyncio.gather(*(self._check(b) for b in self.ids()))
            cached = (time.monotonic(), list(backends))
            self._cache = cached
        return cached[1]

    async def _check(self, backend_id: str) -> catalog_pb2.Backend:
        msg = backend_proto(backend_id, BACKEND_KINDS[backend_id])
        if backend_id == DEFAULT_BACKEND:
            msg.device = self.device
            address = self.config.address_of("generator")
            msg.reachable, msg.message = await grpc_health(
                address, "boothstudio.v1.GeneratorService"
            )
        else:
            remote = self.remotes[backend_id]
            msg.endpoint = remote.url
            msg.reachable, msg.message = await asyncio.to_thread(http_ping, remote)
        return msg


async def grpc_health(address: str, service: str) -> tuple[bool, str]:
    try:
        async with aio_channel(address) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.5
            )
    except grpc.RpcError as exc:
        return False, f"generator at {address} not reachable: {exc.code().name}"
    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return serving, f"generator at {address}: {status}"


def http_ping(remote: RemoteEndpoint) -> tuple[bool, str]:
    req = urllib.request.Request(remote.url + remote.health_path, headers=remote.headers())
    try:
        with urllib.request.urlopen(req, timeout=2.0) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except Exception as exc:  # connection refused, timeout, HTTP error
        return False, f"not reachable: {exc}"
