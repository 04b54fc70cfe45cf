"""Text for people, shared by the `boothstudio` command line and the studio: option values as
typed on a command line or in a form, and sizes in human units."""

from __future__ import annotations

from boothstudio.clients.sdk.types import OptionScalar


def parse_option(text: str) -> OptionScalar:
    """A command-line option value: true/false, an int, a float, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def human_bytes(n: int) -> str:
    """A size in B, KB, MB or GB (1024 apart), e.g. ``1.5 MB``."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
