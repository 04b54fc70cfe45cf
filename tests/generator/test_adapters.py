"""The adapters' translations, pinned: typed request -> each backend's own parameters."""

from __future__ import annotations

from PIL import Image

from services.generator.adapters.a1111 import A1111Adapter
from services.generator.adapters.base import GenerationSpec, ModelRef
from services.generator.adapters.diffusers import DiffusersAdapter

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

    from services.generator.adapters.base import RunHooks
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
