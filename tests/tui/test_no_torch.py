"""The studio imports, mounts every screen and talks to (unreachable) services with the heavy
stack unimportable: torch, diffusers, transformers and lightning are blocked in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.helpers import ROOT, free_port, service_env

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys

    BLOCKED = ("torch", "diffusers", "transformers", "lightning", "pytorch_lightning")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    from boothstudio.clients.tui.app import StudioApp
    from boothstudio.clients.tui.settings import StudioSettings

    async def main() -> None:
        settings = StudioSettings(
            catalog=sys.argv[1], generator=sys.argv[2], trainer=sys.argv[3], images="halfcell"
        )
        app = StudioApp(settings, health_interval=0, cursor_blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            for mode in ("generate", "edit", "gallery", "train", "models", "settings"):
                await app.switch_mode(mode)
                await pilot.pause(0.1)
            for _ in range(100):
                if app.health and app.health.get("catalog") != "SERVING":
                    break
                await pilot.pause(0.05)
            print("health", app.health)
        loaded = [m for m in BLOCKED if m in sys.modules]
        print("heavy modules:", loaded)
        assert not loaded

    asyncio.run(main())
    print("STUDIO-OK")
    """
)


def test_studio_runs_without_torch() -> None:
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *addresses],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "STUDIO-OK" in proc.stdout, out[-4000:]
    assert "heavy modules: []" in proc.stdout
    # nothing listens on those ports: the status bar says so instead of hanging
    assert "UNAVAILABLE" in proc.stdout, out[-2000:]
