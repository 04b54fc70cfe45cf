"""Snapshots of the main screens (fixed size, fake client with fixed answers, half-cell
images, no cursor blink). Update after a deliberate change with
`.venv/bin/pytest tests/tui/test_snapshots.py --snapshot-update` and review the SVGs."""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable

from boothstudio.clients.tui.widgets.mask_canvas import MaskCanvas
from tests.tui.conftest import SIZE, fake_app, mode, picker_ready, run_before, settle, wait_for
from tests.tui.fakes import EMBEDDING


def test_generate_screen(snap_compare: Any) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before())


def test_generate_screen_after_a_generation(snap_compare: Any) -> None:
    async def generate(pilot: Pilot[Any]) -> None:
        await pilot.click("#prompt")
        await pilot.press(*"a red circle", "ctrl+g")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(generate))


def test_generate_screen_light_theme(snap_compare: Any) -> None:
    assert snap_compare(fake_app("booth-light"), terminal_size=SIZE, run_before=run_before())


def test_gallery_screen(snap_compare: Any) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(mode("gallery")))


def test_edit_screen_with_a_mask(snap_compare: Any) -> None:
    async def paint(pilot: Pilot[Any]) -> None:
        await pilot.app.hand_over("edit", None)
        screen = pilot.app.screen
        await screen.run_action("pick")
        await wait_for(pilot, lambda: picker_ready(pilot), what="the gallery picker")
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        canvas = screen.query_one(MaskCanvas)
        canvas.focus()
        await pilot.press(
            "right", "right", "right", "down", "down", "space", "right_square_bracket"
        )
        await pilot.press("right", "right", "right", "space")

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(paint))


def test_train_screen(snap_compare: Any) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(mode("train")))


def test_models_screen(snap_compare: Any) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(mode("models")))


def test_settings_screen(snap_compare: Any) -> None:
    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(mode("settings")))


def test_models_screen_lists_an_embedding_with_its_tokens(snap_compare: Any) -> None:
    async def show_embedding(pilot: Pilot[Any]) -> None:
        pilot.app.client.models.append(EMBEDDING)  # type: ignore[attr-defined]
        await pilot.app.switch_mode("models")
        await settle(pilot)
        table = pilot.app.screen.query_one(DataTable)
        table.focus()
        table.move_cursor(row=2)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(show_embedding))
