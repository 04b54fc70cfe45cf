"""A smoke run of the embedded model's training script: a handful of steps, resumable."""

from __future__ import annotations

import json
from pathlib import Path

from boothstudio.services.diffusion.loading import load_pipeline
from research.embedded_model import train as train_embedded

ARGS = [
    "--scenes",
    "64",
    "--batch",
    "4",
    "--vae-batch",
    "4",
    "--checkpoint-every",
    "2",
    "--sample-every",
    "4",
    "--threads",
    "1",
]


def test_training_script_smoke_and_resume(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    train_embedded.main(
        ["--work", str(work), "--out", str(out), "--vae-steps", "2", "--unet-steps", "2", *ARGS]
    )
    info_first = [json.loads(line) for line in (work / "unet-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in info_first] == [1, 2]
    # Asking for more steps continues from the saved state instead of starting over.
    train_embedded.main(
        ["--work", str(work), "--out", str(out), "--vae-steps", "2", "--unet-steps", "4", *ARGS]
    )
    steps = [
        json.loads(line)["step"] for line in (work / "unet-log.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]
    assert (work / "samples" / "step-000004.png").exists()
    pipe, info = load_pipeline(out)
    assert info.architecture == "tiny-sd" and info.native_resolution == 64
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the latents, as SD does
