"""The sampler table: names, aliases, schedules, options and the scheduler each becomes."""

from __future__ import annotations

import pytest

from boothstudio.services.diffusion import samplers

SD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def test_at_least_twelve_samplers_with_comfy_and_legacy_names() -> None:
    assert len(samplers.SAMPLERS) >= 12
    assert samplers.resolve("DPM++ 2M Karras") == (samplers.SAMPLERS["dpmpp_2m"], "karras")
    assert samplers.resolve("dpmpp_2m")[0].id == "dpmpp_2m"
    assert samplers.resolve("euler_ancestral")[0].id == "euler_a"
    assert samplers.resolve("Euler a")[0].id == "euler_a"
    assert samplers.resolve("dpm_2_ancestral")[0].id == "dpm2_a"
    assert samplers.resolve("uni_pc")[0].id == "unipc"
    assert samplers.resolve("K_DPMPP_2M")[0].id == "dpmpp_2m"
    assert samplers.resolve("DPM++ 2M SDE Exponential") == (
        samplers.SAMPLERS["dpmpp_2m_sde"],
        "exponential",
    )
    # A1111 defaults
    assert samplers.resolve("DPM++ 2M")[1] == "karras"
    assert samplers.resolve("DPM2 a")[1] == "karras"
    assert samplers.resolve("DPM++ 2M SDE")[1] == "exponential"
    assert samplers.resolve("")[0].id == samplers.DEFAULT_SAMPLER
    assert samplers.resolve("Euler", "Karras")[1] == "karras"


@pytest.mark.parametrize(
    ("name", "schedule", "field"),
    [
        ("nope", "", "sampler"),
        ("Euler", "zigzag", "schedule"),
        ("DDIM", "karras", "schedule"),
        ("DPM++ 2M Karras", "exponential", "schedule"),
    ],
)
def test_bad_names_name_the_field(name: str, schedule: str, field: str) -> None:
    with pytest.raises(samplers.SamplerError) as err:
        samplers.resolve(name, schedule)
    assert err.value.field == field


def test_translation_to_diffusers_is_pinned() -> None:
    import diffusers

    sch = samplers.build_scheduler(SD_SCHEDULER, "DPM++ 2M", "karras")
    assert isinstance(sch, diffusers.DPMSolverMultistepScheduler)
    assert sch.config.use_karras_sigmas is True
    assert sch.config.algorithm_type == "dpmsolver++"
    sde = samplers.build_scheduler(SD_SCHEDULER, "DPM++ 2M SDE Heun", "")
    assert sde.config.algorithm_type == "sde-dpmsolver++"
    assert sde.config.solver_type == "heun"
    assert sde.config.use_exponential_sigmas is True
    assert isinstance(samplers.build_scheduler(SD_SCHEDULER, "PLMS"), diffusers.PNDMScheduler)
    assert samplers.build_scheduler(SD_SCHEDULER, "PLMS").config.skip_prk_steps is True
    assert samplers.build_scheduler(SD_SCHEDULER, "Euler", "beta").config.use_beta_sigmas is True
    assert samplers.build_scheduler(
        SD_SCHEDULER, "DDIM", "sgm_uniform"
    ).config.timestep_spacing == ("trailing")
    euler_a = samplers.build_scheduler(SD_SCHEDULER, "Euler a", options={"eta": 0.5})
    assert isinstance(euler_a, diffusers.EulerAncestralDiscreteScheduler)
    assert euler_a.config.eta == 0.5 and euler_a.config.s_noise == 1.0
    # the model's training settings survive
    assert sch.config.prediction_type == "epsilon"
    assert sch.config.beta_schedule == "scaled_linear"


def test_every_sampler_and_schedule_builds_and_sets_timesteps() -> None:
    for spec in samplers.SAMPLERS.values():
        for sch in spec.schedules:
            scheduler = samplers.build_scheduler(SD_SCHEDULER, spec.id, sch)
            scheduler.set_timesteps(6)
            assert len(scheduler.timesteps) >= 6, (spec.id, sch)


def test_options_are_checked_against_the_schema() -> None:
    ddim = samplers.SAMPLERS["ddim"]
    values, problems = samplers.check_options(ddim, {"eta": 0.3})
    assert values == {"eta": 0.3} and not problems
    _, problems = samplers.check_options(ddim, {"eta": 3.0, "bogus": 1})
    assert {f for f, _ in problems} == {"sampler_options.eta", "sampler_options.bogus"}
    assert samplers.step_kwargs(ddim, {"eta": 0.3}) == {"eta": 0.3}


def test_euler_a_options_are_config_arguments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from boothstudio.services.diffusion.eta_euler_ancestral_scheduler import (
        EtaEulerAncestralScheduler,
    )

    euler_a = samplers.build_scheduler(
        SD_SCHEDULER, "Euler a", options={"eta": 0.25, "s_noise": 0.75}
    )
    assert isinstance(euler_a, EtaEulerAncestralScheduler)
    euler_a.save_config(tmp_path)
    loaded = EtaEulerAncestralScheduler.from_config(
        EtaEulerAncestralScheduler.load_config(tmp_path)
    )
    assert (loaded.config.eta, loaded.config.s_noise) == (0.25, 0.75)
    assert loaded.config.beta_schedule == "scaled_linear"  # the model's settings travel too
    assert EtaEulerAncestralScheduler.from_config(SD_SCHEDULER).config.eta == 1.0
