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
