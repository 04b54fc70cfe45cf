"""The sampler table: the names users know, the schedules each supports, their own settings, and
the diffusers scheduler each one becomes.

Modern UIs (AUTOMATIC1111 >= 1.9, ComfyUI) treat *sampler* and *schedule* as two choices; older
ones glued them together ("DPM++ 2M Karras"). Both spellings resolve here:

    sampler, schedule = resolve("DPM++ 2M Karras")          # -> dpmpp_2m, "karras"
    sched = build_scheduler(pipe.scheduler.config, "dpmpp_2m", "karras")
    # -> DPMSolverMultistepScheduler(use_karras_sigmas=True, ...)

This module imports no torch/diffusers at import time (the Catalog lists samplers without the heavy
stack); `build_scheduler` imports diffusers when called.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class ScheduleSpec:
    id: str
    label: str
    help: str
    #: scheduler config overrides this schedule applies
    overrides: Mapping[str, Any]


SCHEDULES: dict[str, ScheduleSpec] = {
    s.id: s
    for s in (
        ScheduleSpec("normal", "Normal", "The scheduler's own sigma spacing (model default).", {}),
        ScheduleSpec(
            "karras",
            "Karras",
            "Karras et al. sigmas: more steps at low noise; good at low step counts.",
            {"use_karras_sigmas": True},
        ),
        ScheduleSpec(
            "exponential",
            "Exponential",
            "Sigmas evenly spaced in log space.",
            {"use_exponential_sigmas": True},
        ),
        ScheduleSpec(
            "beta",
            "Beta",
            "Beta-distribution spaced sigmas (needs scipy).",
            {"use_beta_sigmas": True},
        ),
        ScheduleSpec(
            "sgm_uniform",
            "SGM Uniform",
            "Timesteps spaced from the last one (trailing); starts at full noise.",
            {"timestep_spacing": "trailing"},
        ),
        ScheduleSpec(
            "simple",
            "Simple",
            "ComfyUI's simple schedule: trailing timestep spacing.",
            {"timestep_spacing": "trailing"},
        ),
    )
}

SIGMA_SCHEDULES = ("normal", "karras", "exponential", "beta", "sgm_uniform", "simple")
SPACING_SCHEDULES = ("normal", "sgm_uniform", "simple")

# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamSpec:
    """Schema of one sampler option (mirrors boothstudio.v1.Parameter)."""

    name: str
    type: str  # int | float | bool | choice | string
    default: Any
    label: str
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(converted value, None) or (None, what is wrong)."""
        if self.type == "bool":
            if isinstance(value, bool):
                return value, None
            return None, f"must be a boolean, got {value!r}"
        if self.type in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None, f"must be a number, got {value!r}"
            if self.type == "int" and float(value) != int(value):
                return None, f"must be a whole number, got {value!r}"
            v: Any = int(value) if self.type == "int" else float(value)
            if isinstance(v, float) and not math.isfinite(v):
                return None, "must be finite"
            if self.min is not None and v < self.min:
                return None, f"must be >= {self.min:g}, got {v:g}"
            if self.max is not None and v > self.max:
                return None, f"must be <= {self.max:g}, got {v:g}"
            return v, None
        if not isinstance(value, str):
            return None, f"must be a string, got {value!r}"
        if self.type == "choice" and value not in self.choices:
            return None, f"must be one of {list(self.choices)}, got {value!r}"
        return value, None


ETA = ParamSpec(
    "eta", "float", 1.0, "Eta", "Noise added per step (0 = deterministic ODE path).", 0.0, 1.0
)
DDIM_ETA = ParamSpec(
    "eta", "float", 0.0, "Eta", "DDIM noise per step: 0 = DDIM, 1 = DDPM-like.", 0.0, 1.0
)
S_NOISE = ParamSpec("s_noise", "float", 1.0, "Noise scale", "Scale of the added noise.", 0.0, 2.0)
S_CHURN = ParamSpec("s_churn", "float", 0.0, "Churn", "Extra noise injected per step.", 0.0, 100.0)
S_TMIN = ParamSpec("s_tmin", "float", 0.0, "Churn sigma min", "Churn only above this sigma.", 0.0)
S_TMAX = ParamSpec(
    "s_tmax", "float", 1000.0, "Churn sigma max", "Churn only below this sigma.", 0.0
)
SOLVER_ORDER_2 = ParamSpec("solver_order", "int", 2, "Order", "Multistep solver order.", 1, 3)
LOWER_ORDER_FINAL = ParamSpec(
    "lower_order_final",
    "bool",
    True,
    "Lower order final",
    "Use lower-order steps at the end (stabler below 15 steps).",
)

