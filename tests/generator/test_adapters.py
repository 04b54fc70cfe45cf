"""The adapters' translations, pinned: typed request -> each backend's own parameters."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from boothstudio.services.generator.adapters.a1111 import A1111Adapter
from boothstudio.services.generator.adapters.base import GenerationSpec, ModelRef, RunHooks
from boothstudio.services.generator.adapters.diffusers import DiffusersAdapter
from boothstudio.services.generator.adapters.hosted import HostedAdapter
from boothstudio.services.generator.adapters.http import BackendError
from tests.generator.fake_hosted import FakeHosted

MODEL = ModelRef("m", "diffusers", "/models/m", "diffusers", architecture="sd1")


def spec(**kw) -> GenerationSpec:  # type: ignore[no-untyped-def]
    base = dict(
        prompt="a cat", negative_prompt="dog", model=MODEL, sampler="dpmpp_2m",
        schedule="karras", steps=20, cfg_scale=6.5, width=64, height=64, seeds=[5, 6],
    )  # fmt: skip
    base.update(kw)
    return GenerationSpec(**base)  # type: ignore[arg-type]


def test_diffusers_translation() -> None:
    plan = DiffusersAdapter().translate([spec(), spec(prompt="a dog", seeds=[9])])
    assert plan.scheduler_class == "DPMSolverMultistepScheduler"
    assert plan.scheduler_kwargs["use_karras_sigmas"] is True
    assert plan.scheduler_kwargs["algorithm_type"] == "dpmsolver++"
    assert [j.prompt for j in plan.jobs] == ["a cat", "a dog"]
    assert [list(j.seeds) for j in plan.jobs] == [[5, 6], [9]]
    assert plan.jobs[0].cfg_scale == 6.5 and plan.jobs[0].negative_prompt == "dog"
    ddim = DiffusersAdapter().translate([spec(sampler="ddim", schedule="normal",
                                              sampler_options={"eta": 0.4})])  # fmt: skip
    assert ddim.scheduler_class == "DDIMScheduler" and ddim.step_kwargs == {"eta": 0.4}
    sde = DiffusersAdapter().translate([spec(sampler="dpmpp_2m_sde_heun", schedule="exponential")])
    assert sde.scheduler_kwargs["algorithm_type"] == "sde-dpmsolver++"
    assert sde.scheduler_kwargs["solver_type"] == "heun"
    assert sde.scheduler_kwargs["use_exponential_sigmas"] is True


def test_diffusers_batch_key_groups_only_compatible_requests() -> None:
    a = DiffusersAdapter()
    assert a.batch_key(spec()) == a.batch_key(spec(prompt="other", cfg_scale=3, seeds=[1]))
    for different in (
        spec(steps=21),
        spec(width=128),
        spec(sampler="euler", schedule="normal"),
        spec(model=ModelRef("n", "diffusers", "/models/n", "diffusers")),
    ):
        assert a.batch_key(different) != a.batch_key(spec())  # fmt: skip
    img = Image.new("RGB", (64, 64))
    assert a.batch_key(spec(init_image=img, strength=0.5)) != a.batch_key(spec())
    assert a.batch_key(spec(init_image=img, strength=0.5)) != a.batch_key(
        spec(init_image=img, strength=0.6)
    )


def test_a1111_translation_uses_the_webui_field_names() -> None:
    s = spec(model=ModelRef("w", "a1111", "sd15.safetensors [abc]", ""),
             backend_options={"clip_skip": 2}, sampler_options={"eta": 0.3})  # fmt: skip
    path, body = A1111Adapter("http://webui:7860").translate([s])
    assert path == "/sdapi/v1/txt2img"
    assert body["cfg_scale"] == 6.5 and "cfgScale" not in body
    assert body["sampler_name"] == "DPM++ 2M" and body["scheduler"] == "karras"
    assert body["seed"] == 5 and body["batch_size"] == 2 and body["n_iter"] == 1
    assert body["negative_prompt"] == "dog" and body["eta"] == 0.3
    assert body["override_settings"] == {
        "sd_model_checkpoint": "sd15.safetensors [abc]",
        "CLIP_stop_at_last_layers": 2,
    }
    img = Image.new("RGB", (64, 64))
    path, body = A1111Adapter("http://webui:7860").translate(
        [spec(init_image=img, mask=img, strength=0.4, mask_fill="fill", mask_blur=8)]
    )
    assert path == "/sdapi/v1/img2img"
    assert body["denoising_strength"] == 0.4 and body["inpainting_fill"] == 0
    assert body["mask_blur"] == 8 and body["inpainting_mask_invert"] == 0
    assert isinstance(body["init_images"][0], str) and isinstance(body["mask"], str)


def test_diffusers_adapter_applies_a_lora_only_to_its_own_runs(tiny_model, tmp_path) -> None:
    """A LoRA model runs on its base model's cached pipeline with its adapter switched on; the
    base model's own runs before and after are untouched, and lora_scale 0 is the base model."""
    import numpy as np

    from boothstudio.services.generator.adapters.base import RunHooks
    from tests.generator.fixtures import build_lora

    lora_file = build_lora(tiny_model, tmp_path / "lora")
    base = ModelRef("tiny", "diffusers", str(tiny_model), "diffusers", native_resolution=64)
    lora = ModelRef("tiny-lora", "diffusers", str(lora_file), "lora", base=base,
                    native_resolution=64)
    adapter = DiffusersAdapter()

    def generate(model: ModelRef, **options: float) -> np.ndarray:
        s = spec(model=model, steps=4, seeds=[11], backend_options=dict(options))
        assert adapter.validate(s) == []
        out: list[Image.Image] = []
        adapter.run([s], RunHooks(on_step=lambda p: None, should_stop=lambda: False,
                                  is_cancelled=lambda k: False,
                                  on_image=lambda k, i, im: out.append(im),
                                  on_warning=lambda *a: None))
        return np.asarray(out[0], np.int16)

    before = generate(base)
    with_lora = generate(lora)
    assert np.abs(with_lora - before).mean() > 2.0  # the adapter changes the picture
    assert len(adapter._cache) == 1  # ...on the base model's pipeline, not a second copy
    np.testing.assert_array_equal(generate(base), before)  # switched off for the base again
    np.testing.assert_array_equal(generate(lora, lora_scale=0.0), before)
    np.testing.assert_array_equal(generate(lora), with_lora)  # and back on, deterministically
    assert adapter.validate(spec(model=base, backend_options={"lora_scale": 1.0})) == [
        ("backend_options.lora_scale", "applies to LoRA models only")]


