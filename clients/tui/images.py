"""Showing images: textual-image picks kitty (TGP), sixel or half-cells for the terminal; the
studio can force half-cells or unicode blocks (tests use half-cells: deterministic, everywhere).

textual-image queries the terminal when `textual_image.widget` is imported, which is only
possible before Textual starts: this module imports it at import time.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from textual.widget import Widget
from textual_image.widget import HalfcellImage, UnicodeImage
from textual_image.widget import Image as AutoImage

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from boothstudio.clients.tui.settings import ImageMethod


def image_widget(
    source: bytes | PILImage | None,
    method: ImageMethod,
    *,
    id: str | None = None,
    classes: str | None = None,
) -> Widget:
    """An image widget for PNG bytes or a PIL image, drawn with `method`."""
    cls: type[Widget]
    if method == "halfcell":
        cls = HalfcellImage
    elif method == "unicode":
        cls = UnicodeImage
    else:
        cls = AutoImage
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    widget: Widget = cls(data, id=id, classes=classes)
    return widget


def set_image(widget: Widget, source: bytes | PILImage | None) -> None:
    """Replace the picture an `image_widget` shows."""
    data = io.BytesIO(source) if isinstance(source, bytes) else source
    widget.image = data  # type: ignore[attr-defined]
