"""GeneratorService end to end: real Catalog + Generator processes on loopback, grpc stubs.

The model is an untrained tiny SD of the embedded architecture (random weights): these tests
check plumbing and pixel bookkeeping, never image content. 64 px, few steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2, common_pb2, generator_pb2
from tests.generator.fake_a1111 import FakeA1111
from tests.generator.fake_hosted import FakeHosted
from tests.generator.stack import (
    Stack,
    arr,
    png,
    run,
    scrape,
    start_stack,
    stop_stack,
    to_image,
)

STEPS = 4


@pytest.fixture(scope="module")
def webui() -> Iterator[FakeA1111]:
    fake = FakeA1111()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def hosted() -> Iterator[FakeHosted]:
    fake = FakeHosted(api_key="sk-test")
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def stack(tiny_model: Path, webui: FakeA1111, hosted: FakeHosted) -> Iterator[Stack]:
    s = start_stack(
        tiny_model,
        ["queue_size=3", "preview_interval=2", "max_batch_images=8", f"a1111_url={webui.url}",
         "hosted_api_key=sk-test", f"hosted_url={hosted.url}"],
        catalog_env={"BOOTHSTUDIO_A1111_URL": webui.url,
                     "BOOTHSTUDIO_HOSTED_API_KEY": "sk-test",
                     "BOOTHSTUDIO_HOSTED_URL": hosted.url},
    )  # fmt: skip
    yield s
    stop_stack(s)


def test_txt2img_stream_shape_seeds_and_reproducibility(stack: Stack) -> None:
    a = run(stack.gen, prompt="a red circle", steps=STEPS, seed=42, count=3, skip_gallery=True)
    kinds = a["kinds"]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished"
    assert kinds.count("progress") == STEPS and kinds.count("image") == 3
    assert kinds.index("image") > max(i for i, k in enumerate(kinds) if k == "progress")
    assert list(a["started"].seeds) == [42, 43, 44]
    assert a["seeds"] == {0: 42, 1: 43, 2: 44}
    assert a["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert a["finished"].image_count == 3
    progress = a["progress"]
    assert [p.step for p in progress] == list(range(1, STEPS + 1))
    assert all(p.total_steps == STEPS for p in progress)
    assert [bool(p.preview_png) for p in progress] == [False, True, False, True]
    assert to_image(progress[1].preview_png).size[0] <= 128
    assert progress[-1].eta_seconds < progress[0].eta_seconds
    imgs = a["images"]
    assert imgs[0].size == (64, 64)
    assert np.abs(arr(imgs[0]) - arr(imgs[1])).mean() > 1.0  # distinct seeds, distinct images
    b = run(stack.gen, prompt="a red circle", steps=STEPS, seed=43, skip_gallery=True)
    b2 = run(stack.gen, prompt="a red circle", steps=STEPS, seed=43, skip_gallery=True)
    assert np.array_equal(arr(b["images"][0]), arr(b2["images"][0]))  # same request, same image
    # image 1 of the count=3 request used seed 43 too: the same image up to float rounding of
    # a batch of 3 vs 1
    assert np.abs(arr(b["images"][0]) - arr(imgs[1])).mean() < 0.5
    c = run(stack.gen, prompt="a red circle", steps=STEPS, skip_gallery=True)
    assert len(c["started"].seeds) == 1 and c["seeds"][0] == c["started"].seeds[0]


def test_every_sampler_makes_an_image_and_they_differ(stack: Stack) -> None:
    samplers = stack.cat.ListSamplers(catalog_pb2.ListSamplersRequest()).samplers
    assert len(samplers) >= 12
    images = {}
    for s in samplers:
        # 6 steps: below that a 3rd-order solver never gets to use its third order
        out = run(
            stack.gen, prompt="a blue square", steps=6, seed=7, sampler=s.id, skip_gallery=True
        )
        assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED, s.id
        assert out["started"].sampler == s.id and out["started"].schedule == s.default_schedule
        images[s.id] = arr(out["images"][0])
    ids = list(images)
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            assert not np.array_equal(images[x], images[y]), (x, y)
    # legacy combined name + options reach the scheduler
    legacy = run(stack.gen, prompt="x", steps=STEPS, seed=7, sampler="DPM++ 2M SDE Karras")
    assert (legacy["started"].sampler, legacy["started"].schedule) == ("dpmpp_2m_sde", "karras")
    eta0 = run(
        stack.gen, prompt="a blue square", steps=6, seed=7, sampler="ddim",
        sampler_options={"eta": common_pb2.OptionValue(float_value=1.0)}, skip_gallery=True,
    )  # fmt: skip
    assert not np.array_equal(arr(eta0["images"][0]), images["ddim"])


def _pattern() -> Image.Image:
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = (200, 40, 40)
    img[:, 32:] = (40, 40, 200)
    img[20:44, 20:44] = (240, 240, 60)
    return Image.fromarray(img)


def _mask(invert: bool = False) -> Image.Image:
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    return Image.fromarray(255 - m if invert else m)


def test_img2img_departs_further_with_strength(stack: Stack) -> None:
    # With random weights the VAE round trip is not faithful, so compare outputs with each
    # other: a weak strength stays near the init image's latents, a strong one wanders off.
    init = png(_pattern())
    outs = {}
    for strength in (0.1, 0.3, 0.9):
        out = run(
            stack.gen, prompt="a red circle", steps=10, seed=3, init_image=init,
            strength=strength, skip_gallery=True,
        )  # fmt: skip
        assert out["started"].width == 64 and out["started"].height == 64
        assert [p.total_steps for p in out["progress"]][:1] == [int(10 * strength)]
        outs[strength] = arr(out["images"][0])
    near = np.abs(outs[0.1] - outs[0.3]).mean()
    far = np.abs(outs[0.1] - outs[0.9]).mean()
    assert near < far


def _outside_inside(result: Image.Image, init: Image.Image) -> tuple[float, float]:
    d = np.abs(arr(result) - arr(init)).mean(axis=-1)
    outside = np.ones((64, 64), bool)
    outside[8:56, 8:56] = False  # the mask (16..48) plus a margin for the blur
    return float(d[outside].max()), float(d[20:44, 20:44].mean())


@pytest.mark.parametrize(
    "fill",
    [
        generator_pb2.MASK_FILL_ORIGINAL,
        generator_pb2.MASK_FILL_FILL,
        generator_pb2.MASK_FILL_LATENT_NOISE,
    ],
)
def test_inpaint_4_channel_changes_only_the_mask(stack: Stack, fill: int) -> None:
    init = _pattern()
    out = run(
        stack.gen, prompt="a green triangle", steps=6, seed=5, init_image=png(init),
        mask_image=png(_mask()), strength=1.0, mask_blur=2, mask_fill=fill, skip_gallery=True,
    )  # fmt: skip
    outside, inside = _outside_inside(out["images"][0], init)
    assert outside <= 1.0 and inside > 10.0


def test_inpaint_invert_and_9_channel_model(stack: Stack, inpaint_model: Path) -> None:
    init = _pattern()
    out = run(
        stack.gen, prompt="x", steps=6, seed=5, init_image=png(init), strength=1.0,
        mask_image=png(_mask(invert=True)), invert_mask=True, mask_blur=0, skip_gallery=True,
    )  # fmt: skip
    outside, inside = _outside_inside(out["images"][0], init)
    assert outside <= 1.0 and inside > 10.0
    model = stack.cat.ImportModel(
        catalog_pb2.ImportModelRequest(diffusers_path=str(inpaint_model), model_id="tiny-inpaint")
    ).model
    assert model.inpainting
    out = run(
        stack.gen, prompt="x", steps=6, seed=5, model_id="tiny-inpaint", init_image=png(init),
        mask_image=png(_mask()), mask_blur=2, strength=1.0, skip_gallery=True,
    )  # fmt: skip
    assert out["started"].model_id == "tiny-inpaint"
    outside, inside = _outside_inside(out["images"][0], init)
    assert outside <= 1.0 and inside > 10.0
    # img2img (no mask) on the inpainting model: it once crashed on the UNet's 9 channels
    out = run(
        stack.gen, prompt="x", steps=4, seed=5, model_id="tiny-inpaint", init_image=png(init),
        strength=0.5, skip_gallery=True,
    )  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert len(out["images"]) == 1


def _blocker(stack: Stack, job_id: str) -> tuple[threading.Thread, dict]:  # type: ignore[type-arg]
    """A long job running in the background until cancelled."""
    seen: dict = {"progress": 0, "events": []}  # type: ignore[type-arg]
    started = threading.Event()

    def consume() -> None:
        for e in stack.gen.Generate(
            generator_pb2.GenerateRequest(
                prompt="long", steps=150, seed=1, job_id=job_id, skip_gallery=True
            )
        ):
            seen["events"].append(e)
            if e.HasField("progress"):
                seen["progress"] += 1
                seen.setdefault("first_progress", time.monotonic())
                started.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert started.wait(120), "the long job never progressed"
    return t, seen


def test_cancel_mid_stream_stops_within_a_step(stack: Stack) -> None:
    t, seen = _blocker(stack, "blocker-cancel")
    while seen["progress"] < 3:
        time.sleep(0.01)
    ps = [e.progress for e in seen["events"] if e.HasField("progress")]
    step_seconds = 1.0 / max(ps[-1].steps_per_second, 1e-3)
    t0 = time.monotonic()
    assert stack.gen.CancelGeneration(
        generator_pb2.CancelGenerationRequest(job_id="blocker-cancel")
    ).cancelled
    t.join(30)
    assert not t.is_alive()
    last = seen["events"][-1]
    assert last.finished.status == generator_pb2.GENERATION_STATUS_CANCELLED
    assert last.finished.error_reason == "CANCELLED_BY_USER"
    steps_after = [e for e in seen["events"] if e.HasField("progress")][-1].progress.step
    assert steps_after < 150
    # The device is free within about a step: the next job starts promptly.
    nxt = stack.gen.Generate(
        generator_pb2.GenerateRequest(prompt="next", steps=1, skip_gallery=True)
    )
    for e in nxt:
        if e.HasField("started"):
            waited = time.monotonic() - t0
            break
    assert waited < 2 * step_seconds + 5.0, (waited, step_seconds)
    assert not stack.gen.CancelGeneration(
        generator_pb2.CancelGenerationRequest(job_id="blocker-cancel")
    ).cancelled
    assert (
        stack.gen.ListImages(generator_pb2.ListImagesRequest(job_id="blocker-cancel")).total_size
        == 0
    )


def test_client_leaving_cancels_and_leaves_nothing(stack: Stack) -> None:
    before = scrape(stack.generator)
    call = stack.gen.Generate(
        generator_pb2.GenerateRequest(prompt="gone", steps=150, job_id="leaver")
    )
    for e in call:
        if e.HasField("progress") and e.progress.step >= 2:
            break
    call.cancel()
    deadline = time.monotonic() + 30
    key = 'boothstudio_generator_requests_total{outcome="cancelled"}'
    while time.monotonic() < deadline:
        if scrape(stack.generator).get(key, 0) > before.get(key, 0):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the job was not cancelled after the client left")
    out = run(stack.gen, prompt="after", steps=1, skip_gallery=True)
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert stack.gen.ListImages(generator_pb2.ListImagesRequest(job_id="leaver")).total_size == 0


def test_queue_full_is_resource_exhausted(stack: Stack) -> None:
    t, _ = _blocker(stack, "blocker-queue")
    calls = [
        stack.gen.Generate(
            generator_pb2.GenerateRequest(prompt=f"q{i}", steps=150, job_id=f"queued-{i}")
        )
        for i in range(3)
    ]
    firsts = [next(iter(c)) for c in calls]  # each is queued (position after the running job)
    assert [f.queued.position for f in firsts] == [1, 2, 3]
    with pytest.raises(grpc.RpcError) as err:
        next(
            iter(stack.gen.Generate(generator_pb2.GenerateRequest(prompt="one too many", steps=1)))
        )
    d = decode_rpc_error(err.value)
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "QUEUE_FULL"
    assert d.retry_after is not None
    for i in range(3):
        assert stack.gen.CancelGeneration(
            generator_pb2.CancelGenerationRequest(job_id=f"queued-{i}")
        ).cancelled
    for c in calls:
        assert list(c)[-1].finished.status == generator_pb2.GENERATION_STATUS_CANCELLED
    stack.gen.CancelGeneration(generator_pb2.CancelGenerationRequest(job_id="blocker-queue"))
    t.join(30)


def test_concurrent_requests_are_batched_and_each_gets_its_own(stack: Stack) -> None:
    t, _ = _blocker(stack, "blocker-batch")
    prompts = [("a red circle", 11, 1), ("a blue square", 21, 2), ("a green star", 31, 1)]
    results: dict[int, dict] = {}  # type: ignore[type-arg]

    def go(i: int, prompt: str, seed: int, count: int) -> None:
        results[i] = run(
            stack.gen, prompt=prompt, seed=seed, count=count, steps=STEPS, cfg_scale=5.0 + i,
            skip_gallery=True,
        )  # fmt: skip

    threads = [
        threading.Thread(target=go, args=(i, *p), daemon=True) for i, p in enumerate(prompts)
    ]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 120
    while scrape(stack.generator)["boothstudio_generator_queue_depth"] < 3:
        assert time.monotonic() < deadline, "the three requests never queued"
        time.sleep(0.05)  # all three wait behind the blocker
    stack.gen.CancelGeneration(generator_pb2.CancelGenerationRequest(job_id="blocker-batch"))
    for th in threads:
        th.join(300)
    t.join(30)
    assert all(r["started"].batch_size == 4 for r in results.values())
    assert len({r["job_id"] for r in results.values()}) == 3
    for i, (prompt, seed, count) in enumerate(prompts):
        r = results[i]
        assert sorted(r["seeds"].values()) == [seed + k for k in range(count)]
        solo = run(
            stack.gen, prompt=prompt, seed=seed, count=count, steps=STEPS, cfg_scale=5.0 + i,
            skip_gallery=True,
        )  # fmt: skip
        assert solo["started"].batch_size == count
        for k in range(count):
            assert np.abs(arr(r["images"][k]) - arr(solo["images"][k])).mean() < 1.0


def test_gallery_round_trip_and_png_parameters(stack: Stack) -> None:
    out = run(
        stack.gen, prompt="a red circle", negative_prompt="blurry", steps=STEPS, seed=99,
        count=2, cfg_scale=6.5, sampler="Euler a", job_id="gallery-job",
    )  # fmt: skip
    ids = list(out["finished"].image_ids)
    assert len(ids) == 2 and all(ids)
    page = stack.gen.ListImages(generator_pb2.ListImagesRequest(job_id="gallery-job", page_size=1))
    assert page.total_size == 2 and page.next_page_token
    page2 = stack.gen.ListImages(
        generator_pb2.ListImagesRequest(
            job_id="gallery-job", page_size=1, page_token=page.next_page_token
        )
    )
    assert {page.images[0].image_id, page2.images[0].image_id} == set(ids)
    assert not page.images[0].png  # lists carry no bytes
    got = stack.gen.GetImage(generator_pb2.GetImageRequest(image_id=ids[1])).image
    assert got.png == out["pngs"][1].png
    assert (got.seed, got.index, got.steps, got.sampler) == (100, 1, STEPS, "euler_a")
    assert got.request.prompt == "a red circle" and got.request.negative_prompt == "blurry"
    assert got.cfg_scale == pytest.approx(6.5)
    text = to_image(got.png).info["parameters"]
    assert text == got.parameters_text
    assert text.startswith("a red circle\nNegative prompt: blurry\n")
    for part in ("Steps: 4", "Sampler: Euler a", "CFG scale: 6.5", "Seed: 100", "Size: 64x64"):
        assert part in text
    meta = stack.gen.GetImage(
        generator_pb2.GetImageRequest(image_id=ids[0], metadata_only=True)
    ).image
    assert not meta.png and meta.seed == 99
    resp = stack.gen.DeleteImages(generator_pb2.DeleteImagesRequest(image_ids=[ids[0], "img_nope"]))
    assert resp.deleted_count == 1 and list(resp.not_found_ids) == ["img_nope"]
    with pytest.raises(grpc.RpcError) as err:
        stack.gen.GetImage(generator_pb2.GetImageRequest(image_id=ids[0]))
    assert decode_rpc_error(err.value).code == grpc.StatusCode.NOT_FOUND
    assert (
        stack.gen.DeleteImages(
            generator_pb2.DeleteImagesRequest(job_id="gallery-job")
        ).deleted_count
        == 1
    )
    files = list((stack.generator.data_dir / "generator" / "images").glob("*.png"))
    assert not [f for f in files if f.stem in ids]


def _opt(**kw: float) -> dict[str, common_pb2.OptionValue]:
    return {
        k: common_pb2.OptionValue(int_value=v)
        if isinstance(v, int)
        else common_pb2.OptionValue(float_value=v)
        for k, v in kw.items()
    }


INIT = png(_pattern())
BAD = [
    ({"steps": 0}, "INVALID_ARGUMENT", "steps"),
    ({"steps": 151}, "INVALID_ARGUMENT", "steps"),
    ({"cfg_scale": 31}, "INVALID_ARGUMENT", "cfg_scale"),
    ({"width": 65}, "INVALID_ARGUMENT", "width"),
    ({"height": 4096}, "INVALID_ARGUMENT", "height"),
    ({"count": 17}, "INVALID_ARGUMENT", "count"),
    ({"init_image": INIT, "strength": 1.5}, "INVALID_ARGUMENT", "strength"),
    ({"init_image": b"not an image"}, "INVALID_ARGUMENT", "init_image"),
    ({"mask_image": INIT}, "INVALID_ARGUMENT", "mask_image"),
    ({"init_image": INIT, "mask_image": png(Image.new("L", (32, 32)))}, "INVALID_ARGUMENT",
     "mask_image"),
    ({"init_image": INIT, "mask_image": INIT, "mask_blur": 65}, "INVALID_ARGUMENT", "mask_blur"),
    ({"sampler": "nope"}, "INVALID_ARGUMENT", "sampler"),
    ({"schedule": "zigzag"}, "INVALID_ARGUMENT", "schedule"),
    ({"sampler": "DDIM", "schedule": "karras"}, "INVALID_ARGUMENT", "schedule"),
    ({"sampler": "ddim", "sampler_options": _opt(eta=5.0)}, "INVALID_ARGUMENT",
     "sampler_options.eta"),
    ({"sampler_options": _opt(bogus=1)}, "INVALID_ARGUMENT", "sampler_options.bogus"),
    ({"backend_options": _opt(clip_skip=9)}, "INVALID_ARGUMENT", "backend_options.clip_skip"),
    ({"prompt": "x" * 5000}, "INVALID_ARGUMENT", "prompt"),
    ({"job_id": "Not An Id"}, "INVALID_ARGUMENT", "job_id"),
    ({"preview_interval": -1}, "INVALID_ARGUMENT", "preview_interval"),
    ({"model_id": "no-such-model"}, "NOT_FOUND", "model_id"),
    ({"backend_id": "no-such-backend"}, "NOT_FOUND", "backend_id"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "code", "field"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_refused_before_any_work(stack: Stack, fields, code, field) -> None:  # type: ignore[no-untyped-def]
    req = generator_pb2.GenerateRequest(**{"prompt": "ok", "steps": 2, **fields})
    with pytest.raises(grpc.RpcError) as err:
        list(stack.gen.Generate(req))
    d = decode_rpc_error(err.value)
    assert d.code.name == code and field in d.fields, (d.code, d.fields, d.message)


def test_several_violations_at_once_and_truncation_warning(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stack.gen.Generate(generator_pb2.GenerateRequest(steps=0, cfg_scale=99, width=7)))
    assert set(decode_rpc_error(err.value).fields) == {"steps", "cfg_scale", "width"}
    long_prompt = " ".join(["a red circle on a blue background"] * 8)
    out = run(stack.gen, prompt=long_prompt, steps=1, skip_gallery=True)
    assert [w.reason for w in out.get("warnings", [])] == ["PROMPT_TRUNCATED"]
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED


def test_metrics_move(stack: Stack) -> None:
    before = scrape(stack.generator)
    run(stack.gen, prompt="metrics", steps=STEPS, count=2, skip_gallery=True)
    after = scrape(stack.generator)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("boothstudio_generator_images_total") == 2
    assert delta('boothstudio_generator_requests_total{outcome="succeeded"}') == 1
    assert delta("boothstudio_generator_denoising_steps_total") == STEPS
    assert delta("boothstudio_generator_batch_size_count") == 1
    assert delta("boothstudio_generator_queue_wait_seconds_count") == 1
    assert delta("boothstudio_generator_generation_seconds_count") == 1
    assert after["boothstudio_generator_denoising_steps_per_second"] > 0
    assert after["boothstudio_generator_model_load_seconds_count"] >= 1
    assert "boothstudio_generator_queue_depth" in after
    assert after.get('boothstudio_generator_requests_total{outcome="invalid"}', 0) >= 1


def test_catalog_sees_the_generator_and_a_trainer_registered_model_is_usable(
    stack: Stack, tiny_model: Path
) -> None:
    backends = stack.cat.ListBackends(catalog_pb2.ListBackendsRequest(refresh=True)).backends
    assert [(b.id, b.reachable) for b in backends] == [
        ("diffusers", True), ("a1111", True), ("hosted", True)]  # fmt: skip
    assert backends[2].kind == catalog_pb2.BACKEND_KIND_HOSTED
    assert not backends[2].capabilities.previews
    stack.cat.ImportModel(
        catalog_pb2.ImportModelRequest(
            diffusers_path=str(tiny_model), model_id="ft-fresh",
            origin=catalog_pb2.ModelOrigin(base_model_id="boothstudio-tiny", training_job_id="j1"),
            trigger_phrase="a zwx circle",
        )
    )  # fmt: skip
    out = run(stack.gen, prompt="a zwx circle", model_id="ft-fresh", steps=1, skip_gallery=True)
    assert out["started"].model_id == "ft-fresh"
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED


def import_remote_model(stack: Stack, name: str, backend_id: str, model_id: str) -> list[str]:
    """Register a remote backend's model by its name there; the sampler ids offered for it."""
    stack.cat.ImportModel(
        catalog_pb2.ImportModelRequest(
            single_file_path=name, backend_id=backend_id, model_id=model_id, architecture="sd1"
        )
    )
    return [s.id for s in stack.cat.ListSamplers(
        catalog_pb2.ListSamplersRequest(model_id=model_id)).samplers]  # fmt: skip


