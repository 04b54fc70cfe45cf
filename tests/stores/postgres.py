"""A real PostgreSQL server for tests: Debian's binaries, `initdb` + `pg_ctl` in a temporary
folder, listening on loopback only (no Docker). PostgreSQL refuses to run as root: as root the
commands run as the `postgres` user (`runuser -u postgres`), the folder owned by that user.

    server = PostgresServer.start()          # or the `postgres` fixture (tests/stores/conftest.py)
    url = server.create_database("t1")       # postgresql+psycopg://postgres@127.0.0.1:PORT/t1
    server.stop(); server.restart()           # a database that goes away and comes back
    server.destroy()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port

USER = "postgres"


def find_bindir() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin holding initdb (None: none)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit()
        else 0,
    )
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    bindir: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", USER, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)

    @classmethod
    def start(cls, bindir: Path) -> PostgresServer:
        folder = Path(tempfile.mkdtemp(prefix="bs-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(USER)
            os.chown(folder, user.pw_uid, user.pw_gid)
        server = cls(bindir=bindir, folder=folder, port=free_port())
        try:
            server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", USER,
                        "--no-sync", timeout=120)
            server.restart()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return server

    def restart(self) -> None:
        """Start (again) on the same port; returns when it accepts connections."""
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop now (open connections are cut), keeping the data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