# --- the hosted API (Stability's REST v1), against a fake that checks its documented contract

HOSTED_MODEL = ModelRef("h", "hosted", "stable-diffusion-v1-6", "")


def hosted_spec(**kw) -> GenerationSpec:  # type: ignore[no-untyped-def]
    base = dict(model=HOSTED_MODEL, schedule="karras", steps=20, width=128, height=128)
    base.update(kw)
    return spec(**base)


def collect(adapter: HostedAdapter, s: GenerationSpec) -> dict[str, list]:  # type: ignore[type-arg]
    got: dict[str, list] = {"images": [], "steps": [], "warnings": []}  # type: ignore[type-arg]
    hooks = RunHooks(
        on_step=lambda p: got["steps"].append((p.step, p.total)),
        should_stop=lambda: False,
        is_cancelled=lambda k: False,
        on_image=lambda k, i, im: got["images"].append((i, im)),
        on_warning=lambda k, reason, msg, f: got["warnings"].append((reason, f)),
    )
    adapter.run([s], hooks)
    return got


def test_hosted_translation_uses_the_rest_api_fields() -> None:
    (t2i, t2i_b) = HostedAdapter("http://x", "k").translate([hosted_spec()])
    assert t2i.path == "/v1/generation/stable-diffusion-v1-6/text-to-image"
    assert t2i.json == {
        "text_prompts": [{"text": "a cat", "weight": 1.0}, {"text": "dog", "weight": -1.0}],
        "height": 128, "width": 128, "seed": 5, "cfg_scale": 6.5, "samples": 1, "steps": 20,
        "sampler": "K_DPMPP_2M",
    }  # fmt: skip
    assert t2i_b.json is not None and t2i_b.json["seed"] == 6  # one call per seed
    init = Image.new("RGB", (128, 128), (10, 20, 30))
    (i2i,) = HostedAdapter("http://x", "k").translate(
        [hosted_spec(seeds=[3], init_image=init, strength=0.75)])
    form = dict(i2i.form)
    assert i2i.path.endswith("/image-to-image") and set(i2i.files) == {"init_image"}
    # the API's image_strength is how much of the init image is kept: 1 - our strength
    assert (form["init_image_mode"], form["image_strength"]) == ("IMAGE_STRENGTH", "0.25")
    assert form["text_prompts[1][weight]"] == "-1.0" and form["sampler"] == "K_DPMPP_2M"
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))
    (inp,) = HostedAdapter("http://x", "k").translate(
        [hosted_spec(seeds=[3], init_image=init, mask=mask, invert_mask=True, mask_blur=4)])
    assert inp.path.endswith("/image-to-image/masking")
    assert dict(inp.form)["mask_source"] == "MASK_IMAGE_BLACK"  # inverted: black is repainted
    sent = np.asarray(Image.open(io.BytesIO(inp.files["mask_image"])))
    assert sent[64, 20] == 255 and sent[64, 110] == 0 and 0 < sent[64, 64] < 255  # blurred edge