def test_a1111_adapter_speaks_the_webui_fields(stack: Stack, webui: FakeA1111) -> None:
    offered = import_remote_model(
        stack, "v1-5-pruned-emaonly.safetensors [6ce0161689]", "a1111", "webui-sd15"
    )
    assert "dpmpp_2m" in offered and "deis" not in offered
    out = run(
        stack.gen, prompt="a cat", negative_prompt="dog", model_id="webui-sd15",
        sampler="DPM++ 2M Karras", steps=5, cfg_scale=6.0, seed=10, count=2, width=64, height=64,
        backend_options=_opt(clip_skip=2),
    )  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert out["started"].backend_id == "a1111" and out["seeds"] == {0: 10, 1: 11}
    path, body = webui.requests[-1]
    assert path == "/sdapi/v1/txt2img"
    assert body["cfg_scale"] == 6.0 and "cfgScale" not in body
    assert (body["sampler_name"], body["scheduler"]) == ("DPM++ 2M", "karras")
    assert (body["seed"], body["batch_size"], body["steps"]) == (10, 2, 5)
    assert body["override_settings"] == {
        "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "CLIP_stop_at_last_layers": 2,
    }
    assert out["images"][1].getpixel((0, 0)) == (11, 100, 150)
    text = to_image(out["pngs"][0].png).info["parameters"]
    assert "Sampler: DPM++ 2M" in text and "Clip skip: 2" in text
    assert "Model hash: 6ce0161689" in text  # the webui's own short hash, from the title
    # inpainting becomes img2img with the webui's mask fields
    run(
        stack.gen, prompt="x", model_id="webui-sd15", steps=2, seed=1, init_image=INIT,
        mask_image=INIT, mask_fill=generator_pb2.MASK_FILL_LATENT_NOISE, invert_mask=True,
        strength=0.5, skip_gallery=True,
    )  # fmt: skip
    path, body = webui.requests[-1]
    assert path == "/sdapi/v1/img2img" and len(body["init_images"]) == 1 and body["mask"]
    assert (body["inpainting_fill"], body["inpainting_mask_invert"]) == (2, 1)
    assert body["denoising_strength"] == 0.5 and body["mask_blur"] == 4
    # cancelling interrupts the webui
    call = stack.gen.Generate(
        generator_pb2.GenerateRequest(
            prompt="long", model_id="webui-sd15", steps=150, job_id="webui-cancel"
        )
    )
    for e in call:
        if e.HasField("progress"):
            stack.gen.CancelGeneration(generator_pb2.CancelGenerationRequest(job_id="webui-cancel"))
        if e.HasField("finished"):
            assert e.finished.status == generator_pb2.GENERATION_STATUS_CANCELLED
    deadline = time.monotonic() + 10
    while not webui.interrupted.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert webui.interrupted.is_set()


