"""What the studio remembers between runs: service addresses, API key, theme, image method.

Saved as JSON under ``$XDG_CONFIG_HOME/boothstudio/studio.json`` (``~/.config`` by default).
Missing values come from the SDK's own resolution (``BOOTHSTUDIO_*`` variables, then defaults).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from boothstudio.clients.sdk import ClientConfig

ImageMethod = Literal["auto", "halfcell", "unicode"]
IMAGE_METHODS: tuple[ImageMethod, ...] = ("auto", "halfcell", "unicode")
DEFAULT_THEME = "booth-dark"


def default_settings_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "boothstudio" / "studio.json"


@dataclass(frozen=True)
class StudioSettings:
    catalog: str = ""
    generator: str = ""
    trainer: str = ""
    api_key: str = ""
    theme: str = DEFAULT_THEME
    images: ImageMethod = "auto"

    @classmethod
    def from_environment(cls, **overrides: Any) -> StudioSettings:
        """Addresses and key as the SDK resolves them, then `overrides` (None values ignored)."""
        cfg = ClientConfig.resolve()
        base = cls(
            catalog=cfg.catalog,
            generator=",".join(cfg.generators),
            trainer=cfg.trainer,
            api_key=cfg.api_key,
        )
        return base.updated(**overrides)

    def updated(self, **changes: Any) -> StudioSettings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `AsyncBoothStudio(...)`."""
        return {
            "catalog": self.catalog or None,
            "generator": self.generator or None,
            "trainer": self.trainer or None,
            "api_key": self.api_key or None,
        }

    # ------------------------------------------------------------------------- persistence

    @classmethod
    def load(cls, path: Path, base: StudioSettings) -> StudioSettings:
        """`base` updated with what `path` holds (a missing or broken file changes nothing)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return base
        if not isinstance(data, dict):
            return base
        return base.updated(**{k: v for k, v in data.items() if isinstance(v, str)})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        if self.api_key:
            tmp.chmod(0o600)
        tmp.replace(path)
