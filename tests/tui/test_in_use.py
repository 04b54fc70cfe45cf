"""The studio as a person uses it (issue 22): the defects found in use, each with the flow that
showed it. On the fake client (tests/tui/fakes.py): a generation slow enough to cancel, a
resumed job's history and a new model are staged on cue there.
Rerun: `.venv/bin/pytest tests/tui/test_in_use.py -v`
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input, OptionList, Select, Static

from boothstudio.clients.sdk import InvalidArgument, TrainingState
from boothstudio.clients.tui.app import StudioApp
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.settings import StudioSettings
from boothstudio.clients.tui.widgets.fields import model_label
from boothstudio.clients.tui.widgets.results import JobProgress, ResultTile
from boothstudio.clients.tui.widgets.thumbs import Thumb
from tests.tui.conftest import SIZE, fake_app, picker_ready, settle, wait_for
from tests.tui.fakes import MODELS, PNGS, FakeClient
from tests.tui.test_studio import error_text, field_of, palette


def fake(app: StudioApp) -> FakeClient:
    client = app.client
    assert isinstance(client, FakeClient)
    return client


def progress_text(screen: StudioScreen) -> str:
    return str(screen.query_one(JobProgress).query_one(".job-eta", Static).render())


def status_text(screen: StudioScreen) -> str:
    return str(screen.query_one("#status-line", Static).render())


async def go(pilot: Pilot[Any], mode: str) -> StudioScreen:
    await pilot.app.switch_mode(mode)
    await settle(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, StudioScreen)
    return screen


async def new_job_form(pilot: Pilot[Any], folder: Path) -> StudioScreen:
    """The Train screen with a subject folder (one picture) and a class filled in."""
    (folder / "cat.png").write_bytes(PNGS["img-0"])
    await settle(pilot)
    train = await go(pilot, "train")
    train.query_one("#train-images", Input).value = str(folder)
    train.query_one("#class_noun", Input).value = "cat"
    return train


async def choose_job(pilot: Pilot[Any], train: StudioScreen, job_id: str) -> None:
    """Pick a job in the Train screen's list with the keyboard."""
    jobs = train.query_one("#jobs", OptionList)
    jobs.focus()
    jobs.highlighted = next(
        i for i in range(jobs.option_count) if jobs.get_option_at_index(i).id == job_id
    )
    await pilot.press("enter")


# 1 ------------------------------------------------------------------------------------


async def test_generate_with_a_new_model_selects_it() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        generate = app.screen
        # a second fine-tune of the same subject arrives after start-up: same name, new id
        twin = replace(MODELS[1], id="zwx-dog-2")
        fake(app).models.append(twin)

        models = await go(pilot, "models")
        table = models.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, what="the new model listed")
        table.focus()
        table.move_cursor(row=2)
        await pilot.press("g")
        await wait_for(pilot, lambda: app.current_mode == "generate", what="generate")
        model = generate.query_one("#model", Select)
        await wait_for(pilot, lambda: model.value == "zwx-dog-2", 10, "the model selected")
        assert "zwx-dog-2" in str(model.query_one("SelectCurrent Static").render())
        assert model_label(twin) != model_label(MODELS[1])

        # a model list follows the catalog when told it changed (job, import, delete, timer)
        fake(app).models.append(replace(MODELS[1], id="zwx-dog-3"))
        app.models_changed()
        await wait_for(
            pilot,
            lambda: "zwx-dog-3" in [m.id for m in generate.models],  # type: ignore[attr-defined]
            10,
            "the list reloaded",
        )
        assert model.value == "zwx-dog-2"  # the choice stays