def test_hosted_api_backend_end_to_end(stack: Stack, hosted: FakeHosted) -> None:
    offered = import_remote_model(stack, "stable-diffusion-v1-6", "hosted", "hosted-sd16")
    assert "dpmpp_2m" in offered and "unipc" not in offered
    out = run(
        stack.gen, prompt="a lighthouse", negative_prompt="fog", model_id="hosted-sd16",
        sampler="K_EULER", steps=12, cfg_scale=6.0, seed=20, count=2, width=128, height=128,
        skip_gallery=True,
    )  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert out["started"].backend_id == "hosted" and out["seeds"] == {0: 20, 1: 21}
    assert [out["images"][i].getpixel((0, 0)) for i in (0, 1)] == [(20, 50, 200), (21, 50, 200)]
    kind, engine, body, _ = hosted.requests[-1]
    assert (kind, engine) == ("text-to-image", "stable-diffusion-v1-6")
    assert (body["sampler"], body["steps"], body["cfg_scale"], body["seed"]) == (
        "K_EULER", 12, 6.0, 21)  # fmt: skip
    # img2img through the multipart endpoint, the strength turned into the API's image_strength
    out = run(stack.gen, prompt="x", model_id="hosted-sd16", steps=10, seed=1,
              init_image=png(Image.new("RGB", (128, 128), (9, 9, 9))), strength=0.6,
              skip_gallery=True)  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    kind, _, body, _ = hosted.requests[-1]
    assert kind == "image-to-image" and float(body["image_strength"]) == pytest.approx(0.4)
    # what the API cannot take is refused up front, the field named
    for fields, field in (({"steps": 5}, "steps"), ({"schedule": "exponential"}, "schedule"),
                          ({"width": 96}, "width")):  # fmt: skip
        req = generator_pb2.GenerateRequest(prompt="x", model_id="hosted-sd16", **fields)
        with pytest.raises(grpc.RpcError) as err:
            list(stack.gen.Generate(req))
        d = decode_rpc_error(err.value)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT and field in d.fields, d.fields


def test_sdxl_model_served_by_the_local_backend(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> None:
    from tests.diffusion.tiny_sdxl import build_tiny_sdxl

    folder = tmp_path_factory.mktemp("sdxl")
    build_tiny_sdxl(folder, tiny_model / "tokenizer")
    model = stack.cat.ImportModel(catalog_pb2.ImportModelRequest(
        diffusers_path=str(folder), model_id="tiny-sdxl")).model  # fmt: skip
    assert model.architecture == "sdxl"
    out = run(stack.gen, prompt="a red circle", model_id="tiny-sdxl", steps=3, seed=5, count=2,
              width=64, height=64, skip_gallery=True)  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    assert out["seeds"] == {0: 5, 1: 6} and out["images"][0].size == (64, 64)
    assert np.abs(arr(out["images"][0]) - arr(out["images"][1])).mean() > 0.5
    # img2img on SDXL goes through the same loop
    out = run(stack.gen, prompt="a red circle", model_id="tiny-sdxl", steps=4, seed=5,
              init_image=png(Image.new("RGB", (64, 64), (200, 30, 30))), strength=0.5,
              skip_gallery=True)  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
