"""Small pieces without an app: settings persistence, field-path matching, option parsing."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from textual.widgets import Input

from boothstudio.clients.sdk import InvalidArgument
from boothstudio.clients.tui.cli import parse_args
from boothstudio.clients.tui.screens.train import parse_extra
from boothstudio.clients.tui.settings import StudioSettings
from boothstudio.clients.tui.widgets.fields import FormField


def test_settings_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "studio.json"
    s = StudioSettings("c:1", "g:1,g:2", "t:1", "secret", "booth-light", "halfcell")
    s.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds a key
    assert StudioSettings.load(path, StudioSettings()) == s
    path.write_text("{not json")
    assert StudioSettings.load(path, s.updated(theme="x")).theme == "x"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOOTHSTUDIO_CATALOG", "cat:9")
    monkeypatch.setenv("BOOTHSTUDIO_API_KEY", "k")
    s = StudioSettings.from_environment(trainer="tr:9", theme=None)
    assert (s.catalog, s.trainer, s.api_key) == ("cat:9", "tr:9", "k")
    assert s.client_kwargs()["generator"]


def test_field_claims_violation_paths() -> None:
    f = FormField("Steps", Input(), field=["max_train_steps", "images"])
    assert f.claims("max_train_steps") and f.claims("config.max_train_steps")
    assert f.claims("images[2]") and not f.claims("steps")


def test_extra_training_options() -> None:
    assert parse_extra("resolution=64 learning_rate=1e-4 center_crop=true name=a=b") == {
        "resolution": 64,
        "learning_rate": 1e-4,
        "center_crop": True,
        "name": "a=b",
    }
    with pytest.raises(InvalidArgument) as e:
        parse_extra("oops")
    assert e.value.fields == ["extra"]


def test_command_line() -> None:
    args = parse_args(["--catalog", "h:1", "--images", "halfcell", "--no-save"])
    assert args.catalog == "h:1" and args.images == "halfcell" and args.no_save
