"""`make run`'s launcher starts the three services as separate processes and stops them cleanly.

Rerun: `.venv/bin/pytest tests/test_launcher.py -v`
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ROOT, free_port, service_env


def test_launcher_starts_and_stops_all_services(tmp_path: Path) -> None:
    ports = {name: (free_port(), free_port()) for name in ("catalog", "generator", "trainer")}
    cfg = tmp_path / "bs.yaml"
    cfg.write_text(
        "".join(f"{n}: {{port: {p}, metrics_port: {m}}}\n" for n, (p, m) in ports.items())
    )
    log = (tmp_path / "launcher.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "boothstudio.shared.launcher",
            "--config",
            str(cfg),
            "--data-dir",
            str(tmp_path / "data"),
            "--grace-period",
            "5",
        ],
        cwd=ROOT,
        env=service_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        pending = set(ports)
        while pending and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "launcher.log").read_text()
            for name in list(pending):
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{ports[name][0]}") as ch:
                        resp = health_pb2_grpc.HealthStub(ch).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.discard(name)
                except grpc.RpcError:
                    pass
            time.sleep(0.2)
        assert not pending, (tmp_path / "launcher.log").read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        text = (tmp_path / "launcher.log").read_text()
        assert text.count('"msg": "stopped"') == 3, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
