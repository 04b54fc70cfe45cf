"""Prometheus metrics: the usual gRPC server metrics, build info, and the /metrics endpoint.

Metric names follow go-grpc-prometheus / grpc-ecosystem conventions:

- grpc_server_started_total{grpc_type, grpc_service, grpc_method}
- grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}
- grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method} (histogram)
- grpc_server_msg_sent_total{grpc_type, grpc_service, grpc_method} (streamed responses)
- boothstudio_build_info{component, version, python_version, grpc_version}

`component` (catalog, generator, trainer) is not called `service`: scrape configs commonly attach
a `service` target label, and Prometheus would rename a clashing series label to
`exported_service`. The `*_created` sample of every counter and histogram is switched off: it
doubles the series without saying anything a rate() needs.

Services add their own metrics with prometheus_client in the default registry, named
`boothstudio_<service>_<what>_<unit>` (e.g. boothstudio_generator_queue_depth).
"""

from __future__ import annotations

import platform
import threading
from typing import Any

import grpc
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import start_http_server

disable_created_metrics()  # type: ignore[no-untyped-call]

LABELS = ("grpc_type", "grpc_service", "grpc_method")

GRPC_STARTED = Counter(
    "grpc_server_started",
    "Total number of RPCs started on the server.",
    LABELS,
)
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*LABELS, "grpc_code"),
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled "
    "by the server.",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
GRPC_MSG_SENT = Counter(
    "grpc_server_msg_sent",
    "Total number of gRPC stream messages sent by the server.",
    LABELS,
)
BUILD_INFO = Info("boothstudio_build", "BoothStudio build information.")


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    """grpc_type label value: unary, client_stream, server_stream, bidi_stream."""
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    if response_streaming:
        return "server_stream"
    return "unary"


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def preregister(service_descriptor: Any) -> None:
    """Create zero-valued series for every method of a service (so rates start at 0)."""
    for m in service_descriptor.methods:
        labels = (
            grpc_type(m.client_streaming, m.server_streaming),
            service_descriptor.full_name,
            m.name,
        )
        GRPC_STARTED.labels(*labels)
        GRPC_HANDLED.labels(*labels, grpc.StatusCode.OK.name)
        GRPC_HANDLING_SECONDS.labels(*labels)


def set_build_info(service: str, version: str) -> None:
    BUILD_INFO.info(
        {
            "component": service,
            "version": version,
            "python_version": platform.python_version(),
            "grpc_version": grpc.__version__,
        }
    )


class MetricsServer:
    """The /metrics HTTP endpoint, served from a background thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        self.host, self.port, self.registry = host, port, registry
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
