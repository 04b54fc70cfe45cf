"""The shipped embedded model meets its quality goals, judged by the project's detectors.

A fixed, CI-sized seed set (every valid shape/colour/background caption with two seeds,
20 steps, the model's default sampler DPM++ 2M); the model card reports a larger set.
"""

from __future__ import annotations

import pytest

from boothstudio.services.diffusion.loading import (
    EMBEDDED_MODEL_DIR,
    embedded_model_dir,
    load_pipeline,
)
from research.embedded_model.detectors import score_pipeline
from research.embedded_model.scenes import evaluation_set


@pytest.fixture(scope="module")
def score():
    pipe, info = load_pipeline(embedded_model_dir())
    assert info.architecture == "tiny-sd" and info.native_resolution == 64
    pipe.set_progress_bar_config(disable=True)
    return score_pipeline(pipe, evaluation_set(seeds_per_combo=2), steps=20, guidance=5.0)


def test_shipped_model_is_small_and_in_diffusers_format() -> None:
    files = [p for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert (EMBEDDED_MODEL_DIR / "README.md").exists()  # the model card


def test_quality_goals(score) -> None:
    assert score.counts["all"]["n"] >= 190
    assert score.rate("all", "background") >= 0.90
    assert score.rate("all", "color") >= 0.85
    assert score.rate("all", "shape") >= 0.75


def test_held_out_combinations_compose(score) -> None:
    # Colour/shape pairs never seen in training are drawn about as well as seen ones.
    for attribute in ("background", "color", "shape"):
        gap = score.rate("seen", attribute) - score.rate("held_out", attribute)
        assert gap <= 0.10, (attribute, score.table())
