"""Fixtures for the SDK's end-to-end tests: one stack of real service processes on loopback
(Catalog, two Generators, Trainer), started once per test session and shared by the SDK, CLI
and README tests.

Every RPC is implemented: `pending()` turns an UNIMPLEMENTED answer into a failure naming the
RPC (it used to skip while the services were being written).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from boothstudio.clients.sdk import BoothStudio, Unimplemented
from tests.helpers import ROOT, ServiceProcess, service_env, start_service

T = TypeVar("T")


@dataclass
class Stack:
    catalog: ServiceProcess
    generators: list[ServiceProcess]
    trainer: ServiceProcess

    @property
    def env(self) -> dict[str, str]:
        """BOOTHSTUDIO_* variables pointing a client (SDK, CLI) at this stack."""
        return {
            "BOOTHSTUDIO_CATALOG": self.catalog.address,
            "BOOTHSTUDIO_GENERATOR": ",".join(g.address for g in self.generators),
            "BOOTHSTUDIO_TRAINER": self.trainer.address,
        }

    def client(self, **kw: Any) -> BoothStudio:
        return BoothStudio(
            self.catalog.address, [g.address for g in self.generators], self.trainer.address, **kw
        )

    def address_args(self) -> list[str]:
        args = ["--catalog", self.catalog.address, "--trainer", self.trainer.address]
        for g in self.generators:
            args += ["--generator", g.address]
        return args


def handled(svc: ServiceProcess, method: str, code: str | None = None) -> float:
    """grpc_server_handled_total of one method (optionally one status code) from /metrics."""
    with urllib.request.urlopen(svc.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "grpc_server_handled_total":
                continue
            if sample.labels.get("grpc_method") != method:
                continue
            if code is not None and sample.labels.get("grpc_code") != code:
                continue
            total += sample.value
    return total


def pending(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call `fn`; an UNIMPLEMENTED answer fails the test, naming the RPC."""
    try:
        return fn(*args, **kwargs)
    except Unimplemented as exc:
        pytest.fail(f"service answered UNIMPLEMENTED: {exc.message}")


def usable_model(models: Iterable[Any], skip: bool = True) -> str:
    """The id of a model whose weights exist (builtin first); fails when there is none."""
    ordered = sorted(models, key=lambda m: not (m["builtin"] if isinstance(m, dict) else m.builtin))
    for m in ordered:
        source = m.get("source_path", "") if isinstance(m, dict) else m.source_path
        if source and (not source.startswith("/") or Path(source).exists()):
            return str(m["id"] if isinstance(m, dict) else m.id)
    if not skip:
        return ""
    pytest.fail("no model with weights on disk in the catalog")


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """Fail the test, naming the RPC, when the block hits an UNIMPLEMENTED answer."""
    try:
        yield
    except Unimplemented as exc:
        pytest.fail(f"service answered UNIMPLEMENTED: {exc.message}")


BUILD_TINY = (
    "import sys; from pathlib import Path; "
    "from research.embedded_model.architecture import build_untrained_pipeline; "
    "build_untrained_pipeline(Path(sys.argv[1]), seed=0)"
)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The embedded model when its weights are built, else an untrained model of the same
    architecture, built once in a subprocess (this test process stays free of torch) and cached
    in the temp folder under a hash of the builder's source."""
    shipped = ROOT / "services" / "diffusion" / "embedded_model"
    if (shipped / "model_index.json").exists():
        return shipped
    builder = ROOT / "research" / "embedded_model" / "architecture.py"
    digest = hashlib.sha256(builder.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"boothstudio-sdk-tiny-{digest}"
    if (out / "model_index.json").exists():
        return out
    partial = Path(tempfile.mkdtemp(prefix="boothstudio-sdk-tiny-")) / "model"
    subprocess.run(
        [sys.executable, "-c", BUILD_TINY, str(partial)],
        cwd=ROOT,
        env=service_env({"OMP_NUM_THREADS": "1"}),
        check=True,
        capture_output=True,
        timeout=900,
    )
    with contextlib.suppress(OSError):  # another session may have won the race
        partial.rename(out)
    return out


@pytest.fixture(scope="session")
def stack(tiny_model: Path) -> Iterator[Stack]:
    started: list[ServiceProcess] = []
    threads = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: no oversubscription
    try:
        catalog = start_service(
            "catalog", env={**threads, "BOOTHSTUDIO_EMBEDDED_MODEL": str(tiny_model)}
        )
        started.append(catalog)
        env = {**threads, "BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
        generators = []
        for _ in range(2):
            generators.append(start_service("generator", env=env))
            started.append(generators[-1])
        trainer = start_service(
            "trainer", env={**env, "BOOTHSTUDIO_GENERATOR_ADDRESS": generators[0].address}
        )
        started.append(trainer)
        yield Stack(catalog, generators, trainer)
    finally:
        for svc in reversed(started):
            svc.stop()
