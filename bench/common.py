"""Shared helpers for the benchmarks: the model to use and Catalog + Generator processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def model_dir(arg: str | None) -> Path:
    """--model, else the shipped embedded model, else an untrained one of the same architecture
    (same speed; built into a temporary folder)."""
    if arg:
        return Path(arg)
    shipped = ROOT / "services" / "diffusion" / "embedded_model"
    if (shipped / "model_index.json").exists():
        return shipped
    from research.embedded_model.architecture import build_untrained_pipeline

    path = Path(tempfile.mkdtemp(prefix="bench-model-")) / "tiny"
    print(f"(embedded model not found: using an untrained one of the same size at {path})")
    build_untrained_pipeline(path)
    return path


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--model", help="diffusers folder (default: the embedded model)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    data: tempfile.TemporaryDirectory[str]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.data.cleanup()


def spawn(
    name: str, port: int, sets: Sequence[str] = (), env: dict[str, str] | None = None
) -> Proc:
    data = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
    e = {k: v for k, v in os.environ.items() if not k.startswith("BOOTHSTUDIO_")}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)])
    e.update(env or {})
    args = [sys.executable, "-m", f"boothstudio.services.{name}", "--port", str(port),
            "--metrics-port", "0", "--data-dir", data.name, "--log-level", "WARNING"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    log = open(Path(data.name) / "log.txt", "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(args, cwd=ROOT, env=e, stdout=log, stderr=subprocess.STDOUT)
    return Proc(name, f"127.0.0.1:{port}", proc, data)


def wait_serving(p: Proc, service: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(p.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                log = (Path(p.data.name) / "log.txt").read_text()[-3000:]
                raise RuntimeError(f"{p.name} exited:\n{log}")
            with contextlib.suppress(grpc.RpcError):
                r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.02)
    raise TimeoutError(f"{p.name} not serving")


@contextlib.contextmanager
def stack(model: Path, generator_sets: Sequence[str] = ()) -> Iterator[str]:
    """Catalog + Generator; yields the Generator address."""
    cport, gport = free_port(), free_port()
    cat_env = {
        "BOOTHSTUDIO_EMBEDDED_MODEL": str(model),
        "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{gport}",
    }
    cat = spawn("catalog", cport, env=cat_env)
    gen_env = {"BOOTHSTUDIO_CATALOG_ADDRESS": cat.address}
    gen = spawn("generator", gport, generator_sets, env=gen_env)
    try:
        wait_serving(cat, "boothstudio.v1.CatalogService")
        wait_serving(gen, "boothstudio.v1.GeneratorService")
        yield gen.address
    finally:
        gen.stop()
        cat.stop()


def child_result(kind: str, cmd: Sequence[str]) -> dict:
    """Run one measurement in a fresh process (its own torch threads and memory) and return
    the JSON object it prints last; its stderr's tail when it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
