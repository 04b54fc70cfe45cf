"""`boothstudio generate --hires...` and `boothstudio edit --outpaint ...` against a real Catalog +
Generator on the embedded model: the images, the progress over both passes, the rounding warning,
and bad input (parse errors naming the option, server refusals naming the field, exit 2).
Rerun: `.venv/bin/pytest tests/sdk/test_cli_hires_outpaint.py -v`
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.generator.stack import Stack, start_stack, stop_stack
from tests.helpers import ROOT
from tests.sdk.test_cli import one_line, run, run_here

EMBEDDED = ROOT / "services" / "diffusion" / "embedded_model"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = start_stack(EMBEDDED, ["preview_interval=0"])
    yield s
    stop_stack(s)


def addresses(stack: Stack) -> list[str]:
    return ["--catalog", stack.catalog.address, "--generator", stack.generator.address]


def parameters(path: str) -> str:
    return str(Image.open(path).info["parameters"])


def test_generate_with_hires_fix_in_a_real_process(stack: Stack, tmp_path: Path) -> None:
    res = run("--json", "--progress", "always", "generate", "a large red circle on a white "
              "background", "-W", "128", "-H", "128", "--steps", "4", "--seed", "3",
              "--hires-steps", "4", "--hires-strength", "0.5", "--hires-upscaler", "lanczos",
              "-o", str(tmp_path), env={"BOOTHSTUDIO_CATALOG": stack.catalog.address,
                                        "BOOTHSTUDIO_GENERATOR": stack.generator.address})
    assert res.returncode == 0, res.stderr
    (image,) = json.loads(res.stdout)["images"]
    assert Image.open(image["path"]).size == (128, 128)
    text = parameters(image["path"])
    assert "Size: 64x64" in text and "Hires upscale: 2" in text and "Hires steps: 4" in text
    assert "Hires upscaler: Lanczos" in text and "Denoising strength: 0.5" in text
    # one progress line over both passes: 4 + int(4 x 0.5) steps
    assert "step 6/6" in res.stderr and "step 4/6" in res.stderr


def test_edit_outpaint(stack: Stack, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    picture = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    picture.save(init)
    res = run_here(*addresses(stack), "--json", "edit", str(init), "a large red circle on a "
                   "white background", "--outpaint", "left=30, top=16", "--steps", "4",
                   "--seed", "1", "--no-gallery", "-o", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    (image,) = json.loads(res.stdout)["images"]
    assert Image.open(image["path"]).size == (96, 80)
    assert "Outpaint: left=32 top=16 feather=16" in parameters(image["path"])
    assert "rounded up to 96x80" in res.stderr and "OUTPAINT_ROUNDED" in res.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["edit", "IMG", "x", "--outpaint", "left=3x"], "--outpaint: left"),
        (["edit", "IMG", "x", "--outpaint", "lft=3"], "--outpaint"),
        (["edit", "IMG", "x", "--outpaint", "left=-3"], "--outpaint: left"),
        (["edit", "IMG", "x", "--outpaint", "feather=3"], "--outpaint"),
        (["generate", "x", "--hires-upscaler", "esrgan"], "--hires-upscaler"),
        (["generate", "x", "--hires-first-pass", "64"], "--hires-first-pass"),
    ],
)
def test_parse_errors_name_the_option(args: list[str], named: str, tmp_path: Path) -> None:
    res = run_here(*(str(tmp_path / "i.png") if a == "IMG" else a for a in args))
    assert res.returncode == 2
    assert named in one_line(res.stderr), res.stderr


def test_server_refusals_name_the_field(stack: Stack, tmp_path: Path) -> None:
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "white").save(init)
    res = run_here(*addresses(stack), "generate", "x", "-W", "128", "--hires-strength", "1.5")
    assert res.returncode == 2 and "hires.denoising_strength" in one_line(res.stderr)
    res = run_here(*addresses(stack), "generate", "x", "--hires")  # native size: nothing to do
    assert res.returncode == 2 and "hires" in one_line(res.stderr)
    res = run_here(*addresses(stack), "edit", str(init), "x", "--outpaint", "right=4000")
    assert res.returncode == 2 and "outpaint.right" in one_line(res.stderr)
    res = run_here(*addresses(stack), "edit", str(init), "x", "--outpaint", "top=8",
                   "--mask", str(init))
    assert res.returncode == 2 and "mask_image" in one_line(res.stderr)
    assert res.stdout == ""
