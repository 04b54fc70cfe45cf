"""The Train screen's training options against real services (Catalog, Generator, Trainer on
loopback, the embedded 64 px model), with Pilot: min-SNR gamma, offset noise, aspect buckets,
validation prompts scored per checkpoint and export of the best one reach the created job's
config; the job's checkpoints are listed with their scores (the best marked); several concepts
from a kohya-style folder; the service's refusals land on the field they name (a concept's on
the concepts folder, naming the concept), opening the options they sit in.
Rerun: `.venv/bin/pytest tests/tui/test_train_options.py -v`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import Button, Checkbox, Collapsible, DataTable, Input, Select

from boothstudio.clients.tui.settings import StudioSettings
from tests.tui.conftest import real_app, wait_for
from tests.tui.test_e2e import screen_of, sdk, subject_folder
from tests.tui.test_studio import error_text, field_of

DECREASING = "tests.trainer.scorers:decreasing"  # each call scores lower: the first is best
SIZE = (100, 30)  # the smallest terminal the studio is laid out for


async def train_screen(pilot: Any) -> Any:
    await pilot.press("f4")
    await wait_for(pilot, lambda: pilot.app.current_mode == "train", what="train")
    screen = screen_of(pilot.app)
    await wait_for(
        pilot, lambda: isinstance(screen.query_one("#train-base", Select).value, str), 60,
        "the base models")
    return screen


def fill(screen: Any, **values: str) -> None:
    for wid, value in values.items():
        screen.query_one(f"#{wid}", Input).value = value


async def test_options_reach_the_job_and_checkpoints_show_their_scores(
        studio_stack: StudioSettings, tmp_path: Path) -> None:
    folder = subject_folder(tmp_path)
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await train_screen(pilot)
        options = screen.query_one("#train-options", Collapsible)
        assert options.collapsed
        fill(screen, **{"train-images": str(folder), "class_noun": "circle",
                        "max_train_steps": "2", "min_snr_gamma": "5", "offset_noise": "2",
                        "validation_prompts": "a {identifier} {class_noun} on grass; a table",
                        "validation_scorer": DECREASING,
                        "extra": "checkpoint_every_steps=1 seed=5 sample_every_steps=0"})
        # the service's refusal lands on the field, and opens the options it sits in
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: field_of(screen, "offset_noise").has_class("-invalid"),
                       120, "the error on offset noise")
        assert "1" in error_text(screen, "offset_noise") and not options.collapsed

        fill(screen, offset_noise="0.05")
        for wid in ("aspect_buckets", "export_best_checkpoint"):
            screen.query_one(f"#{wid}", Checkbox).value = True
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: screen.job is not None, 120, "the job")
        job_id = screen.job.job_id
        with sdk(studio_stack) as client:
            config = client.get_training_job(job_id).config
        assert config["min_snr_gamma"] == 5.0 and config["offset_noise"] == 0.05
        assert config["aspect_buckets"] is True and config["export_best_checkpoint"] is True
        assert config["validation_scorer"] == DECREASING
        assert config["validation_prompts"] == [f"a {config['identifier']} circle on grass",
                                                "a table"]

        model_button = screen.query_one("#job-model", Button)
        await wait_for(pilot, lambda: not model_button.disabled, 600, "the finished model")
        table = screen.query_one("#job-checkpoints", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 60, "both checkpoints listed")
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert [r[0] for r in rows] == ["step-000001", "step-000002"]
        assert rows[0][2].endswith("★ best") and "best" not in rows[1][2]
        assert float(rows[0][2].split()[0]) > float(rows[1][2])
        assert table.region.height > 0 and model_button.region.bottom <= SIZE[1]


def kohya_folder(root: Path, subject: Path, names: tuple[str, str]) -> Path:
    out = root / "kohya"
    for name in names:
        (out / name).mkdir(parents=True)
    pictures = sorted(subject.glob("*.png"))
    for k, picture in enumerate(pictures):
        (out / names[k % 2] / picture.name).write_bytes(picture.read_bytes())
    (out / names[0] / f"{pictures[0].stem}.txt").write_text("a zwx circle, close up")
    return out


async def test_several_concepts_from_a_kohya_folder(
        studio_stack: StudioSettings, tmp_path: Path) -> None:
    subject = subject_folder(tmp_path)
    app = real_app(studio_stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await train_screen(pilot)
        # two concepts with one identifier: the service names the second, on the concepts field
        clash = kohya_folder(tmp_path / "clash", subject, ("10_zwx circle", "5_zwx square"))
        fill(screen, **{"train-kohya": str(clash), "max_train_steps": "50"})
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: field_of(screen, "train-kohya").has_class("-invalid"),
                       120, "the error on the concepts folder")
        assert error_text(screen, "train-kohya").startswith("concepts[1].identifier:")
        assert not field_of(screen, "identifier").has_class("-invalid")
        # an images folder too: which is meant? (told before anything is uploaded)
        fill(screen, **{"train-images": str(subject)})
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: "not both" in error_text(screen, "train-kohya"), 30,
                       "images folder or concepts folder")

        fill(screen, **{"train-images": "",
                        "train-kohya": str(kohya_folder(tmp_path / "ok", subject,
                                                        ("10_zwx circle", "5_qlo square")))})
        screen.query_one("#prior", Checkbox).value = True
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: screen.job is not None, 120, "the job")
        job_id = screen.job.job_id
        with sdk(studio_stack) as client:
            job = client.get_training_job(job_id)
        concepts = job.config["concepts"]
        assert [(c["identifier"], c["class_noun"], c["repeats"]) for c in concepts] == [
            ("zwx", "circle", 10), ("qlo", "square", 5)]
        assert all(c["prior_preservation"]["enabled"] for c in concepts)
        assert [len(c["instance_images"]) for c in concepts] == [2, 1]
        assert concepts[0]["instance_images"][0]["caption"] == "a zwx circle, close up"
        assert job.trigger_phrase == "a zwx circle, a qlo square"
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: screen.job.state.terminal, 300, "the job cancelled")
