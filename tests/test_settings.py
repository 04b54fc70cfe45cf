"""Typed service settings: sources, conversion, unknown keys refused at start-up, README tables.

Rerun: `.venv/bin/pytest tests/test_settings.py -v`
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from boothstudio.services.catalog.settings import CatalogSettings
from boothstudio.services.generator.settings import GeneratorSettings
from boothstudio.services.settings import load_settings
from boothstudio.services.trainer.settings import TrainerSettings
from boothstudio.shared.config import ConfigError, load_config
from tests.helpers import ROOT, service_env

MODELS = {"catalog": CatalogSettings, "generator": GeneratorSettings, "trainer": TrainerSettings}


def test_defaults_yaml_flags_and_environment(tmp_path: Path) -> None:
    config_file = tmp_path / "bs.yaml"
    config_file.write_text("generator:\n  queue_size: 4\n  batch_window: 0.5\n")
    config = load_config(
        "generator", ["--config", str(config_file), "--set", "batching=no"], env={}
    )
    settings = load_settings(GeneratorSettings, config, env={
        "BOOTHSTUDIO_GENERATOR_QUEUE_SIZE": "7", "BOOTHSTUDIO_A1111_URL": "http://webui:7860"
    })
    assert settings.queue_size == 7  # the environment wins over the YAML file
    assert settings.batch_window == 0.5
    assert settings.batching is False  # "no" from --set, converted
    assert settings.a1111_url == "http://webui:7860"  # a field's own documented variable
    assert settings.max_batch_images == 8  # the default, written once in the model


def test_unknown_and_wrong_keys_are_refused_with_the_key_named() -> None:
    config = load_config("trainer", ["--set", "queue_sise=3"], env={})
    with pytest.raises(ConfigError, match="'queue_sise'; did you mean 'queue_size'"):
        load_settings(TrainerSettings, config, env={})
    config = load_config("trainer", ["--set", "max_running=0"], env={})
    with pytest.raises(ConfigError, match=r"trainer\.max_running"):
        load_settings(TrainerSettings, config, env={})
    config = load_config("generator", [], env={})
    with pytest.raises(ConfigError, match=r"generator\.batching"):
        load_settings(GeneratorSettings, config, env={"BOOTHSTUDIO_GENERATOR_BATCHING": "maybe"})


@pytest.mark.parametrize("service", list(MODELS))
def test_a_misspelt_setting_stops_the_service_at_start(service: str, tmp_path: Path) -> None:
    """Before typed settings a misspelt key was silently ignored and the default used."""
    field = next(iter(MODELS[service].model_fields))
    misspelt = field[:-1] + "x" + field[-1]
    proc = subprocess.run(
        [sys.executable, "-m", f"boothstudio.services.{service}", "--port", "0",
         "--metrics-port", "0", "--data-dir", str(tmp_path), "--log-format", "text",
         "--set", f"{misspelt}=1"],
        cwd=ROOT, env=service_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"did you mean '{field}'" in proc.stderr


def test_readme_settings_tables_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/settings_reference.py", "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_empty_variables_are_unset_and_numbers_may_name_text(tmp_path: Path) -> None:
    config_file = tmp_path / "bs.yaml"
    config_file.write_text("generator:\n  default_model: 123\n")
    config = load_config("generator", ["--config", str(config_file)], env={})
    settings = load_settings(GeneratorSettings, config, env={"BOOTHSTUDIO_GENERATOR_PRELOAD": ""})
    assert settings.default_model == "123"
    assert settings.preload is True  # the default: an empty variable does not set it
