"""A real S3 endpoint for the tests: moto's standalone server on loopback, reached through s3fs
exactly as a MinIO or AWS bucket would be (the services get the standard AWS variables).

    server = MotoServer.start()                 # or the `s3_server` fixture (conftest.py)
    target = server.new_bucket("b1")            # url s3://b1/boothstudio, env, options
    server.stop(); server.restart()             # an outage and its end, on the same port
                                                # (moto keeps objects in memory: a restart
                                                # empties the store, so make buckets after it)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import free_port

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "boothstudio-test",
    "AWS_SECRET_ACCESS_KEY": "boothstudio-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_command() -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


@dataclass
class S3Target:
    """One bucket: where the services point (`url`), and how (`env` or `options`)."""

    url: str
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """storage_options for shared.artifact_store (and s3fs)."""
        return {"endpoint_url": self.endpoint, "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True,
                                 **self.options)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under the target's prefix (relative to it)."""
        root = self.url.removeprefix("s3://").rstrip("/")
        base = f"{root}/{prefix}".rstrip("/")
        fs = self.filesystem()
        if not fs.exists(base):
            return []
        return sorted(p[len(root) + 1:] for p in fs.find(base))


class MotoServer:
    def __init__(self, port: int, niceness: int = 0) -> None:
        self.port = port
        #: > 0: the server yields the CPU (a benchmark's stand-in for a store on another host)
        self.niceness = niceness
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, port: int = 0, niceness: int = 0) -> MotoServer:
        server = cls(port or free_port(), niceness)
        server.restart()
        return server

    def restart(self) -> None:
        env = {**os.environ, **CREDENTIALS}
        self.proc = subprocess.Popen(
            [*moto_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            preexec_fn=(lambda: os.nice(self.niceness)) if self.niceness else None,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def new_bucket(self, name: str, prefix: str = "boothstudio") -> S3Target:
        target = S3Target(
            url=f"s3://{name}/{prefix}",
            endpoint=self.endpoint,
            env={**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint,
                 "BOOTHSTUDIO_STORAGE_URL": f"s3://{name}/{prefix}"},
        )
        target.filesystem().mkdir(name)
        return target
