"""Typed per-service settings: one pydantic model per service, each default written once.

A service declares its settings as a model (the field's description is its documentation, and
`tools/settings_reference.py` writes the README's settings table from it):

    class GeneratorSettings(ServiceSettings):
        queue_size: int = Field(16, ge=1, description="jobs allowed to wait")

    settings = load_settings(GeneratorSettings, ctx.config)
    settings.queue_size

Values come from, lowest first: the model's defaults, the YAML file's section for the service
(`generator: {queue_size: 8}`), `--set queue_size=8`, the environment
(`BOOTHSTUDIO_GENERATOR_QUEUE_SIZE=8`, or a field's own `env` name where one is documented, e.g.
`BOOTHSTUDIO_A1111_URL`); an empty variable counts as unset. Strings from flags and the
environment are converted to the field's type. A key the model does not have is refused at
start-up with a "did you mean" hint, instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from boothstudio.shared.config import ENV_PREFIX, ConfigError, ServiceConfig

S = TypeVar("S", bound="ServiceSettings")


class ServiceSettings(BaseModel):
    """Base of every service's settings: unknown keys refused, values frozen after start."""

    # a YAML number for a text setting (`default_model: 123`) is that text
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def env_names(model: type[BaseModel], service: str, field: str) -> list[str]:
    """Environment variables that set `field`, strongest first."""
    names = [f"{ENV_PREFIX}{service.upper()}_{field.upper()}"]
    extra = model.model_fields[field].json_schema_extra
    if isinstance(extra, Mapping) and isinstance(extra.get("env"), str):
        names.append(str(extra["env"]))
    return names


def _unknown_key_message(service: str, key: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown {service} setting {key!r}{suggestion} (known: {', '.join(sorted(known))})"


def load_settings(
    model: type[S], config: ServiceConfig, env: Mapping[str, str] | None = None
) -> S:
    """The validated settings of `config.service` (ConfigError naming the key when wrong)."""
    env = os.environ if env is None else env
    service = config.service
    known = list(model.model_fields)
    values: dict[str, Any] = {}
    for key, value in config.options.items():
        if key not in model.model_fields:
            raise ConfigError(_unknown_key_message(service, key, known))
        values[key] = value
    for name in known:
        for variable in env_names(model, service, name):
            if env.get(variable):
                values[name] = env[variable]
                break
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{service}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(problems) from None


__all__ = ["ServiceSettings", "env_names", "load_settings"]
