"""What `boothstudio` prints: results as text or JSON on stdout, progress and notes on stderr."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from boothstudio.clients.sdk.types import GenerationResult, Page


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, enums, datetimes and pages as JSON values (bytes and `raw` left out)."""
    if isinstance(obj, GenerationResult):
        return {
            "job_id": obj.job_id,
            "status": obj.status.value,
            "seeds": obj.seeds,
            "images": [to_jsonable(i) for i in obj],
        }
    if isinstance(obj, Page):
        return {
            "items": [to_jsonable(i) for i in obj.items],
            "next_page_token": obj.next_page_token,
            "total_size": obj.total_size,
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "raw" or isinstance(value, bytes | bytearray):
                continue
            if value is None and f.name in ("png", "preview"):
                continue
            out[f.name] = to_jsonable(value)
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


class Output:
    """Where results go: human text or JSON on stdout; progress and messages on stderr."""

    def __init__(self, json_mode: bool, progress: str, quiet: bool) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        tty = self.err.isatty()
        self.progress = not quiet and (progress == "always" or (progress == "auto" and tty))
        self.live = tty  # redraw in place only on a terminal
        self._line = False

    def emit(self, data: Any) -> None:
        json.dump(to_jsonable(data), self.out, indent=2)
        self.out.write("\n")

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.end_line()
            self.err.write(text + "\n")
            self.err.flush()

    def status(self, text: str) -> None:
        """A progress line: redrawn in place on a terminal, one line per update otherwise."""
        if not self.progress:
            return
        if self.live:
            self.err.write("\r\x1b[2K" + text)
            self._line = True
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def end_line(self) -> None:
        if self._line:
            self.err.write("\n")
            self._line = False

    def table(self, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
        if not rows:
            self.note("(none)")
            return
        cells = [[str(h) for h in headers]] + [[cell(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for r in cells:
            self.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def fmt_bytes(size: float) -> str:
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"
