"""The studio against real services on loopback (Catalog, Generator, Trainer processes with the
shipped embedded model as default): generate and find the image in the gallery, sampler settings
from the real sampler table, a service's field error next to its field, paint a mask and
inpaint, export and delete in the gallery, import and delete a model, and a short DreamBooth
job watched to its model. Tiny settings: 64 px, 4 steps.

A flow whose service answers UNIMPLEMENTED fails, naming the RPC.
Rerun: `.venv/bin/pytest tests/tui/test_e2e.py -v`
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image
from textual.widgets import Button, Input, Select, Static

from boothstudio.clients.sdk import BoothStudio, Unimplemented
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.screens.train import LossPlot
from boothstudio.clients.tui.settings import StudioSettings
from boothstudio.clients.tui.widgets.mask_canvas import MaskCanvas
from boothstudio.clients.tui.widgets.results import ResultTile
from boothstudio.clients.tui.widgets.sampler_settings import SamplerSettings
from tests.tui.conftest import SIZE, real_app, wait_for
from tests.tui.test_studio import error_text, field_of

T = TypeVar("T")


def sdk(settings: StudioSettings) -> BoothStudio:
    return BoothStudio(settings.catalog, settings.generator, settings.trainer, timeout=60)


def needs(settings: StudioSettings, probe: Callable[[BoothStudio], Any]) -> None:
    """Skip while the service behind `probe` answers UNIMPLEMENTED."""
    with sdk(settings) as client:
        try:
            probe(client)
        except Unimplemented as exc:
            pytest.fail(f"service answered UNIMPLEMENTED: {exc.message}")


def screen_of(app: Any) -> StudioScreen:
    screen = app.screen
    assert isinstance(screen, StudioScreen)
    return screen


async def catalog_ready(pilot: Any) -> StudioScreen:
    screen = screen_of(pilot.app)
    await wait_for(
        pilot,
        lambda: (
            isinstance(screen.query_one("#model", Select).value, str)
            and screen.query_one(SamplerSettings).sampler is not None
        ),
        what="models and samplers from the catalog",
    )
    return screen


async def test_sampler_settings_and_field_errors(studio_stack: StudioSettings) -> None:
    needs(studio_stack, lambda c: c.list_samplers())
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await catalog_ready(pilot)
        await wait_for(pilot, lambda: app.health.get("catalog") == "SERVING", what="health")
        settings = screen.query_one(SamplerSettings)
        sampler = screen.query_one("#sampler", Select)

        sampler.value = "ddim"
        await wait_for(pilot, lambda: bool(settings.query("#opt-eta")), what="DDIM's eta")
        assert not settings.query("#opt-s_churn")
        sampler.value = "euler"
        await wait_for(pilot, lambda: bool(settings.query("#opt-s_churn")), what="Euler's churn")
        assert not settings.query("#opt-eta")
        assert "eta" not in settings.values()

        needs(studio_stack, lambda c: c.list_images(page_size=1))
        screen.query_one("#prompt", Input).value = "a red circle on a blue background"
        screen.query_one("#steps", Input).value = "999"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(screen, "steps").has_class("-invalid"), what="err")
        assert error_text(screen, "steps")
        assert not field_of(screen, "prompt").has_class("-invalid")


async def test_generate_gallery_and_inpaint(studio_stack: StudioSettings, tmp_path: Path) -> None:
    needs(studio_stack, lambda c: c.list_images(page_size=1))
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await catalog_ready(pilot)
        screen.query_one("#prompt", Input).value = "a red circle on a blue background"
        screen.query_one("#width", Input).value = "64"
        screen.query_one("#height", Input).value = "64"
        screen.query_one("#steps", Input).value = "4"
        await pilot.press("ctrl+s")  # fixed seed
        screen.query_one("#seed", Input).value = "7"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(screen.query(ResultTile)), 120, "the generated image")
        tile = screen.query_one(ResultTile)
        assert tile.image_id and Image.open(io.BytesIO(tile.png)).size == (64, 64)
        assert "Seed used: 7" in str(screen.query_one("#seed-used", Static).render())

        await pilot.press("f3")
        await wait_for(pilot, lambda: app.current_mode == "gallery", what="gallery")
        gallery = screen_of(app)
        await wait_for(
            pilot,
            lambda: any(t.image.image_id == tile.image_id for t in gallery.query("Thumb")),  # type: ignore[attr-defined]
            60,
            "the new image in the gallery",
        )
        first = gallery.query("Thumb").first()
        assert first.image.image_id == tile.image_id  # type: ignore[attr-defined]  # newest first
        await wait_for(pilot, lambda: tile.image_id in app.png_cache, 60, "thumbnail bytes")

        # edit it: inpaint a painted area
        first.focus()
        await pilot.press("e")
        await wait_for(pilot, lambda: app.current_mode == "edit", what="edit")
        edit = screen_of(app)
        canvas = edit.query_one(MaskCanvas)
        await wait_for(pilot, lambda: canvas.image is not None, what="image on the canvas")
        canvas.focus()
        await pilot.press(
            "right", "right", "right", "down", "down", "right_square_bracket", "space"
        )
        await pilot.click(canvas, offset=(6, 3))
        assert 0 < canvas.coverage < 1
        edit.query_one("#edit-prompt", Input).value = "a green square"
        edit.query_one("#edit-steps", Input).value = "4"
        edit.query_one("#edit-seed", Input).value = "3"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(edit.query(ResultTile)), 120, "the inpainted image")
        inpainted = edit.query_one(ResultTile)
        with sdk(studio_stack) as client:
            meta = client.get_image(inpainted.image_id, metadata_only=True)
        assert meta.has_mask and meta.has_init_image and meta.prompt == "a green square"

        # back in the gallery (newest first): export the inpainted image, then delete it
        await pilot.press("f3")
        await wait_for(pilot, lambda: app.current_mode == "gallery", what="gallery")
        await wait_for(
            pilot,
            lambda: gallery.query("Thumb").first().image.image_id == inpainted.image_id,  # type: ignore[attr-defined]
            60,
            "the inpainted image first",
        )
        await wait_for(pilot, lambda: inpainted.image_id in app.png_cache, 60, "its bytes")
        gallery.query("Thumb").first().focus()
        await pilot.press("x")
        await wait_for(pilot, lambda: bool(app.screen.query("#dialog-path")), what="export dialog")
        target = tmp_path / "out" / "inpainted.png"
        app.screen.query_one("#dialog-path", Input).value = str(target)
        await pilot.press("enter")
        await wait_for(pilot, target.exists, 30, "the exported file")
        assert target.read_bytes() == app.png_cache[inpainted.image_id]

        await pilot.press("d")
        await wait_for(pilot, lambda: app.screen is not gallery, what="the confirmation")
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: all(t.image.image_id != inpainted.image_id for t in gallery.query("Thumb")),  # type: ignore[attr-defined]
            60,
            "the deletion",
        )


def subject_folder(root: Path) -> Path:
    from research.embedded_model.scenes import subject_images

    folder = root / "subject"
    folder.mkdir()
    for i, (img, _) in enumerate(subject_images(3)):
        img.save(folder / f"subject-{i}.png")
    return folder


async def test_short_training_job(studio_stack: StudioSettings, tmp_path: Path) -> None:
    needs(studio_stack, lambda c: c.list_training_jobs(page_size=1))
    folder = subject_folder(tmp_path)
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.current_mode == "train", what="train")
        screen = screen_of(app)
        await wait_for(
            pilot, lambda: isinstance(screen.query_one("#train-base", Select).value, str), 60
        )
        # the service's complaint lands on its field
        screen.query_one("#train-images", Input).value = str(folder)
        screen.query_one("#class_noun", Input).value = "circle"
        screen.query_one("#max_train_steps", Input).value = "0"
        await pilot.press("ctrl+n")
        await wait_for(
            pilot, lambda: field_of(screen, "max_train_steps").has_class("-invalid"), 120, "error"
        )
        screen.query_one("#max_train_steps", Input).value = "3"
        screen.query_one("#method", Select).value = "full"
        screen.query_one(
            "#extra", Input
        ).value = "sample_every_steps=2 learning_rate=0.0001 seed=11"
        screen.query_one("#output_model_name", Input).value = "tui-zwx-circle"
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: screen.job is not None, 120, "the job")  # type: ignore[attr-defined]
        model_button = screen.query_one("#job-model", Button)
        await wait_for(pilot, lambda: not model_button.disabled, 600, "the finished model")
        assert screen.job.state.value == "succeeded"  # type: ignore[attr-defined]
        plot = screen.query_one(LossPlot)
        # The trainer streams metrics at most 4 times a second (and always the last step), so a
        # fast run may skip a middle point: the curve runs from the first step to the last.
        assert plot.steps[0] == 1 and plot.steps[-1] == 3, plot.steps
        assert plot.steps == sorted(set(plot.steps)) and all(v > 0 for v in plot.losses)
        assert screen.query(ResultTile), "validation samples shown"
        model_id = screen.job.output_model_id  # type: ignore[attr-defined]

        await pilot.click("#job-model")
        await wait_for(pilot, lambda: app.current_mode == "models", what="models")
        models = screen_of(app)

        def model_shown() -> bool:
            info = models.query("#model-info")  # empty until the new screen is composed
            return bool(info) and model_id in str(info.first(Static).render())

        await wait_for(pilot, model_shown, 60, "the new model's details")

        # "Generate with" it: Generate's list (loaded at start-up) now holds it, selected
        await pilot.press("g")
        await wait_for(pilot, lambda: app.current_mode == "generate", what="generate")
        generate = screen_of(app)
        await wait_for(
            pilot,
            lambda: generate.query_one("#model", Select).value == model_id,
            60,
            "the new model selected in Generate",
        )


async def test_models_import_and_delete(studio_stack: StudioSettings, tmp_path: Path) -> None:
    from tests.helpers import ROOT

    needs(studio_stack, lambda c: c.list_models())
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await wait_for(pilot, lambda: app.current_mode == "models", what="models")
        screen = screen_of(app)
        await wait_for(pilot, lambda: bool(screen.models), 60, "the catalog's models")  # type: ignore[attr-defined]

        # a path that does not exist: the catalog's complaint lands on the path field
        screen.query_one("#import-path", Input).value = str(tmp_path / "nowhere")
        await pilot.press("ctrl+i")
        await wait_for(pilot, lambda: field_of(screen, "import-path").has_class("-invalid"), 60)

        # the shipped model folder, registered again under another id (files stay in place)
        screen.query_one("#import-path", Input).value = str(
            ROOT / "services/diffusion/embedded_model"
        )
        screen.query_one("#import-id", Input).value = "tui-imported"
        await pilot.press("ctrl+i")
        info = screen.query_one("#model-info", Static)
        await wait_for(pilot, lambda: "tui-imported" in str(info.render()), 60, "the import")
        assert not field_of(screen, "import-path").has_class("-invalid")

        await pilot.press("d")
        await wait_for(pilot, lambda: app.screen is not screen, what="the confirmation")
        await pilot.press("y")
        await wait_for(
            pilot,
            lambda: all(m.id != "tui-imported" for m in screen.models),  # type: ignore[attr-defined]
            60,
            "the deletion",
        )
        assert (ROOT / "services/diffusion/embedded_model/model_index.json").exists()