async def test_model_lists_reload_now_and_then() -> None:
    client = FakeClient()
    app = StudioApp(
        StudioSettings(images="halfcell"),
        client_factory=lambda s: client,  # type: ignore[arg-type,return-value]
        health_interval=0,
        models_interval=0.3,
        cursor_blink=False,
    )
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        generate = app.screen
        generate.query_one("#sampler", Select).value = "ddim"
        await settle(pilot)
        generate.query_one("#opt-eta", Input).value = "0.5"
        client.models.append(replace(MODELS[1], id="zwx-dog-2"))  # imported elsewhere
        await wait_for(
            pilot,
            lambda: "zwx-dog-2" in [m.id for m in generate.models],  # type: ignore[attr-defined]
            10,
            "the periodic reload",
        )
        await pilot.pause(0.5)  # more reloads: what was typed stays
        assert generate.query_one("#opt-eta", Input).value == "0.5"

        models = await go(pilot, "models")
        table = models.query_one(DataTable)
        table.move_cursor(row=1)
        models.query_one("#import-path", Input).focus()
        await pilot.pause(1.0)
        assert table.cursor_row == 1 and app.focused is models.query_one("#import-path")


# 2 --------------------------------------------------------------------------------------


async def test_resumed_job_is_followed_to_its_end() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        train = await go(pilot, "train")
        await choose_job(pilot, train, "job-cat")
        resume = train.query_one("#job-resume", Button)
        await wait_for(pilot, lambda: not resume.disabled, 10, "the cancelled job shown")
        assert train.job.state is TrainingState.CANCELLED  # type: ignore[attr-defined]

        await pilot.press("ctrl+u")
        model = train.query_one("#job-model", Button)
        await wait_for(pilot, lambda: not model.disabled, 10, "the resumed job's model")
        assert train.job.state is TrainingState.SUCCEEDED  # type: ignore[attr-defined]
        assert "succeeded" in str(train.query_one("#job-state", Static).render())
        # its model is in the other screens' lists without a manual refresh
        await pilot.app.switch_mode("generate")
        await wait_for(
            pilot,
            lambda: "zwx-cat-job-cat" in [m.id for m in app.screen.models],  # type: ignore[attr-defined]
            10,
            "the new model in Generate",
        )


# 5 ------------------------------------------------------------------------------------


async def test_status_and_eta_follow_the_job(tmp_path: Path) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        train = await new_job_form(pilot, tmp_path)
        await pilot.press("ctrl+n")
        model = train.query_one("#job-model", Button)
        await wait_for(pilot, lambda: not model.disabled, 10, "the job's model")
        await settle(pilot)
        assert "uploading" not in status_text(train)
        assert "succeeded" in status_text(train)

        # a cancelled job: its last step, no ETA
        await choose_job(pilot, train, "job-cat")
        await wait_for(
            pilot, lambda: train.job.job_id == "job-cat", 10, "the cancelled job"  # type: ignore[attr-defined]
        )
        await settle(pilot)
        assert "2/4" in progress_text(train) and "ETA" not in progress_text(train)


# 3 ------------------------------------------------------------------------------------


async def test_edit_can_be_cancelled_with_escape_and_from_the_palette() -> None:
    app = fake_app(step_delay=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        edit = await go(pilot, "edit")
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: picker_ready(pilot), what="the gallery picker")
        await pilot.press("enter")
        await wait_for(pilot, lambda: edit.source_png is not None, what="the image")  # type: ignore[attr-defined]
        edit.query_one("#edit-mode", Select).value = "img2img"
        edit.query_one("#edit-steps", Input).value = "50"

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "step" in progress_text(edit), 10, "the edit running")
        await pilot.press("escape")
        await wait_for(pilot, lambda: "cancelled" in progress_text(edit), 10, "cancelled by esc")

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: "step" in progress_text(edit), 10, "the edit running")
        await app.switch_mode("gallery")  # not go(): settle() would wait for the edit to end
        await palette(pilot, "cancel generation")
        await wait_for(pilot, lambda: "cancelled" in progress_text(edit), 10, "cancelled (palette)")
        assert app.current_mode == "gallery"
        assert all(s.cancelled for s in fake(app).streams)


# 4 ------------------------------------------------------------------------------------


async def test_a_bad_training_setting_is_highlighted(tmp_path: Path) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        train = await new_job_form(pilot, tmp_path)
        train.query_one("#extra", Input).value = "resolution=64 learning_rat=0.001"
        await pilot.press("ctrl+n")
        await settle(pilot)
        extra = field_of(train, "extra")
        assert extra.has_class("-invalid")
        assert "learning_rat: unknown setting" in error_text(train, "extra")
        assert "learning_rate" in error_text(train, "extra")  # the "did you mean"
        # a violation no field stands for is said in full, not "check the highlighted fields"
        train.report_error(InvalidArgument(violations=[("config.nowhere", "bad")]))
        assert "config.nowhere: bad" in status_text(train)


