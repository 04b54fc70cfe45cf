"""The studio's behaviour on the fake client: sampler settings follow the sampler, field errors
land next to their field, the mask canvas paints with keys and mouse, themes switch, the command
palette and the gallery's reuse work. (The same flows against real services: test_e2e.py.)"""

from __future__ import annotations

from typing import Any

from textual.command import CommandList, CommandPalette
from textual.message import Message
from textual.pilot import Pilot
from textual.widgets import Input, Select, Static

from boothstudio.clients.sdk import InvalidArgument
from boothstudio.clients.tui.app import StudioApp
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.screens.generate import GenerateScreen
from boothstudio.clients.tui.widgets.fields import FormField
from boothstudio.clients.tui.widgets.mask_canvas import MaskCanvas
from boothstudio.clients.tui.widgets.sampler_settings import SamplerSettings
from tests.tui.conftest import SIZE, fake_app, picker_ready, settle, wait_for


def field_of(screen: StudioScreen, widget_id: str) -> FormField:
    return next(f for f in screen.query(FormField) if f.widget.id == widget_id)


async def palette(pilot: Pilot[Any], query: str) -> None:
    """Run the command palette's best hit for `query`."""
    await pilot.press("ctrl+p")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, CommandPalette), what="palette")
    await pilot.press(*query)
    hits = pilot.app.screen.query_one(CommandList)
    want = query.split(": ")[-1].lower()

    def best_hit_matches() -> bool:  # results of a partly typed query may still be showing
        if not hits.option_count or hits.highlighted is None:
            return False
        return want in str(hits.get_option_at_index(hits.highlighted).prompt).lower()

    await wait_for(pilot, best_hit_matches, what=f"palette hit for {query!r}")
    await pilot.press("enter")


def error_text(screen: StudioScreen, widget_id: str) -> str:
    return str(field_of(screen, widget_id).query_one(".field-error", Static).render())


async def test_sampler_settings_follow_the_sampler_and_errors_land_on_fields() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, StudioScreen)
        settings = screen.query_one(SamplerSettings)
        assert screen.query_one("#sampler", Select).value == "euler_a"
        assert {w.id for w in settings.query(Input)} == {"opt-eta", "opt-s_noise"}

        screen.query_one("#sampler", Select).value = "dpmpp_2m"
        await wait_for(pilot, lambda: bool(settings.query("#opt-lower_order_final")), what="2M")
        assert not settings.query("#opt-eta")
        # the schedule follows the sampler's default in its own message: wait, do not race
        await wait_for(pilot, lambda: screen.query_one("#schedule", Select).value == "karras",
                       what="2M's default schedule")

        screen.query_one("#sampler", Select).value = "plms"
        await wait_for(pilot, lambda: "no options" in str(settings.children[-1].render()))

        screen.query_one("#sampler", Select).value = "ddim"
        await wait_for(pilot, lambda: bool(settings.query("#opt-eta")), what="ddim eta")
        settings.query_one("#opt-eta", Input).value = "0.5"
        assert settings.values() == {"eta": 0.5}

        # a service's field violation shows under the field it names, nothing else is marked
        screen.query_one("#steps", Input).value = "999"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(screen, "steps").has_class("-invalid"))
        assert "between 1 and 150" in error_text(screen, "steps")
        assert not field_of(screen, "width").has_class("-invalid")
        # a violation of a sampler option lands on that option's field
        screen.report_error(InvalidArgument(violations=[("sampler_options.eta", "too noisy")]))
        await pilot.pause()
        assert "too noisy" in error_text(screen, "opt-eta")
        assert not field_of(screen, "steps").has_class("-invalid")

        # a fixed seed and a successful run clear the errors and show the seed used
        screen.query_one("#steps", Input).value = "4"
        await pilot.press("ctrl+s")
        screen.query_one("#seed", Input).value = "42"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "42" in str(screen.query_one("#seed-used", Static).render()))
        await wait_for(pilot, lambda: bool(screen.query("ResultTile")), what="a result tile")
        assert not screen.query(".-invalid")


async def test_mask_canvas_keys_and_mouse() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await app.switch_mode("edit")
        await settle(pilot)
        screen = app.screen
        canvas = screen.query_one(MaskCanvas)
        await pilot.press("ctrl+g")  # nothing loaded: the error names the image
        await pilot.pause()
        assert field_of(screen, "mask").has_class("-invalid")

        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: picker_ready(pilot), what="the gallery picker")
        await pilot.press("enter")
        await wait_for(pilot, lambda: canvas.image is not None, what="image on canvas")
        assert canvas.coverage == 0

        canvas.focus()
        await pilot.press("right", "right", "down", "space")
        painted = canvas.coverage
        assert painted > 0
        await pilot.press("right_square_bracket", "right_square_bracket", "space")
        assert canvas.brush == 4 and canvas.coverage > painted
        bigger = canvas.coverage
        await pilot.press("e", "down", "down", "space")  # erase part of it
        assert canvas.erasing and 0 < canvas.coverage < bigger
        await pilot.press("e", "i")  # back to painting, invert
        assert 1 - canvas.coverage > 0 and canvas.coverage > 0.5
        await pilot.press("c")
        assert canvas.coverage == 0
        await pilot.click(canvas, offset=(12, 6))  # the mouse paints too
        assert canvas.coverage > 0
        assert "mask" in str(screen.query_one("#brush-info", Static).render())

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(screen.query("ResultTile")), what="inpainted result")


async def test_themes_palette_and_reuse() -> None:
    app = fake_app()
    posted: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=posted.append) as pilot:
        await settle(pilot)
        # the workers reported back with messages
        assert any(isinstance(m, StudioApp.HealthChecked) for m in posted)
        assert any(isinstance(m, GenerateScreen.CatalogLoaded) for m in posted)
        assert app.theme == "booth-dark"
        dark_bg = app.screen.styles.background
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.theme == "booth-light" and app.screen.styles.background != dark_bg

        await pilot.press("f6")
        await settle(pilot)
        app.screen.query_one("#set-theme", Select).value = "textual-dark"
        await pilot.pause()
        assert app.theme == "textual-dark" and app.settings.theme == "textual-dark"

        # the command palette reaches every screen and the themes
        await palette(pilot, "theme: booth-light")
        await wait_for(pilot, lambda: app.theme == "booth-light", what="palette theme")
        await palette(pilot, "go to gallery")
        await wait_for(pilot, lambda: app.current_mode == "gallery", what="gallery")
        await settle(pilot)

        # gallery: newest first; reuse its settings in Generate
        thumbs = list(app.screen.query("Thumb"))
        assert [t.image.image_id for t in thumbs] == ["img-2", "img-1", "img-0"]  # type: ignore[attr-defined]
        await pilot.press("r")
        await wait_for(pilot, lambda: app.current_mode == "generate", what="generate")
        await settle(pilot)
        screen = app.screen
        assert screen.query_one("#prompt", Input).value == "a yellow circle on a black background"
        assert screen.query_one("#seed", Input).value == "1002"
        assert screen.query_one("#steps", Input).value == "4"