# --------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class SamplerSpec:
    id: str
    label: str  # the AUTOMATIC1111 name
    scheduler_class: str  # diffusers class name
    description: str
    schedules: tuple[str, ...]
    default_schedule: str = "normal"
    comfy: str = ""  # ComfyUI sampler name
    extra_aliases: tuple[str, ...] = ()  # e.g. Stability gRPC enum names
    config: Mapping[str, Any] = field(default_factory=dict)  # fixed scheduler config overrides
    parameters: tuple[ParamSpec, ...] = ()
    default_steps: int = 20
    stochastic: bool = False  # uses fresh noise every step (needs per-image generators)
    needs_scipy: bool = False
    a1111: bool = True  # offered by the AUTOMATIC1111 webui under `label`

    @property
    def aliases(self) -> list[str]:
        """Every other accepted name: ComfyUI name, legacy combined names, extra aliases."""
        out: list[str] = []
        if self.comfy and self.comfy != self.id:
            out.append(self.comfy)
        out += list(self.extra_aliases)
        for sch in self.schedules:
            if sch in ("karras", "exponential"):
                out.append(f"{self.label} {SCHEDULES[sch].label}")
        return out

    def parameter(self, name: str) -> ParamSpec | None:
        return next((p for p in self.parameters if p.name == name), None)


