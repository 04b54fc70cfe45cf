"""Hires fix on the Generate screen and outpainting on the Edit screen: against real services
(Catalog, Generator, Trainer on loopback, the embedded 64 px model) with Pilot, the services'
refusals landing on the field they name; and snapshots of the new controls (fake client).
Rerun: `.venv/bin/pytest tests/tui/test_hires_outpaint.py -v` (snapshots: --snapshot-update)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from textual.pilot import Pilot
from textual.widgets import Checkbox, Input, Select

from boothstudio.clients.tui.settings import StudioSettings
from boothstudio.clients.tui.widgets.results import ResultTile
from tests.tui.conftest import SIZE, fake_app, real_app, run_before, settle, wait_for
from tests.tui.test_e2e import catalog_ready, screen_of
from tests.tui.test_studio import error_text, field_of


async def test_generate_with_hires_fix(studio_stack: StudioSettings) -> None:
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await catalog_ready(pilot)
        for wid, value in (("prompt", "a large red circle on a white background"),
                           ("width", "128"), ("height", "128"), ("steps", "3"),
                           ("hires-steps", "2"), ("hires-strength", "0.5")):
            screen.query_one(f"#{wid}", Input).value = value
        screen.query_one("#hires-upscaler", Select).value = "lanczos"
        await pilot.click("#hires")
        assert screen.query_one("#hires", Checkbox).value
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(screen.query(ResultTile)), 120, "the hires image")
        image = Image.open(io.BytesIO(screen.query_one(ResultTile).png))
        assert image.size == (128, 128)
        text = image.info["parameters"]
        assert "Size: 64x64" in text and "Hires upscale: 2" in text
        assert "Hires upscaler: Lanczos" in text and "Hires steps: 2" in text

        # the service's refusal lands on the field it names; fixing it clears the error
        screen.query_one("#hires-strength", Input).value = "1.5"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(screen, "hires-strength").has_class("-invalid"),
                       60, "the error on the denoising field")
        assert "between 0 and 1" in error_text(screen, "hires-strength")
        screen.query_one("#hires-strength", Input).value = "0.4"
        await pilot.pause()
        assert not field_of(screen, "hires-strength").has_class("-invalid")
        # at the model's own size there is nothing to enlarge: the error is on the checkbox
        screen.query_one("#width", Input).value = "64"
        screen.query_one("#height", Input).value = "64"
        await wait_for(pilot, lambda: not screen.running, 60, "the form free")  # type: ignore[attr-defined]
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(screen, "hires").has_class("-invalid"), 60,
                       "the error on hires fix")


async def test_edit_outpaints_a_file(studio_stack: StudioSettings, tmp_path: Path) -> None:
    source = tmp_path / "disc.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    picture.save(source)
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        await catalog_ready(pilot)
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.current_mode == "edit", what="edit")
        edit = screen_of(app)
        edit.query_one("#edit-path", Input).value = str(source)
        await edit.run_action("open_file")
        await wait_for(pilot, lambda: edit.source_png is not None, 30, "the file")  # type: ignore[attr-defined]
        edit.query_one("#edit-mode", Select).value = "outpaint"
        edit.query_one("#edit-prompt", Input).value = "a large red circle on a white background"
        for wid, value in (("outpaint-left", "16"), ("outpaint-top", "4"),
                           ("edit-steps", "3"), ("edit-seed", "5")):
            edit.query_one(f"#{wid}", Input).value = value
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(edit.query(ResultTile)), 120, "the outpainted image")
        image = Image.open(io.BytesIO(edit.query_one(ResultTile).png))
        assert image.size == (80, 72)  # 64 + 16 wide; 64 + 4, rounded up to 72, high
        assert "Outpaint: left=16 top=8 feather=16" in image.info["parameters"]

        # refusals by field: a negative side on its own field, no side at all on the mode
        await wait_for(pilot, lambda: not edit.running, 60, "the form free")  # type: ignore[attr-defined]
        edit.query_one("#outpaint-left", Input).value = "-8"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(edit, "outpaint-left").has_class("-invalid"),
                       60, "the error on the left side")
        await wait_for(pilot, lambda: not edit.running, 60, "the form free")  # type: ignore[attr-defined]
        for side in ("left", "top"):
            edit.query_one(f"#outpaint-{side}", Input).value = ""
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(edit, "edit-mode").has_class("-invalid"), 60,
                       "the error on the mode")
        assert "extend at least one side" in error_text(edit, "edit-mode")


# ------------------------------------------------------------------------------ snapshots


def test_generate_screen_with_hires_fix(snap_compare: Any) -> None:
    async def hires(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        screen.query_one("#width", Input).value = "128"
        screen.query_one("#height", Input).value = "128"
        screen.query_one("#hires-steps", Input).value = "10"
        screen.query_one("#hires", Checkbox).value = True
        screen.query_one("#hires-upscaler", Select).value = "lanczos"
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(hires))


def test_edit_screen_outpainting(snap_compare: Any) -> None:
    async def outpaint(pilot: Pilot[Any]) -> None:
        await pilot.app.switch_mode("edit")
        await settle(pilot)
        screen = pilot.app.screen
        screen.query_one("#edit-mode", Select).value = "outpaint"
        screen.query_one("#outpaint-left", Input).value = "32"
        screen.query_one("#outpaint-top", Input).value = "16"
        await settle(pilot)

    assert snap_compare(fake_app(), terminal_size=SIZE, run_before=run_before(outpaint))
