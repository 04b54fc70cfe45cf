"""Fixtures for the studio's tests: apps on a fake client (snapshots, widget behaviour) and a
stack of real services on loopback (end-to-end)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.worker import WorkerCancelled

from boothstudio.clients.tui.app import StudioApp
from boothstudio.clients.tui.screens.dialogs import PickImageDialog
from boothstudio.clients.tui.settings import StudioSettings
from tests.tui.fakes import FakeClient

SIZE = (140, 44)


def fake_app(theme: str = "booth-dark", **kw: Any) -> StudioApp:
    """A studio on FakeClient: fixed answers, half-cell images, no cursor blink."""
    client = FakeClient(**kw)
    return StudioApp(
        StudioSettings(images="halfcell", theme=theme),
        client_factory=lambda s: client,  # type: ignore[arg-type,return-value]
        health_interval=0,
        models_interval=0,
        cursor_blink=False,
    )


async def wait_for(
    pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 60.0, what: str = ""
) -> None:
    """Let the app run until `predicate()` holds (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await pilot.pause(0.05)


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until no worker runs (fake client only: its workers all finish)."""
    for _ in range(3):
        # a worker replaced by a newer one of its exclusive group ends cancelled: fine here
        with contextlib.suppress(WorkerCancelled):
            await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def picker_ready(pilot: Pilot[Any]) -> bool:
    """The gallery picker dialog is open with its first image chosen."""
    screen = pilot.app.screen
    thumbs = screen.query("Thumb")
    return isinstance(screen, PickImageDialog) and bool(thumbs) and screen.focused is thumbs.first()


def run_before(*steps: Callable[[Pilot[Any]], Awaitable[None]]) -> Callable[[Pilot[Any]], Any]:
    async def go(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        for step in steps:
            await step(pilot)
            await settle(pilot)

    return go


def mode(name: str) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def switch(pilot: Pilot[Any]) -> None:
        await pilot.app.switch_mode(name)
        await asyncio.sleep(0)

    return switch


# ------------------------------------------------------------------------ real services


@pytest.fixture(scope="module")
def studio_stack(module_services: Any) -> Iterator[StudioSettings]:
    """Catalog, Generator and Trainer on loopback; the shipped embedded model is the default."""
    catalog = module_services("catalog")
    env = {"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
    generator = module_services("generator", env=env)
    trainer = module_services(
        "trainer",
        # one thread per worker (2 shared cores), 2-step validation samples
        ["--set", "worker_threads=1", "--set", "sample_steps=2"],
        env={**env, "BOOTHSTUDIO_GENERATOR_ADDRESS": generator.address},
    )
    yield StudioSettings(
        catalog=catalog.address,
        generator=generator.address,
        trainer=trainer.address,
        images="halfcell",
    )


def real_app(settings: StudioSettings) -> StudioApp:
    return StudioApp(settings, health_interval=1.0, cursor_blink=False)
