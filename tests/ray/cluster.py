"""A real local Ray cluster: `ray start --head --block` on loopback with 2 CPUs (about 5 s),
killed with every process it started (used by tests/ray and bench/bench_ray.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port


@dataclass
class RayCluster:
    address: str
    proc: subprocess.Popen[bytes]
    temp_dir: Path

    def train_workers(self) -> list[int]:
        """Pids of this cluster's Ray Train worker processes (descendants of its raylet)."""
        mine = _descendants(self.proc.pid)
        out = []
        for pid in mine:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::RayTrainWorker"):
                out.append(pid)
        return sorted(out)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[RayCluster]:
    # a short folder: Ray's socket paths inside it must fit in 107 characters
    temp_dir = Path(tempfile.mkdtemp(prefix="bsray", dir="/tmp"))
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    args = [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    log = open(temp_dir / "ray-start.log", "wb")  # noqa: SIM115 - the cluster's lifetime
    # the workers import this checkout; settings come from the Trainer, not this environment
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("BOOTHSTUDIO_")}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    cluster = RayCluster(f"127.0.0.1:{port}", proc, temp_dir)
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in (temp_dir / "ray-start.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start failed:\n"
                                   + (temp_dir / "ray-start.log").read_text(errors="replace"))
            time.sleep(0.2)
        yield cluster
    finally:
        _stop(cluster)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(cluster: RayCluster) -> None:
    """SIGKILL to every process the cluster started, at once. The cluster is throwaway: a
    graceful stop (SIGTERM to `ray start --block`) took up to 30 s on 2 busy cores and leaves
    nothing the tests need."""
    started = _descendants(cluster.proc.pid)
    if cluster.proc.poll() is None:
        cluster.proc.kill()
    for pid in started:  # some of Ray's processes leave the process group: killed by pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.proc.pid, signal.SIGKILL)
    cluster.proc.wait(timeout=30)