# 6 ------------------------------------------------------------------------------------


async def test_generate_form_as_a_person_types() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, StudioScreen)
        await pilot.press(*"a red circle")  # typed straight away: the prompt has focus
        assert screen.query_one("#prompt", Input).value == "a red circle"
        assert screen.query_one("#cfg_scale", Input).value == "7"  # the service's default

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(screen.query(ResultTile)), 10, "a result")
        await settle(pilot)
        await pilot.press("ctrl+s")  # fixed seed: the one just used, not 0
        assert screen.query_one("#seed", Input).value == "42"

        # a refused request keeps the last results; fixing the value clears its error
        screen.query_one("#steps", Input).value = "999"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: field_of(screen, "steps").has_class("-invalid"), 10)
        await settle(pilot)
        assert screen.query(ResultTile), "the previous results stay"
        screen.query_one("#steps", Input).value = "4"
        await pilot.pause()
        assert not field_of(screen, "steps").has_class("-invalid")


# 7 ------------------------------------------------------------------------------------


async def test_edit_has_the_generation_settings_and_a_picker_with_thumbnails() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        edit = await go(pilot, "edit")
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: picker_ready(pilot), what="the gallery picker")
        picker = app.screen
        await settle(pilot)
        thumbs = list(picker.query(Thumb))
        assert len(thumbs) == 3 and all(t.png for t in thumbs), "every image has its thumbnail"
        await pilot.press("down", "enter")  # the second newest
        await wait_for(pilot, lambda: edit.source_png == PNGS["img-1"], what="the picked image")  # type: ignore[attr-defined]

        edit.query_one("#edit-mode", Select).value = "img2img"
        edit.query_one("#edit-sampler", Select).value = "ddim"
        for wid, value in (("cfg", "5"), ("width", "64"), ("height", "64"), ("count", "2")):
            edit.query_one(f"#edit-{wid}", Input).value = value
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: bool(edit.query(ResultTile)), 10, "the result")
        sent = fake(app).streams[-1].params
        assert sent["sampler"] == "ddim" and sent["cfg_scale"] == 5.0
        assert (sent["width"], sent["height"], sent["count"]) == (64, 64, 2)


async def test_gallery_reuse_of_an_edit_delete_asks_no_first_jobs_told_apart() -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        client = fake(app)
        client.gallery[2] = replace(
            client.gallery[2], has_init_image=True, params={"strength": 0.6, "seed": 1002}
        )
        gallery = await go(pilot, "gallery")
        # enter on the delete confirmation answers No
        await pilot.press("d")
        await wait_for(pilot, lambda: app.screen is not gallery, what="the confirmation")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is gallery, what="the answer")
        await settle(pilot)
        assert len(client.gallery) == 3

        # reuse of an img2img image: its settings go to Edit, not to a txt2img in Generate
        await pilot.press("r")
        await wait_for(pilot, lambda: app.current_mode == "edit", 10, "Edit")
        await settle(pilot)
        edit = app.screen
        assert edit.query_one("#edit-mode", Select).value == "img2img"
        assert edit.query_one("#strength", Input).value == "0.6"
        assert edit.query_one("#edit-seed", Input).value == "1002"
        assert edit.query_one("#edit-prompt", Input).value == client.gallery[2].prompt
        assert "source image" in status_text(edit)  # type: ignore[arg-type]

        # two jobs of one subject share a name: the list tells them apart
        client.jobs["job-zwx-2"] = replace(client.jobs["job-zwx"], job_id="job-zwx-2")
        train = await go(pilot, "train")
        jobs = train.query_one("#jobs", OptionList)
        lines = [str(jobs.get_option_at_index(i).prompt) for i in range(jobs.option_count)]
        assert len(lines) == 3 and len(set(lines)) == 3, lines
