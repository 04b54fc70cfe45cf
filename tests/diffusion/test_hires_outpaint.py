"""Hires fix and outpainting at the pipeline level, on the shipped embedded model (64 px native).

Hires fix: one run, one step count over both passes, previews from both, the output size, the
same image whatever batch it runs in, cancellation in the second pass. Outpainting: the canvas,
its feathered mask and an inpaint on it that keeps the original where the mask is 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from boothstudio.services.diffusion import pipelines
from boothstudio.services.diffusion.loading import embedded_model_dir, load_pipeline
from boothstudio.services.generator.canvas import Sides, extend_canvas, repaint_mask

PROMPT = "a large red circle on a white background"


@pytest.fixture(scope="module")
def pipe():
    pipe, info = load_pipeline(embedded_model_dir())
    assert info.native_resolution == 64
    return pipe


def test_hires_counts_both_passes_and_previews_from_both(pipe) -> None:
    states: list[tuple[int, int, tuple[int, int]]] = []

    def on_step(state: pipelines.StepState) -> None:
        states.append((state.step, state.total, state.preview().size))

    hires = pipelines.HiresPass(64, 64, "latent", steps=6, denoising_strength=0.5)
    result = pipelines.run_batch(pipe, [pipelines.ImageJob(PROMPT, seeds=[3])], width=128,
                                 height=128, steps=5, hires=hires, on_step=on_step)
    # 5 first-pass steps, then img2img's share of 6: int(6 * 0.5) = 3
    assert [s for s, _, _ in states] == list(range(1, 9))
    assert {total for _, total, _ in states} == {8}
    assert result.steps == 8
    first_pass_previews = {size for step, _, size in states if step <= 5}
    second_pass_previews = {size for step, _, size in states if step > 5}
    # previews show the latents: the second pass's are twice the size of the first's
    (small,), (large,) = first_pass_previews, second_pass_previews
    assert large == (2 * small[0], 2 * small[1])
    assert result.images[0][0].size == (128, 128)


def test_hires_image_is_the_same_alone_and_in_a_batch(pipe) -> None:
    hires = pipelines.HiresPass(64, 64, "lanczos", steps=4, denoising_strength=0.6)
    alone = pipelines.txt2img(pipe, PROMPT, seeds=[11], steps=4, width=128, height=96,
                              hires=hires, sampler="euler_a")[0]
    jobs = [pipelines.ImageJob("a blue square on a black background", seeds=[5]),
            pipelines.ImageJob(PROMPT, seeds=[11])]
    batched = pipelines.run_batch(pipe, jobs, width=128, height=96, steps=4, hires=hires,
                                  sampler="euler_a").images[1][0]
    assert alone.size == (128, 96)
    assert pipelines.images_differ(alone, batched) < 1.0


@pytest.mark.parametrize("upscaler", pipelines.HIRES_UPSCALERS)
def test_every_upscaler_makes_the_output_size(pipe, upscaler: str) -> None:
    hires = pipelines.HiresPass(64, 64, upscaler, steps=2, denoising_strength=0.5)
    image = pipelines.txt2img(pipe, PROMPT, seeds=[1], steps=2, width=128, height=128,
                              hires=hires)[0]
    assert image.size == (128, 128)


def test_hires_second_pass_changes_the_upscaled_first_pass(pipe) -> None:
    first = pipelines.txt2img(pipe, PROMPT, seeds=[4], steps=6)[0]
    enlarged = first.resize((128, 128), Image.Resampling.LANCZOS)
    hires = pipelines.HiresPass(64, 64, "lanczos", steps=6, denoising_strength=0.5)
    fixed = pipelines.txt2img(pipe, PROMPT, seeds=[4], steps=6, width=128, height=128,
                              hires=hires)[0]
    # the same picture (the first pass is the plain 64 px image), redrawn at 128 px
    assert 0.5 < pipelines.images_differ(enlarged, fixed) < 40


def test_hires_cancelled_in_the_second_pass(pipe) -> None:
    seen: list[int] = []

    def stop() -> bool:
        return len(seen) >= 5  # after the first pass (4 steps) and one second-pass step

    with pytest.raises(pipelines.GenerationCancelled):
        pipelines.txt2img(pipe, PROMPT, seeds=[1], steps=4, width=128, height=128,
                          hires=pipelines.HiresPass(64, 64, steps=4, denoising_strength=1.0),
                          on_step=lambda s: seen.append(s.step), should_stop=stop)
    assert seen == [1, 2, 3, 4, 5]


def test_hires_refuses_what_it_cannot_do(pipe) -> None:
    with pytest.raises(ValueError, match="upscaler"):
        pipelines.txt2img(pipe, PROMPT, width=128, height=128,
                          hires=pipelines.HiresPass(64, 64, "esrgan"))
    with pytest.raises(ValueError, match="larger than the output"):
        pipelines.txt2img(pipe, PROMPT, width=64, height=64,
                          hires=pipelines.HiresPass(128, 64))
    init = Image.new("RGB", (64, 64), "white")
    job = pipelines.ImageJob(PROMPT, init_image=init)
    with pytest.raises(ValueError, match="txt2img only"):
        pipelines.run_batch(pipe, [job], width=128, height=128, steps=2,
                            hires=pipelines.HiresPass(64, 64))


# ----------------------------------------------------------------------------- outpainting


def test_canvas_rounds_up_on_the_extended_sides() -> None:
    assert Sides(left=30).rounded(64, 64) == Sides(left=32)
    assert Sides(left=30, right=1).rounded(64, 64) == Sides(left=30, right=2)
    assert Sides(top=5).rounded(60, 64) == Sides(right=4, top=8)
    assert Sides(left=32, top=16).rounded(64, 64) == Sides(left=32, top=16)
    assert Sides(left=32, top=16).describe() == "left=32 top=16"


def test_canvas_keeps_the_picture_and_feathers_the_mask() -> None:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
    canvas, mask = extend_canvas(picture, Sides(left=16, top=8), feather=8)
    assert canvas.size == mask.size == (64, 72)
    assert np.array_equal(np.asarray(canvas)[8:, 16:], np.asarray(picture))
    m = np.asarray(mask, np.int32)
    assert (m[:8] == 255).all() and (m[:, :16] == 255).all()  # the new area
    assert (m[16:, 24:] == 0).all()  # beyond the feather: kept
    ramp = m[40, 16:24]
    assert ramp[0] > 200 and ramp[-1] < 40 and (np.diff(ramp) < 0).all()
    # the right and bottom are not extended: no ramp there
    assert (m[40:, -1] == 0).all() and (m[-1, 24:] == 0).all()


def test_canvas_without_feather_has_a_hard_edge() -> None:
    mask = np.asarray(repaint_mask(32, 32, Sides(right=8), feather=0))
    assert (mask[:, 32:] == 255).all() and (mask[:, :32] == 0).all()


def test_outpaint_is_an_inpaint_of_the_canvas_keeping_the_original(pipe) -> None:
    picture = pipelines.txt2img(pipe, PROMPT, seeds=[2], steps=6)[0]
    canvas, mask = extend_canvas(picture, Sides(left=32, bottom=8), feather=8)
    for fill in pipelines.MASK_FILLS:
        out = pipelines.inpaint(pipe, canvas, mask, "a large red circle on a white background",
                                seeds=[2], steps=6, mask_blur=2, mask_fill=fill, strength=0.9)[0]
        assert out.size == (96, 72)
        got, want = np.asarray(out, np.int32), np.asarray(picture, np.int32)
        # far from the seam (feather 8 + blur 2 * 3) the original pixels are kept exactly
        assert np.abs(got[:50, 32 + 16:] - want[:50, 16:]).max() == 0, fill
        # the new area is painted, not left as the stretched edges
        assert np.abs(got[:, :32] - np.asarray(canvas, np.int32)[:, :32]).mean() > 1.0, fill
