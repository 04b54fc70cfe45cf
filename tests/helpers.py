"""Start BoothStudio services as real OS processes on loopback, for end-to-end tests.

    from tests.helpers import start_service

    svc = start_service("catalog", env={"BOOTHSTUDIO_API_KEYS": "k=admin"})
    try:
        stub = catalog_pb2_grpc.CatalogServiceStub(svc.channel(api_key="k"))
        ...
    finally:
        svc.stop()

or, in a test, the `start_service` fixture from conftest.py (stops everything at teardown):

    def test_x(start_service):
        svc = start_service("generator", extra_args=["--set", "queue_size=2"])

Each process gets free ports, its own temporary data dir (unless given), a log file
(`svc.logs()`), and is ready when grpc.health.v1 reports its service SERVING.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from boothstudio.shared.channels import sync_channel

ROOT = Path(__file__).resolve().parent.parent

SERVICE_FULL_NAMES = {
    "catalog": "boothstudio.v1.CatalogService",
    "generator": "boothstudio.v1.GeneratorService",
    "trainer": "boothstudio.v1.TrainerService",
}

_used_ports: set[int] = set()


def free_port() -> int:
    """A currently free loopback TCP port (not handed out before in this test session)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _used_ports:
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port found")


@dataclass
class ServiceProcess:
    """A running service process."""

    name: str
    address: str  # "127.0.0.1:PORT"
    port: int
    metrics_port: int
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    _channels: list[grpc.Channel] = field(default_factory=list, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def full_name(self) -> str:
        return SERVICE_FULL_NAMES[self.name]

    def channel(self, api_key: str | None = None) -> grpc.Channel:
        """A blocking channel to the service (closed by stop())."""
        ch = sync_channel(self.address, api_key=api_key)
        self._channels.append(ch)
        return ch

    def logs(self) -> str:
        """Everything the process wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def health(self, service: str | None = None, timeout: float = 2.0) -> int:
        """The health status (health_pb2.HealthCheckResponse.ServingStatus) of `service`."""
        with grpc.insecure_channel(self.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(
                    service=self.full_name if service is None else service
                ),
                timeout=timeout,
            )
        return int(resp.status)

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and wait for the exit code (raises TimeoutExpired if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Terminate (kill after 15 s), close channels, remove the temporary data dir."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def service_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a service process: ours minus BOOTHSTUDIO_*, plus `env`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("BOOTHSTUDIO_")}
    paths = [str(ROOT)]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    out["PYTHONUNBUFFERED"] = "1"
    out.update(env or {})
    return out


def start_service(
    name: str,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    data_dir: Path | None = None,
    grace_period: float = 5.0,
    timeout: float = 60.0,
) -> ServiceProcess:
    """Start `python -m boothstudio.services.<name>` on free loopback ports; wait for SERVING.

    Args:
        name: "catalog", "generator" or "trainer".
        extra_args: more command-line flags (e.g. ["--set", "queue_size=2"]).
        env: extra environment variables (e.g. {"BOOTHSTUDIO_API_KEYS": "k=admin"}).
        data_dir: data directory (default: a fresh temporary one, removed by stop()).
        grace_period: --grace-period for SIGTERM.
        timeout: seconds to wait for SERVING.
    """
    if name not in SERVICE_FULL_NAMES:
        raise ValueError(f"unknown service {name!r}")
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix=f"bs-{name}-")
        data_dir = Path(tmp.name)
    data_dir.mkdir(parents=True, exist_ok=True)
    port, metrics_port = free_port(), free_port()
    log_path = data_dir / f"{name}-{port}.log"
    args = [
        sys.executable,
        "-m",
        f"boothstudio.services.{name}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--data-dir",
        str(data_dir),
        "--grace-period",
        str(grace_period),
        "--log-level",
        "DEBUG",
        *extra_args,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=service_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    svc = ServiceProcess(
        name=name,
        address=f"127.0.0.1:{port}",
        port=port,
        metrics_port=metrics_port,
        data_dir=data_dir,
        proc=proc,
        log_path=log_path,
        _tmp=tmp,
    )
    try:
        wait_serving(svc, timeout)
    except BaseException:
        svc.stop()
        raise
    return svc


def wait_serving(svc: ServiceProcess, timeout: float) -> None:
    """Poll grpc.health.v1 until the service is SERVING; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(svc.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            rc = svc.proc.poll()
            if rc is not None:
                raise RuntimeError(
                    f"{svc.name} exited with code {rc} before serving:\n{svc.logs()[-4000:]}"
                )
            with contextlib.suppress(grpc.RpcError):
                resp = stub.Check(health_pb2.HealthCheckRequest(service=svc.full_name), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise TimeoutError(
        f"{svc.name} not SERVING after {timeout}s (last error: {last}):\n{svc.logs()[-4000:]}"
    )
