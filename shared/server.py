"""The one way to run a BoothStudio service.

A service module provides a `build(ctx: ServiceContext) -> ServiceSpec` function; its
`__main__.py` calls `run_service("catalog", build)`. The runner then:

- loads the configuration (flags, BOOTHSTUDIO_* env, optional YAML; see shared.config);
- starts a grpc.aio server with interceptors (metrics, logging, auth, exception mapping),
  the grpc.health.v1 health service (overall "" and per-service status) and server reflection
  (v1 and v1alpha);
- serves Prometheus /metrics on --metrics-port (gRPC server metrics + boothstudio_build_info);
- optionally serves TLS (and mTLS when a client CA is set);
- on SIGTERM/SIGINT: marks health NOT_SERVING, sets ctx.draining, calls the service's
  `on_drain(grace)` hook (stop taking work, finish or checkpoint) while the server lets
  in-flight RPCs finish for up to the grace period, then calls `on_stop()` and exits 0.
  A second signal cuts the grace period short.

Example::

    def build(ctx: ServiceContext) -> ServiceSpec:
        servicer = CatalogServicer(ctx)
        return ServiceSpec.for_servicer(
            catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"],
            servicer,
            catalog_pb2_grpc.add_CatalogServiceServicer_to_server,
            on_drain=servicer.drain,
        )
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from boothstudio.shared import metrics
from boothstudio.shared.auth import Authenticator
from boothstudio.shared.channels import aio_channel
from boothstudio.shared.config import ConfigError, ServiceConfig, load_config
from boothstudio.shared.interceptors import (
    AuthInterceptor,
    Context,
    ErrorInterceptor,
    LoggingInterceptor,
    MetricsInterceptor,
    RequestCheckInterceptor,
)
from boothstudio.shared.logs import configure_logging
from boothstudio.shared.reflection import enable_server_reflection
from boothstudio.shared.version import __version__

#: The type of a servicer method's `context` argument (grpc.aio.ServicerContext).
RpcContext = Context
DrainHook = Callable[[float], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceSpec:
    """What a service contributes to the server.

    Attributes:
        descriptor: the protobuf ServiceDescriptor (for health, reflection and metrics).
        register: adds the servicer to the server, e.g. a bound `add_XServicer_to_server`.
        on_start: awaited after the server starts listening, before health says SERVING.
        on_drain: awaited on shutdown with the grace period in seconds: stop taking new work,
            finish or checkpoint what runs. Runs while in-flight RPCs are still allowed.
        on_stop: awaited after the server stopped: release resources (close DBs, workers).
    """

    descriptor: Any
    register: Callable[[aio.Server], None]
    on_start: Hook | None = None
    on_drain: DrainHook | None = None
    on_stop: Hook | None = None

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)

    @classmethod
    def for_servicer(
        cls,
        descriptor: Any,
        servicer: Any,
        add_to_server: Callable[[Any, aio.Server], None],
        **hooks: Any,
    ) -> ServiceSpec:
        return cls(descriptor, lambda server: add_to_server(servicer, server), **hooks)


@dataclass
class ServiceContext:
    """Handed to a service's build function."""

    config: ServiceConfig
    logger: logging.Logger
    health: health.aio.HealthServicer
    #: set when shutdown starts; servicers should refuse new work with errors.Unavailable
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def channel_to(self, service: str) -> aio.Channel:
        """An asyncio channel to another service ("catalog", "generator", "trainer"), carrying
        this service's `service_api_key` and using TLS when `root_ca` is configured.

        The caller owns the channel (close it in the service's on_stop hook)."""
        cfg = self.config
        return aio_channel(
            cfg.address_of(service),
            api_key=cfg.service_api_key or None,
            root_ca=cfg.root_ca,
            max_message_bytes=cfg.max_message_bytes,
        )

    async def set_serving(self, service: str, serving: bool) -> None:
        """Report one service's health (e.g. NOT_SERVING while its backend is down)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(service, status)


Builder = Callable[[ServiceContext], "ServiceSpec | Sequence[ServiceSpec]"]


def _server_credentials(config: ServiceConfig) -> grpc.ServerCredentials | None:
    if config.tls is None:
        return None
    try:
        key = config.tls.key.read_bytes()
        cert = config.tls.cert.read_bytes()
        ca = config.tls.client_ca.read_bytes() if config.tls.client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class ServiceServer:
    """A configured, startable service server (used by run_service and by in-process tests)."""

    def __init__(self, config: ServiceConfig, build: Builder) -> None:
        self.config = config
        self.build = build
        self.logger = logging.getLogger(f"boothstudio.{config.service}")
        self.server: aio.Server | None = None
        self.ctx: ServiceContext | None = None
        self.specs: list[ServiceSpec] = []
        self.port = config.port
        self.metrics_server: metrics.MetricsServer | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        health_servicer = health.aio.HealthServicer()
        self.ctx = ServiceContext(config=cfg, logger=self.logger, health=health_servicer)
        built = self.build(self.ctx)
        self.specs = [built] if isinstance(built, ServiceSpec) else list(built)

        interceptors: list[aio.ServerInterceptor] = [
            MetricsInterceptor(),
            LoggingInterceptor(),
            AuthInterceptor(Authenticator(cfg.api_keys)),
            ErrorInterceptor(),
            RequestCheckInterceptor(),
        ]
        options = [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            # Clients ping every 60 s (shared.channels); the server's default floor is 5 min,
            # which answers such pings with GOAWAY "too_many_pings" and kills quiet streams.
            ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
            ("grpc.http2.min_time_between_pings_ms", 30_000),
        ]
        self.server = aio.server(interceptors=interceptors, options=options)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        for spec in self.specs:
            spec.register(self.server)
            metrics.preregister(spec.descriptor)
        names = [s.full_name for s in self.specs]
        enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], self.server
        )
        address = f"{cfg.host}:{cfg.port}"
        creds = _server_credentials(cfg)
        try:
            if creds is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise ConfigError(f"cannot bind {address}: {exc}") from exc
        if self.port == 0:
            raise ConfigError(f"cannot bind {address} (port in use?)")

        metrics.set_build_info(cfg.service, __version__)
        if cfg.metrics_port:
            self.metrics_server = metrics.MetricsServer(cfg.host, cfg.metrics_port)
            try:
                self.metrics_server.start()
            except OSError as exc:
                raise ConfigError(f"cannot bind metrics port {cfg.metrics_port}: {exc}") from exc

        await self.server.start()
        for spec in self.specs:
            if spec.on_start is not None:
                await spec.on_start()
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.logger.info(
            "serving",
            extra={
                "address": f"{cfg.host}:{self.port}",
                "metrics_port": self.metrics_server.port if self.metrics_server else 0,
                "services": names,
                "tls": cfg.tls is not None,
                "auth": cfg.auth_enabled,
                "version": __version__,
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, on_drain hooks + server.stop(grace), on_stop hooks."""
        if self.server is None or self.ctx is None or self._stopped.is_set():
            return
        grace = self.config.grace_period if grace is None else grace
        self.logger.info("shutting down", extra={"grace_period": grace})
        self.ctx.draining.set()
        await self.ctx.health.enter_graceful_shutdown()

        async def drain_hooks() -> None:
            hooks = [s.on_drain(grace) for s in self.specs if s.on_drain is not None]
            if hooks:
                results = await asyncio.gather(*hooks, return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException):
                        self.logger.error("drain hook failed", exc_info=r)

        deadline = asyncio.get_running_loop().time() + grace
        drain = asyncio.ensure_future(drain_hooks())
        try:
            await self.server.stop(grace)
            remaining = deadline - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drain), timeout=max(remaining, 0.1))
        finally:
            if not drain.done():
                self.logger.warning("drain hooks did not finish within the grace period")
                drain.cancel()
            for spec in self.specs:
                if spec.on_stop is not None:
                    try:
                        await spec.on_stop()
                    except Exception:
                        self.logger.exception("stop hook failed")
            if self.metrics_server is not None:
                self.metrics_server.stop()
            self._stopped.set()
            self.logger.info("stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(config: ServiceConfig, build: Builder) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
    srv = ServiceServer(config, build)
    await srv.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    signals_seen = 0
    background: set[asyncio.Future[None]] = set()

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals_seen
        signals_seen += 1
        srv.logger.info("signal received", extra={"signal": sig.name})
        if signals_seen == 1:
            stop_requested.set()
        elif srv.server is not None:
            # second signal: cut the grace period short
            task = asyncio.ensure_future(srv.server.stop(0))
            background.add(task)
            task.add_done_callback(background.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await stop_requested.wait()
    await srv.stop()
    return 0


def run_service(service: str, build: Builder, argv: Sequence[str] | None = None) -> int:
    """Entry point for `python -m boothstudio.services.<service>`: returns the process exit code."""
    try:
        config = load_config(service, argv)
    except ConfigError as exc:
        print(f"boothstudio {service}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(service, config.log_level, config.log_format)
    try:
        return asyncio.run(serve(config, build))
    except ConfigError as exc:
        logging.getLogger(f"boothstudio.{service}").error("cannot start: %s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


def exit_service(service: str, build: Builder) -> NoReturn:
    """`python -m boothstudio.services.<service>`: run the service, then leave the process at once.

    Once the stop hooks have run, a thread may still be inside work that cannot be interrupted
    (a model load, a training step): Python would join it at exit (executor threads are not
    daemons) and hold SIGTERM past the grace period. Nothing it does can matter any more, so
    flush what was said and exit without waiting for it.
    """
    code = run_service(service, build)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
