"""The fuzz suite's stack: the three real services (Catalog, Generator, Trainer) as processes on
loopback, sharing one data dir inside a temporary parent folder, started once per module.

`Stack` also gives what the assertions need: persistent health stubs, a snapshot of the data
dir (file names and SQLite row counts) to compare around a refused request, and a listing of the
temporary parent outside the data dir to prove nothing was written beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fuzz import hostile
from tests.helpers import ROOT, ServiceProcess, start_service

# Files whose presence or size changes without any request: logs, SQLite's side files.
_VOLATILE_SUFFIXES = (".log", "-wal", "-shm", "-journal")


def examples(default: int) -> int:
    """Hypothesis examples per test: BOOTHSTUDIO_FUZZ_EXAMPLES when set (`make fuzz` sets 20x
    the default), else `default` (sized so the whole suite adds well under 90 s on 2 cores)."""
    value = os.environ.get("BOOTHSTUDIO_FUZZ_EXAMPLES", "")
    return max(1, int(value)) if value.strip() else default


@dataclass
class Stack:
    catalog: ServiceProcess
    generator: ServiceProcess
    trainer: ServiceProcess
    parent: Path  # temporary folder holding data/ and nothing else
    data_dir: Path
    _health: dict[str, tuple[grpc.Channel, health_pb2_grpc.HealthStub]] = field(
        default_factory=dict
    )

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.catalog, self.generator, self.trainer]

    def by_service(self, full_name: str) -> ServiceProcess:
        return next(s for s in self.services if s.full_name == full_name)

    def unhealthy(self) -> list[str]:
        """Services not alive and SERVING right now, with what is wrong."""
        bad = []
        for svc in self.services:
            rc = svc.proc.poll()
            if rc is not None:
                bad.append(f"{svc.name} exited with code {rc}")
                continue
            if svc.name not in self._health:
                ch = grpc.insecure_channel(svc.address)
                self._health[svc.name] = (ch, health_pb2_grpc.HealthStub(ch))
            stub = self._health[svc.name][1]
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=svc.full_name), timeout=5)
            except grpc.RpcError as exc:
                bad.append(f"{svc.name} health check failed: {exc.code()}")
                continue
            if resp.status != health_pb2.HealthCheckResponse.SERVING:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                bad.append(f"{svc.name} is {status}")
        return bad

    def snapshot(self) -> dict[str, object]:
        """What a refused request must not change: every file and folder name under the data
        dir (logs and SQLite side files aside) and the row count of every table."""
        names = []
        dbs = []
        for dirpath, dirnames, filenames in os.walk(self.data_dir):
            rel = Path(dirpath).relative_to(self.data_dir)
            names += [f"{rel / d}/" for d in dirnames]
            for f in filenames:
                if f.endswith(_VOLATILE_SUFFIXES):
                    continue
                names.append(str(rel / f))
                if f.endswith((".sqlite3", ".sqlite", ".db")):
                    dbs.append(Path(dirpath) / f)
        rows: dict[str, int] = {}
        for db in dbs:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                tables = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")]
                for t in tables:
                    rows[f"{db.relative_to(self.data_dir)}:{t}"] = con.execute(
                        f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
        return {"files": sorted(names), "rows": rows}

    def outside(self) -> list[str]:
        """Everything in the temporary parent folder except the data dir."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.parent):
            if Path(dirpath) == self.parent and self.data_dir.name in dirnames:
                dirnames.remove(self.data_dir.name)
            rel = Path(dirpath).relative_to(self.parent)
            out += [str(rel / n) for n in dirnames + filenames]
        return sorted(out)

    def escaped(self) -> list[Path]:
        """Files named after the hostile paths' marker, found outside the data dir."""
        roots = [ROOT, ROOT.parent, self.parent, self.parent.parent]
        return [p for p in hostile.marker_files(roots) if not p.is_relative_to(self.data_dir)]

    def close(self) -> None:
        for ch, _ in self._health.values():
            ch.close()
        self._health.clear()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    parent = Path(tempfile.mkdtemp(prefix="bs-fuzz-"))
    data_dir = parent / "data"
    threads = {"OMP_NUM_THREADS": "1"}  # 2 shared cores
    started: list[ServiceProcess] = []
    s: Stack | None = None
    try:
        catalog = start_service("catalog", env=threads, data_dir=data_dir)
        started.append(catalog)
        env = {**threads, "BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
        generator = start_service(
            "generator", env=env, data_dir=data_dir,
            extra_args=["--set", "torch_threads=1", "--set", "queue_size=4"],
        )
        started.append(generator)
        trainer = start_service(
            "trainer",
            env={**env, "BOOTHSTUDIO_GENERATOR_ADDRESS": generator.address},
            data_dir=data_dir,
            extra_args=["--set", "worker_threads=1", "--set", "sample_steps=1"],
        )
        started.append(trainer)
        s = Stack(catalog, generator, trainer, parent, data_dir)
        yield s
    finally:
        if s is not None:
            s.close()
        for svc in reversed(started):
            svc.stop()
        shutil.rmtree(parent, ignore_errors=True)
