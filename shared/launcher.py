"""Start the three services as separate processes and supervise them (`make run`).

    python -m boothstudio.shared.launcher [--host H] [--data-dir D] [--config F]
        [--services catalog,...]

Each service is `python -m boothstudio.services.<name>` with its default ports (catalog 50051/9101,
generator 50052/9102, trainer 50053/9103) unless the config file or env says otherwise.
SIGINT/SIGTERM are forwarded; if one service dies, the others are stopped and the launcher exits
with that service's exit code. This module only spawns processes: it imports no service code.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from boothstudio.shared.config import SERVICE_NAMES


def spawn(
    name: str, common: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # Own session: a terminal's Ctrl-C reaches only the launcher, which forwards one SIGTERM
    # (a second signal would cut the services' grace period short).
    return subprocess.Popen(
        [sys.executable, "-m", f"boothstudio.services.{name}", *common],
        env=env,
        start_new_session=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m boothstudio.shared.launcher", description=__doc__)
    p.add_argument("--host", default=None)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--log-format", choices=["json", "text"], default=None)
    p.add_argument("--services", default=",".join(SERVICE_NAMES))
    p.add_argument("--grace-period", type=float, default=None)
    args = p.parse_args(argv)

    common: list[str] = []
    for flag, value in (
        ("--host", args.host),
        ("--data-dir", args.data_dir),
        ("--config", args.config),
        ("--log-format", args.log_format),
        ("--grace-period", args.grace_period),
    ):
        if value is not None:
            common += [flag, str(value)]
    names = [n.strip() for n in args.services.split(",") if n.strip()]
    unknown = set(names) - set(SERVICE_NAMES)
    if unknown:
        p.error(f"unknown services: {sorted(unknown)}")

    env = dict(os.environ)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop_all(sig: int = signal.SIGTERM) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_all(signum if signum == signal.SIGTERM else signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # Catalog first: the others ask it about models.
    for name in names:
        procs[name] = spawn(name, common, env)
        if name == "catalog" and len(names) > 1:
            time.sleep(0.5)
    print(
        f"boothstudio: started {', '.join(f'{n} (pid {p.pid})' for n, p in procs.items())}; "
        "Ctrl-C to stop",
        file=sys.stderr,
    )
    exit_code = 0
    while procs:
        for name, proc in list(procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del procs[name]
            if not stopping:
                print(f"boothstudio: {name} exited with code {rc}; stopping", file=sys.stderr)
                exit_code = rc or 1
                stopping = True
                stop_all()
            elif rc not in (0, -signal.SIGTERM):
                exit_code = exit_code or rc
        time.sleep(0.2)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
