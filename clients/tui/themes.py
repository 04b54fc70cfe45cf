"""The studio's own Textual themes (registered beside Textual's built-in ones)."""

from __future__ import annotations

from textual.theme import Theme

BOOTH_DARK = Theme(
    name="booth-dark",
    primary="#E0A458",
    secondary="#7FB7BE",
    accent="#D36582",
    warning="#F2C14E",
    error="#E5534B",
    success="#6CC57C",
    foreground="#E8E3DA",
    background="#16161C",
    surface="#1F1F27",
    panel="#2A2A35",
    dark=True,
)

BOOTH_LIGHT = Theme(
    name="booth-light",
    primary="#9C4F1B",
    secondary="#2F6F78",
    accent="#A2325A",
    warning="#A86F00",
    error="#B3261E",
    success="#2E7D32",
    foreground="#1E1B18",
    background="#F6F1E9",
    surface="#EDE5D8",
    panel="#E2D6C4",
    dark=False,
)

#: Themes every StudioApp registers; the first is the default.
STUDIO_THEMES: tuple[Theme, ...] = (BOOTH_DARK, BOOTH_LIGHT)
