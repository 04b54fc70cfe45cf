"""Euler a with AUTOMATIC1111's `eta` and `s_noise` settings, as a diffusers scheduler.

diffusers' EulerAncestralDiscreteScheduler always adds the full ancestral noise; A1111 scales it
by `eta` (0 = the deterministic Euler path) and the noise itself by `s_noise`. Both are config
arguments, so `from_config`/`save_config` carry them like any other setting::

    scheduler = EtaEulerAncestralScheduler.from_config(pipe.scheduler.config, eta=0.5)
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config

# (from its own module: mypy reads `from diffusers import ...` as diffusers' dummy objects)
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
    EulerAncestralDiscreteSchedulerOutput,
)
from diffusers.utils.torch_utils import randn_tensor


class EtaEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """EulerAncestralDiscreteScheduler whose ancestral noise is scaled by `eta` and `s_noise`."""

    @register_to_config  # type: ignore[untyped-decorator]  # (diffusers' own is untyped)
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        eta: float = 1.0,
        s_noise: float = 1.0,
    ) -> None:
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> EulerAncestralDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        eta, s_noise = self.config["eta"], self.config["s_noise"]
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma_from = self.sigmas[self.step_index]
        sigma_to = self.sigmas[self.step_index + 1]
        sample = sample.to(torch.float32)
        if self.config["prediction_type"] == "v_prediction":
            x0 = model_output * (-sigma_from / (sigma_from**2 + 1) ** 0.5) + sample / (
                sigma_from**2 + 1
            )
        else:
            x0 = sample - sigma_from * model_output
        # k-diffusion's get_ancestral_step, with eta scaling the noise that is added back
        up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_up = torch.minimum(sigma_to, eta * up)
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - x0) / sigma_from * (sigma_down - sigma_from)
        if eta > 0 and float(sigma_to) > 0:
            noise = randn_tensor(
                model_output.shape,
                dtype=model_output.dtype,
                device=model_output.device,
                generator=generator,
            )
            prev = prev + noise * sigma_up * s_noise
        prev = prev.to(model_output.dtype)
        self._step_index += 1  # type: ignore[operator,assignment]  # (typed by its None start)
        if not return_dict:
            return (prev, x0)
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
