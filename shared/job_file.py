"""Pictures listed in a training job file (a job folder's config.yaml, the Trainer's job-file
format), read the same way by the Trainer's `jobfile submit` and the CLI's `train --config`.

An entry is a path (relative to the file) or a mapping {path, filename, caption}; a picture
without a caption takes the one its folder's captions.json gives it (a one-subject job's
folder keeps its captions there, not in the config). Torch-free: the SDK wheel ships it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAPTIONS_FILE = "captions.json"


class PictureEntryError(ValueError):
    """An entry that is no picture: `where` is its place in the file (instance_images[2])."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class ListedPicture:
    data: bytes
    filename: str
    caption: str


@dataclass
class PictureReader:
    """Reads the entries of one job file (relative paths against `base`), each folder's
    captions.json read once."""

    base: Path
    _captions: dict[Path, dict[str, str]] = field(default_factory=dict)

    def read(self, entry: Any, where: str) -> ListedPicture:
        if isinstance(entry, Mapping):
            if not isinstance(entry.get("path"), str):
                raise PictureEntryError(where, "a path, or a mapping with its path")
            path = Path(entry["path"]).expanduser()
            filename = str(entry.get("filename") or path.name)
            caption = str(entry.get("caption") or "")
        elif isinstance(entry, str):
            path = Path(entry).expanduser()
            filename, caption = path.name, ""
        else:
            raise PictureEntryError(where, "a path, or a mapping with its path")
        if not path.is_absolute():
            path = self.base / path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PictureEntryError(where, f"cannot read {path}: {exc.strerror}") from None
        return ListedPicture(data, filename, caption or self._folder_caption(path))

    def _folder_caption(self, path: Path) -> str:
        if path.parent not in self._captions:
            try:
                found = json.loads((path.parent / CAPTIONS_FILE).read_text())
            except (OSError, ValueError):
                found = {}
            self._captions[path.parent] = (
                {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {})
        return self._captions[path.parent].get(path.name, "")