def test_hosted_validation_names_what_the_api_cannot_take() -> None:
    adapter = HostedAdapter("http://x", "k")
    assert adapter.validate(hosted_spec()) == []
    bad = hosted_spec(sampler="dpmpp_2m_sde", schedule="exponential")
    assert [f for f, _ in adapter.validate(bad)] == ["sampler"]
    assert [f for f, _ in adapter.validate(hosted_spec(schedule="exponential"))] == ["schedule"]
    ddim = hosted_spec(sampler="ddim", schedule="normal", sampler_options={"eta": 0.5})
    assert [f for f, _ in adapter.validate(ddim)] == ["sampler_options.eta"]
    fields = [f for f, _ in adapter.validate(hosted_spec(steps=5, width=100, cfg_scale=40.0,
                                                         seeds=[2**33]))]  # fmt: skip
    assert fields == ["steps", "cfg_scale", "width", "seed"]
    fill = hosted_spec(init_image=Image.new("RGB", (128, 128)),
                       mask=Image.new("L", (128, 128)), mask_fill="latent_noise")
    assert [f for f, _ in adapter.validate(fill)] == ["mask_fill"]
    style = hosted_spec(backend_options={"style_preset": "oil-painting"})
    assert [f for f, _ in adapter.validate(style)] == ["backend_options.style_preset"]


def test_hosted_adapter_against_the_fake_api() -> None:
    fake = FakeHosted(api_key="sk-good")
    try:
        adapter = HostedAdapter(fake.url, "sk-good")
        got = collect(adapter, hosted_spec(seeds=[10, 11],
                                           backend_options={"style_preset": "anime"}))
        assert [(i, im.getpixel((0, 0))) for i, im in got["images"]] == [
            (0, (10, 50, 200)), (1, (11, 50, 200))]  # fmt: skip
        assert got["steps"] == [(20, 40), (40, 40)]
        kind, engine, body, _ = fake.requests[-1]
        assert (kind, engine, body["style_preset"]) == ("text-to-image", "stable-diffusion-v1-6",
                                                         "anime")  # fmt: skip
        init = Image.new("RGB", (128, 128), (1, 2, 3))
        mask = Image.new("L", (128, 128), 255)
        got = collect(adapter, hosted_spec(seeds=[7], init_image=init, mask=mask, prompt="x"))
        kind, _, body, files = fake.requests[-1]
        assert kind == "image-to-image/masking" and body["mask_source"] == "MASK_IMAGE_WHITE"
        assert set(files) == {"init_image", "mask_image"} and len(got["images"]) == 1
        assert body["text_prompts"] == [{"text": "x", "weight": 1.0},
                                        {"text": "dog", "weight": -1.0}]  # fmt: skip
        got = collect(adapter, hosted_spec(seeds=[7], prompt="forbidden fruit"))
        assert got["warnings"] == [("CONTENT_FILTERED", "prompt")] and len(got["images"]) == 1
        with pytest.raises(BackendError) as wrong_key:
            collect(HostedAdapter(fake.url, "sk-bad"), hosted_spec(seeds=[1]))
        assert wrong_key.value.reason == "BACKEND_UNAUTHORIZED"
        with pytest.raises(BackendError) as no_engine:
            collect(adapter, hosted_spec(seeds=[1], model=ModelRef("h", "hosted", "sd-99", "")))
        assert no_engine.value.reason == "BACKEND_REJECTED" and "sd-99" in str(no_engine.value)
    finally:
        fake.close()
