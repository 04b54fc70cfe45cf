"""Hires fix and outpainting end to end: real Catalog + Generator processes on the embedded model
(64 px native), driven through the SDK; bad input refused by field before any work."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from boothstudio.clients.sdk import (
    BoothStudio,
    Finished,
    GenerationStatus,
    HiresFix,
    ImageReady,
    InvalidArgument,
    Outpaint,
    Progress,
    Started,
    WarningEvent,
)
from tests.generator.stack import Stack, start_stack, stop_stack
from tests.helpers import ROOT

EMBEDDED = ROOT / "services" / "diffusion" / "embedded_model"
PROMPT = "a large red circle on a white background"
# A1111's own pattern for "Key: value" pairs (modules/infotext_utils.py, re_param_code)
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = start_stack(EMBEDDED, ["preview_interval=1"])
    yield s
    stop_stack(s)


@pytest.fixture
def client(stack: Stack) -> Iterator[BoothStudio]:
    with BoothStudio(stack.catalog.address, stack.generator.address, timeout=600) as c:
        yield c


def stream(client: BoothStudio, prompt: str, **params: Any) -> list[Any]:
    with client.stream_generate(prompt, **params) as s:
        return list(s)


def infotext(png: bytes) -> dict[str, str]:
    text = Image.open(io.BytesIO(png)).info["parameters"]
    return {k: v.strip() for k, v in RE_PARAM.findall(text.split("\n")[-1])}


def picture() -> Image.Image:
    """A 64 px scene the embedded model knows: a red disc on white."""
    image = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(220, 30, 30))
    return image


def test_hires_fix_is_one_stream_over_both_passes(client: BoothStudio) -> None:
    events = stream(client, PROMPT, width=128, height=128, steps=6, seed=3,
                    hires=HiresFix(steps=4, denoising_strength=0.5), preview_interval=1,
                    skip_gallery=True)
    (started,) = [e for e in events if isinstance(e, Started)]
    assert (started.width, started.height, started.steps) == (128, 128, 6)
    progress = [e for e in events if isinstance(e, Progress)]
    # 6 first-pass steps + int(4 x 0.5) second-pass steps, counted as one run
    assert [p.step for p in progress] == list(range(1, 9))
    assert {p.total for p in progress} == {8}
    sizes = [Image.open(io.BytesIO(p.preview)).size for p in progress if p.preview]
    assert len(sizes) == 8 and sizes[0] != sizes[-1]  # previews from both passes
    (ready,) = [e for e in events if isinstance(e, ImageReady)]
    assert ready.image.image.size == (128, 128)
    params = infotext(ready.image.png)
    # A1111's words: Size is the first pass; the hires fields say how it became 128 px
    assert params["Size"] == "64x64"
    assert params["Hires upscale"] == "2" and params["Hires steps"] == "4"
    assert params["Hires upscaler"] == "Latent" and params["Denoising strength"] == "0.5"
    assert events[-1].status == GenerationStatus.SUCCEEDED


def test_hires_fix_defaults_and_a_pixel_upscaler(client: BoothStudio) -> None:
    result = client.generate(PROMPT, width=192, height=128, steps=4, seed=1, hires=True,
                             skip_gallery=True)
    image = result[0]
    assert image.image.size == (192, 128)
    params = infotext(image.png)
    # the first pass: the output scaled down until its short side is the native 64 px
    assert params["Size"] == "96x64" and params["Hires upscale"] == "2"
    assert "Hires steps" not in params and params["Denoising strength"] == "0.5"
    lanczos = client.generate(PROMPT, width=128, height=96, steps=4, seed=1, skip_gallery=True,
                              hires={"upscaler": "lanczos", "first_pass_width": 64,
                                     "first_pass_height": 64})[0]
    params = infotext(lanczos.png)
    assert params["Hires upscaler"] == "Lanczos" and params["Hires resize"] == "128x96"


def test_outpaint_extends_the_canvas_and_keeps_the_original(client: BoothStudio) -> None:
    original = picture()
    events = stream(client, PROMPT, init_image=original, outpaint=Outpaint(left=30, top=16),
                    steps=8, seed=2, strength=0.9, skip_gallery=True)
    (warning,) = [e.warning for e in events if isinstance(e, WarningEvent)]
    assert warning.reason == "OUTPAINT_ROUNDED" and warning.field == "outpaint"
    assert "96x80" in warning.message and "left=32 top=16" in warning.message
    (started,) = [e for e in events if isinstance(e, Started)]
    assert (started.width, started.height) == (96, 80)
    (ready,) = [e for e in events if isinstance(e, ImageReady)]
    out = np.asarray(ready.image.image.convert("RGB"), np.int32)
    assert out.shape == (80, 96, 3)
    # beyond the feather (16 px) and the mask blur (4 px, about 12 px of tail) nothing moved
    kept = out[16 + 28:, 32 + 28:]
    assert np.abs(kept - np.asarray(original, np.int32)[28:, 28:]).max() == 0
    # the new band is painted in the scene's white background
    assert out[:, :24].mean() > 150
    params = infotext(ready.image.png)
    assert params["Outpaint"] == "left=32 top=16 feather=16"
    assert params["Size"] == "96x80" and params["Denoising strength"] == "0.9"
    assert isinstance(events[-1], Finished) and events[-1].status == GenerationStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"hires": {"denoising_strength": 1.5}, "width": 128}, "hires.denoising_strength"),
        ({"hires": {"upscaler": "esrgan"}, "width": 128}, "hires.upscaler"),
        ({"hires": {"steps": 151}, "width": 128}, "hires.steps"),
        ({"hires": {"first_pass_width": 60}, "width": 128}, "hires.first_pass_width"),
        ({"hires": {"first_pass_height": 128}, "height": 96}, "hires.first_pass_height"),
        ({"hires": True}, "hires"),  # the output is the native size: nothing to enlarge
        ({"hires": True, "init_image": "PICTURE"}, "hires"),
        ({"hires": True, "width": 2048, "height": 2048, "count": 8}, "count"),
        ({"outpaint": {"left": -8}, "init_image": "PICTURE"}, "outpaint.left"),
        ({"outpaint": {"right": 4000}, "init_image": "PICTURE"}, "outpaint.right"),
        ({"outpaint": {"left": 2000}, "init_image": "PICTURE"}, "outpaint.left"),
        ({"outpaint": {"top": 8, "feather": 300}, "init_image": "PICTURE"}, "outpaint.feather"),
        ({"outpaint": {}, "init_image": "PICTURE"}, "outpaint"),
        ({"outpaint": {"left": 32}}, "outpaint"),
        ({"outpaint": {"left": 32}, "init_image": "PICTURE", "mask": "PICTURE"}, "mask_image"),
        ({"outpaint": {"left": 32}, "init_image": "PICTURE", "width": 96}, "width"),
    ],
)
def test_bad_input_is_refused_by_field(
    client: BoothStudio, params: dict[str, Any], field: str
) -> None:
    params = {k: picture() if v == "PICTURE" else v for k, v in params.items()}
    with pytest.raises(InvalidArgument) as e:
        client.generate(PROMPT, steps=2, skip_gallery=True, **params)
    assert field in e.value.fields, e.value.fields


# ------------------------------------------------------------------------- adapters' translation


def _spec(**kw: Any) -> Any:
    from boothstudio.services.generator.adapters.base import GenerationSpec, ModelRef

    base: dict[str, Any] = dict(
        prompt="a cat", negative_prompt="", model=ModelRef("w", "a1111", "sd15 [abc]", ""),
        sampler="euler", schedule="normal", steps=20, cfg_scale=7.0, width=1024, height=768,
        seeds=[5],
    )  # fmt: skip
    base.update(kw)
    return GenerationSpec(**base)


def test_a1111_gets_hires_fix_in_its_own_fields() -> None:
    from boothstudio.services.generator.adapters.a1111 import A1111Adapter
    from boothstudio.services.generator.adapters.base import HiresSpec

    hires = HiresSpec(512, 384, "lanczos", steps=10, denoising_strength=0.45)
    path, body = A1111Adapter("http://webui:7860").translate([_spec(hires=hires)])
    assert path == "/sdapi/v1/txt2img"
    assert (body["width"], body["height"]) == (512, 384)  # the first pass
    assert body["enable_hr"] is True and body["hr_scale"] == 2.0
    assert (body["hr_resize_x"], body["hr_resize_y"]) == (1024, 768)
    assert body["hr_upscaler"] == "Lanczos" and body["hr_second_pass_steps"] == 10
    assert body["denoising_strength"] == 0.45
    _, plain = A1111Adapter("http://webui:7860").translate([_spec()])
    assert "enable_hr" not in plain and (plain["width"], plain["height"]) == (1024, 768)


def test_hosted_refuses_hires_fix_by_field() -> None:
    from boothstudio.services.generator.adapters.base import HiresSpec, ModelRef
    from boothstudio.services.generator.adapters.hosted import HostedAdapter

    spec = _spec(model=ModelRef("h", "hosted", "stable-diffusion-v1-6", ""), sampler="euler",
                 schedule="normal", hires=HiresSpec(512, 384))
    problems = HostedAdapter("http://hosted", "key").validate(spec)
    assert [f for f, _ in problems] == ["hires"]


def test_diffusers_runs_hires_requests_together_only_when_they_match() -> None:
    from boothstudio.services.generator.adapters.base import HiresSpec, ModelRef
    from boothstudio.services.generator.adapters.diffusers import DiffusersAdapter

    adapter = DiffusersAdapter()
    model = ModelRef("m", "diffusers", "/m", "diffusers")
    one = _spec(model=model, hires=HiresSpec(512, 384))
    assert adapter.batch_key(one) == adapter.batch_key(_spec(model=model, prompt="a dog",
                                                             hires=HiresSpec(512, 384)))
    for other in (_spec(model=model), _spec(model=model, hires=HiresSpec(512, 384, "lanczos")),
                  _spec(model=model, hires=HiresSpec(512, 384, denoising_strength=0.7))):
        assert adapter.batch_key(other) != adapter.batch_key(one)
    plan = adapter.translate([one])
    assert (plan.hires.first_width, plan.hires.first_height) == (512, 384)
    assert (plan.width, plan.height) == (1024, 768)
