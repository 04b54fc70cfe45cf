"""SIGTERM while the Generator is still loading its default model: it shuts down within the
grace period instead of waiting for the load (real Catalog + Generator processes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc
from tests.generator.stack import start_on_port
from tests.helpers import free_port

GRACE = 2.0
SLACK = 20.0  # process teardown on a loaded machine; a load that is waited for never ends


def test_sigterm_during_the_default_model_load_exits_within_grace(
    tiny_model: Path, tmp_path: Path
) -> None:
    catalog = start_on_port(
        "catalog", free_port(), env={"BOOTHSTUDIO_EMBEDDED_MODEL": str(tiny_model)}
    )
    generator = None
    try:
        folder = tmp_path / "stuck"
        shutil.copytree(tiny_model, folder)
        catalog_pb2_grpc.CatalogServiceStub(catalog.channel()).ImportModel(
            catalog_pb2.ImportModelRequest(diffusers_path=str(folder), model_id="stuck-load"),
            timeout=60,
        )
        # A load that never ends: reading a FIFO nobody writes to blocks inside open(), where
        # no Python-level cancel reaches (like a multi-GB read from a slow disk).
        config = folder / "scheduler" / "scheduler_config.json"
        config.unlink()
        os.mkfifo(config)
        generator = start_on_port(
            "generator", free_port(),
            ["--grace-period", str(GRACE), "--set", "default_model=stuck-load"],
            env={"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while '"msg": "preloading default model"' not in generator.logs():
            assert time.monotonic() < deadline, generator.logs()[-3000:]
            assert generator.proc.poll() is None, generator.logs()[-3000:]
            time.sleep(0.1)
        start = time.monotonic()
        generator.proc.send_signal(signal.SIGTERM)
        try:
            rc = generator.proc.wait(timeout=GRACE + SLACK)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {GRACE + SLACK:.0f} s after SIGTERM (grace {GRACE:.0f} s)"
            ) from None
        elapsed = time.monotonic() - start
        logs = generator.logs()
        assert rc == 0, logs[-3000:]
        assert '"msg": "stopped"' in logs
        assert '"msg": "default model preloaded"' not in logs  # it really was still loading
        assert elapsed < GRACE + SLACK
    finally:
        if generator is not None:
            generator.stop()
        catalog.stop()
