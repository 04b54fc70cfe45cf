"""Start Catalog + Generator as real processes on loopback, wired to each other."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boothstudio.v1 import catalog_pb2_grpc, generator_pb2, generator_pb2_grpc
from tests.helpers import ROOT, ServiceProcess, free_port, service_env, wait_serving


@dataclass
class Stack:
    catalog: ServiceProcess
    generator: ServiceProcess
    cat: catalog_pb2_grpc.CatalogServiceStub
    gen: generator_pb2_grpc.GeneratorServiceStub


def start_on_port(
    name: str, port: int, extra_args: Sequence[str] = (), env: dict[str, str] | None = None
) -> ServiceProcess:
    """Like tests.helpers.start_service, with a gRPC port chosen in advance (so two services
    can be told each other's address before either starts)."""
    tmp = tempfile.TemporaryDirectory(prefix=f"bs-{name}-")
    data_dir = Path(tmp.name)
    metrics_port = free_port()
    log_path = data_dir / f"{name}-{port}.log"
    args = [
        sys.executable, "-m", f"boothstudio.services.{name}", "--host", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", str(metrics_port), "--data-dir", str(data_dir), "--grace-period", "5",
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=service_env(env), stdout=log, stderr=subprocess.STDOUT
        )
    svc = ServiceProcess(
        name=name, address=f"127.0.0.1:{port}", port=port, metrics_port=metrics_port,
        data_dir=data_dir, proc=proc, log_path=log_path, _tmp=tmp,
    )  # fmt: skip
    try:
        wait_serving(svc, 180)
    except BaseException:
        svc.stop()
        raise
    return svc


def start_stack(
    model: Path,
    generator_options: Iterable[str] = (),
    catalog_env: dict[str, str] | None = None,
    generator_env: dict[str, str] | None = None,
) -> Stack:
    """Catalog and Generator wired to each other (stop them with stop_stack)."""
    catalog_port, generator_port = free_port(), free_port()
    sets: list[str] = []
    for opt in ("torch_threads=1", *generator_options):
        sets += ["--set", opt]
    catalog = start_on_port(
        "catalog",
        catalog_port,
        env={
            "BOOTHSTUDIO_EMBEDDED_MODEL": str(model),
            "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{generator_port}",
            **(catalog_env or {}),
        },
    )
    try:
        generator = start_on_port(
            "generator",
            generator_port,
            sets,
            env={"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address, **(generator_env or {})},
        )
    except BaseException:
        catalog.stop()
        raise
    return Stack(
        catalog,
        generator,
        catalog_pb2_grpc.CatalogServiceStub(catalog.channel()),
        generator_pb2_grpc.GeneratorServiceStub(generator.channel()),
    )


def stop_stack(stack: Stack) -> None:
    stack.generator.stop()
    stack.catalog.stop()


def events(stream: Iterable[generator_pb2.GenerateResponse]) -> list[tuple[str, Any]]:
    return [(e.WhichOneof("event") or "keepalive", e) for e in stream]


def run(gen: generator_pb2_grpc.GeneratorServiceStub, **kw: Any) -> dict[str, Any]:
    """Generate and collect: kinds in order, images (PIL) by index, started, finished."""
    evs = [ev for ev in events(gen.Generate(generator_pb2.GenerateRequest(**kw), timeout=900))
           if ev[0] != "keepalive"]  # fmt: skip
    out: dict[str, Any] = {"kinds": [k for k, _ in evs], "images": {}, "pngs": {}, "seeds": {}}
    for kind, e in evs:
        if kind == "image":
            out["images"][e.image.index] = to_image(e.image.png)
            out["pngs"][e.image.index] = e.image
            out["seeds"][e.image.index] = e.image.seed
        elif kind in ("started", "finished", "queued"):
            out[kind] = getattr(e, kind)
        elif kind == "warning":
            out.setdefault("warnings", []).append(e.warning)
        elif kind == "progress":
            out.setdefault("progress", []).append(e.progress)
        out["job_id"] = e.job_id
    return out


def to_image(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return im.copy()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def scrape(svc: ServiceProcess) -> dict[str, float]:
    """Prometheus samples as {'name{labels}': value}."""
    text = urllib.request.urlopen(svc.metrics_url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