SAMPLERS: dict[str, SamplerSpec] = {
    s.id: s
    for s in (
        SamplerSpec(
            "euler",
            "Euler",
            "EulerDiscreteScheduler",
            "First-order ODE solver; fast and predictable.",
            SIGMA_SCHEDULES,
            comfy="euler",
            extra_aliases=("K_EULER",),
            parameters=(S_CHURN, S_TMIN, S_TMAX, S_NOISE),
        ),
        SamplerSpec(
            "euler_a",
            "Euler a",
            "EulerAncestralDiscreteScheduler",
            "Ancestral Euler: adds fresh noise each step; images keep changing with steps.",
            SPACING_SCHEDULES,
            comfy="euler_ancestral",
            extra_aliases=("K_EULER_ANCESTRAL", "Euler Ancestral"),
            parameters=(ETA, S_NOISE),
            stochastic=True,
        ),
        SamplerSpec(
            "heun",
            "Heun",
            "HeunDiscreteScheduler",
            "Second-order (two UNet passes per step): accurate, twice the cost.",
            SIGMA_SCHEDULES,
            comfy="heun",
            extra_aliases=("K_HEUN",),
            default_steps=10,
        ),
        SamplerSpec(
            "lms",
            "LMS",
            "LMSDiscreteScheduler",
            "Linear multistep.",
            SIGMA_SCHEDULES,
            comfy="lms",
            extra_aliases=("K_LMS",),
            needs_scipy=True,
        ),
        SamplerSpec(
            "dpmpp_2m",
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            "DPM-Solver++ second-order multistep: the common default.",
            SIGMA_SCHEDULES,
            default_schedule="karras",
            comfy="dpmpp_2m",
            extra_aliases=("K_DPMPP_2M",),
            config={"algorithm_type": "dpmsolver++", "solver_order": 2},
            parameters=(LOWER_ORDER_FINAL,),
        ),
        SamplerSpec(
            "dpmpp_2m_sde",
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            "Stochastic DPM-Solver++ 2M.",
            SIGMA_SCHEDULES,
            default_schedule="exponential",
            comfy="dpmpp_2m_sde",
            config={"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
            parameters=(LOWER_ORDER_FINAL,),
            stochastic=True,
        ),
        SamplerSpec(
            "dpmpp_2m_sde_heun",
            "DPM++ 2M SDE Heun",
            "DPMSolverMultistepScheduler",
            "Stochastic DPM-Solver++ 2M with the Heun solver type.",
            SIGMA_SCHEDULES,
            default_schedule="exponential",
            comfy="dpmpp_2m_sde_heun",
            config={"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
            parameters=(LOWER_ORDER_FINAL,),
            stochastic=True,
        ),
        SamplerSpec(
            "dpmpp_3m_sde",
            "DPM++ 3M SDE",
            "DPMSolverMultistepScheduler",
            "Stochastic third-order DPM-Solver++.",
            SIGMA_SCHEDULES,
            default_schedule="exponential",
            comfy="dpmpp_3m_sde",
            config={"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            parameters=(LOWER_ORDER_FINAL,),
            stochastic=True,
        ),
        SamplerSpec(
            "dpmpp_sde",
            "DPM++ SDE",
            "DPMSolverSinglestepScheduler",
            "DPM-Solver++ single-step.",
            ("normal", "karras", "exponential", "beta"),
            default_schedule="karras",
            comfy="dpmpp_sde",
            extra_aliases=("K_DPMPP_SDE",),
            config={"algorithm_type": "dpmsolver++", "solver_order": 2},
            parameters=(LOWER_ORDER_FINAL,),
        ),
        SamplerSpec(
            "dpm2",
            "DPM2",
            "KDPM2DiscreteScheduler",
            "Second-order DPM solver (two UNet passes per step).",
            SIGMA_SCHEDULES,
            default_schedule="karras",
            comfy="dpm_2",
            extra_aliases=("K_DPM_2",),
            default_steps=10,
        ),
        SamplerSpec(
            "dpm2_a",
            "DPM2 a",
            "KDPM2AncestralDiscreteScheduler",
            "Ancestral DPM2.",
            SIGMA_SCHEDULES,
            default_schedule="karras",
            comfy="dpm_2_ancestral",
            extra_aliases=("K_DPM_2_ANCESTRAL",),
            default_steps=10,
            stochastic=True,
        ),
        SamplerSpec(
            "ddim",
            "DDIM",
            "DDIMScheduler",
            "Denoising diffusion implicit models; eta 0 is deterministic.",
            SPACING_SCHEDULES,
            comfy="ddim",
            parameters=(DDIM_ETA,),
            stochastic=True,
        ),
        SamplerSpec(
            "plms",
            "PLMS",
            "PNDMScheduler",
            "Pseudo linear multistep (PNDM without Runge-Kutta warm-up).",
            SPACING_SCHEDULES,
            extra_aliases=("PNDM",),
            config={"skip_prk_steps": True},
        ),
        SamplerSpec(
            "unipc",
            "UniPC",
            "UniPCMultistepScheduler",
            "Unified predictor-corrector; good at very few steps.",
            SIGMA_SCHEDULES,
            comfy="uni_pc",
            parameters=(SOLVER_ORDER_2, LOWER_ORDER_FINAL),
        ),
        SamplerSpec(
            "deis",
            "DEIS",
            "DEISMultistepScheduler",
            "Diffusion exponential integrator sampler.",
            SIGMA_SCHEDULES,
            comfy="deis",
            parameters=(SOLVER_ORDER_2, LOWER_ORDER_FINAL),
            a1111=False,
        ),
        SamplerSpec(
            "lcm",
            "LCM",
            "LCMScheduler",
            "Latent consistency sampling: for LCM-distilled models, 2-8 steps.",
            SPACING_SCHEDULES,
            comfy="lcm",
            default_steps=4,
            stochastic=True,
        ),
    )
}

DEFAULT_SAMPLER = "dpmpp_2m"


class SamplerError(ValueError):
    """An unknown sampler/schedule or a bad option. `field` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _build_index() -> dict[str, tuple[str, str | None]]:
    index: dict[str, tuple[str, str | None]] = {}
    for s in SAMPLERS.values():
        index[_norm(s.id)] = (s.id, None)
        index[_norm(s.label)] = (s.id, None)
        for alias in s.aliases:
            schedule = None
            for sch in ("karras", "exponential"):
                if alias == f"{s.label} {SCHEDULES[sch].label}":
                    schedule = sch
            index.setdefault(_norm(alias), (s.id, schedule))
    # ComfyUI combined names: "dpmpp_2m_karras"-style are not a ComfyUI thing, but "k_" prefixed
    # names from older tools are.
    for s in SAMPLERS.values():
        index.setdefault(_norm("k_" + s.id), (s.id, None))
    return index


_INDEX = _build_index()

_SCHEDULE_ALIASES = {
    "": None,
    "automatic": None,
    "default": None,
    "normal": "normal",
    "uniform": "normal",
    "karras": "karras",
    "exponential": "exponential",
    "beta": "beta",
    "sgm uniform": "sgm_uniform",
    "simple": "simple",
}


def resolve(name: str, schedule: str = "") -> tuple[SamplerSpec, str]:
    """(sampler, schedule id) for a sampler id/label/alias and an optional schedule.

    An empty name gives the default sampler; an empty schedule gives the one the legacy combined
    name implies, else the sampler's default. Raises SamplerError naming "sampler" or "schedule".
    """
    key = _norm(name) if name else _norm(DEFAULT_SAMPLER)
    if key not in _INDEX:
        raise SamplerError(
            "sampler", f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}"
        )
    sampler_id, implied = _INDEX[key]
    spec = SAMPLERS[sampler_id]
    sch_key = _norm(schedule)
    if sch_key not in _SCHEDULE_ALIASES:
        raise SamplerError(
            "schedule", f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}"
        )
    sch = _SCHEDULE_ALIASES[sch_key]
    if sch is None:
        sch = implied or spec.default_schedule
    elif implied is not None and sch != implied:
        raise SamplerError(
            "schedule",
            f"sampler name {name!r} implies schedule {implied!r} but {sch!r} was given",
        )
    if sch not in spec.schedules:
        raise SamplerError(
            "schedule",
            f"sampler {spec.label!r} does not support schedule {sch!r}; "
            f"supported: {', '.join(spec.schedules)}",
        )
    return spec, sch


def check_options(
    spec: SamplerSpec, options: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate sampler options against the schema: (values with defaults, [(field, problem)])."""
    values = {p.name: p.default for p in spec.parameters}
    problems: list[tuple[str, str]] = []
    for key, raw in options.items():
        p = spec.parameter(key)
        if p is None:
            known = ", ".join(p.name for p in spec.parameters) or "none"
            problems.append(
                (f"sampler_options.{key}", f"{spec.label} has no option {key!r} (known: {known})")
            )
            continue
        value, problem = p.check(raw)
        if problem:
            problems.append((f"sampler_options.{key}", problem))
        else:
            values[key] = value
    return values, problems


# --------------------------------------------------------------------------- diffusers


def scheduler_kwargs(
    spec: SamplerSpec, schedule: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config overrides (constructor arguments) the sampler + schedule + options become."""
    kwargs: dict[str, Any] = dict(spec.config)
    kwargs.update(SCHEDULES[schedule].overrides)
    opts = dict(options or {})
    for key in ("solver_order", "lower_order_final"):
        if key in opts and spec.parameter(key) is not None:
            kwargs[key] = opts[key]
    if spec.scheduler_class == "DPMSolverMultistepScheduler" and "use_karras_sigmas" not in kwargs:
        kwargs.setdefault("use_karras_sigmas", False)
    return kwargs


def step_kwargs(spec: SamplerSpec, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Arguments the sampler's options add to every `scheduler.step` call."""
    opts = {p.name: p.default for p in spec.parameters}
    opts.update(options or {})
    if spec.scheduler_class == "EulerDiscreteScheduler":
        return {k: float(opts[k]) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise")}
    if spec.scheduler_class == "DDIMScheduler":
        return {"eta": float(opts["eta"])}
    return {}


def build_scheduler(
    base_config: Mapping[str, Any],
    sampler: str | SamplerSpec,
    schedule: str = "",
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A fresh diffusers scheduler for `sampler` + `schedule` from a pipeline's scheduler config.

    The model's training settings (betas, prediction type, timestep count) come from
    `base_config`; the sampler's and schedule's settings override the rest.
    """
    import diffusers

    if isinstance(sampler, SamplerSpec):
        spec, sch = sampler, schedule or sampler.default_schedule
        if sch not in spec.schedules:
            raise SamplerError("schedule", f"{spec.label} does not support schedule {sch!r}")
    else:
        spec, sch = resolve(sampler, schedule)
    values, problems = check_options(spec, options or {})
    if problems:
        raise SamplerError(problems[0][0], problems[0][1])
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    # Settings of the model's original scheduler that would fight the chosen sampler.
    for key in (
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "algorithm_type",
        "solver_type",
        "solver_order",
        "skip_prk_steps",
    ):
        config.pop(key, None)
    config.update(scheduler_kwargs(spec, sch, values))
    if spec.id == "euler_a":
        # diffusers' Euler a has no eta/s_noise: our subclass takes them as config arguments
        from .eta_euler_ancestral_scheduler import EtaEulerAncestralScheduler

        config.update(eta=float(values["eta"]), s_noise=float(values["s_noise"]))
        return EtaEulerAncestralScheduler.from_config(config)
    return getattr(diffusers, spec.scheduler_class).from_config(config)


def describe() -> list[dict[str, Any]]:
    """The table as plain data (for docs and debugging)."""
    return [
        {
            "id": s.id,
            "label": s.label,
            "aliases": s.aliases,
            "schedules": list(s.schedules),
            "default_schedule": s.default_schedule,
            "scheduler": s.scheduler_class,
            "parameters": [p.name for p in s.parameters],
        }
        for s in SAMPLERS.values()
    ]
