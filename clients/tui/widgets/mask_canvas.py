"""A canvas to paint an inpainting mask over an image, with the mouse or the keyboard.

The picture is drawn with half-cell blocks (two pixels per cell, top and bottom), the mask as a
tint of `$error` over it. The mask has the image's own resolution: a brush of radius r cells
paints a disc of r display pixels scaled back to image pixels. White (255) = repaint.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps
from rich.color import Color as RichColor
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

RGB = tuple[int, int, int]
MAX_BRUSH = 12


def _rgb(color: RichColor | None, fallback: RGB) -> RGB:
    if color is None:
        return fallback
    t = color.get_truecolor()
    return (t.red, t.green, t.blue)


class MaskCanvas(Widget, can_focus=True):
    """Paint with the mouse (drag) or keys (arrows move the brush, space paints)."""

    COMPONENT_CLASSES = {"mask-canvas--mask", "mask-canvas--cursor", "mask-canvas--empty"}

    BINDINGS = [
        Binding("up", "move(0, -1)", "Up", show=False),
        Binding("down", "move(0, 1)", "Down", show=False),
        Binding("left", "move(-1, 0)", "Left", show=False),
        Binding("right", "move(1, 0)", "Right", show=False),
        Binding("space", "paint", "Paint"),
        Binding("left_square_bracket", "brush(-1)", "Brush -"),
        Binding("right_square_bracket", "brush(1)", "Brush +"),
        Binding("e", "toggle_erase", "Erase"),
        Binding("i", "invert", "Invert"),
        Binding("c", "clear", "Clear"),
    ]

    brush: reactive[int] = reactive(2)
    erasing: reactive[bool] = reactive(False)

    @dataclass
    class Changed(Message):
        """The mask or the brush changed."""

        canvas: MaskCanvas

        @property
        def control(self) -> MaskCanvas:
            return self.canvas

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.image: PILImage | None = None
        self.mask: PILImage | None = None
        self.cursor = (0, 0)
        self._cache: tuple[tuple[int, int], list[list[RGB]]] | None = None

    # ---------------------------------------------------------------------------- the model

    def load(self, image: PILImage) -> None:
        """Show `image` with an empty mask."""
        self.image = image.convert("RGB")
        self.mask = Image.new("L", self.image.size, 0)
        self.cursor = (0, 0)
        self._changed()

    @property
    def coverage(self) -> float:
        """Fraction of the image the mask covers."""
        if self.mask is None:
            return 0.0
        hist = self.mask.histogram()
        total = self.mask.width * self.mask.height
        return sum(hist[128:]) / total if total else 0.0

    def mask_png(self) -> bytes:
        if self.mask is None:
            raise ValueError("no image loaded")
        buf = io.BytesIO()
        self.mask.save(buf, format="PNG")
        return buf.getvalue()

    def _display_size(self) -> tuple[int, int]:
        """(width, height) in display pixels (one per cell across, two per cell down)."""
        if self.image is None or self.size.width == 0 or self.size.height == 0:
            return (0, 0)
        iw, ih = self.image.size
        scale = min(self.size.width / iw, self.size.height * 2 / ih)
        return (max(1, int(iw * scale)), max(1, int(ih * scale)))

    def paint_at(self, cx: int, cy: int) -> None:
        """Paint (or erase) a disc at cell (cx, cy)."""
        if self.image is None or self.mask is None:
            return
        dw, dh = self._display_size()
        if not dw or not dh:
            return
        iw, ih = self.image.size
        sx, sy = iw / dw, ih / dh
        px, py = (cx + 0.5) * sx, (2 * cy + 1) * sy
        r = max(0.5, self.brush - 0.5)
        box = (px - r * sx, py - r * sy, px + r * sx - 1, py + r * sy - 1)
        ImageDraw.Draw(self.mask).ellipse(box, fill=0 if self.erasing else 255)
        self._changed()

    def _changed(self) -> None:
        self._cache = None
        self.refresh()
        self.post_message(self.Changed(self))

    # ---------------------------------------------------------------------------- actions

    def action_move(self, dx: int, dy: int) -> None:
        x, y = self.cursor
        w, h = self.size.width, self.size.height
        self.cursor = (min(max(0, x + dx), max(0, w - 1)), min(max(0, y + dy), max(0, h - 1)))
        self.refresh()

    def action_paint(self) -> None:
        self.paint_at(*self.cursor)

    def action_brush(self, delta: int) -> None:
        self.brush = min(MAX_BRUSH, max(1, self.brush + delta))

    def action_toggle_erase(self) -> None:
        self.erasing = not self.erasing

    def action_invert(self) -> None:
        if self.mask is not None:
            self.mask = ImageOps.invert(self.mask)
            self._changed()

    def action_clear(self) -> None:
        if self.mask is not None:
            self.mask = Image.new("L", self.mask.size, 0)
            self._changed()

    def watch_brush(self) -> None:
        self.post_message(self.Changed(self))

    def watch_erasing(self) -> None:
        self.post_message(self.Changed(self))

    # ------------------------------------------------------------------------------ mouse

    def _cell(self, event: events.MouseEvent) -> tuple[int, int] | None:
        offset = event.get_content_offset(self)
        return None if offset is None else (offset.x, offset.y)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        cell = self._cell(event)
        if cell is None:
            return
        self.capture_mouse()
        self.cursor = cell
        self.paint_at(*cell)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if event.button and self.app.mouse_captured is self:
            cell = self._cell(event)
            if cell is not None:
                self.cursor = cell
                self.paint_at(*cell)

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if self.app.mouse_captured is self:
            self.release_mouse()

    def on_resize(self) -> None:
        self._cache = None

    # ----------------------------------------------------------------------------- render

    def _pixels(self) -> list[list[RGB]]:
        dw, dh = self._display_size()
        if self._cache is not None and self._cache[0] == (dw, dh):
            return self._cache[1]
        assert self.image is not None and self.mask is not None
        base = self.image.resize((dw, dh), Image.Resampling.BILINEAR)
        tint = Image.new("RGB", (dw, dh), self._mask_rgb())
        alpha = self.mask.resize((dw, dh), Image.Resampling.NEAREST).point(lambda v: v * 3 // 5)
        shown = Image.composite(tint, base, alpha)
        px = shown.load()
        assert px is not None
        pixels: list[list[RGB]] = []
        for y in range(dh):
            row: list[RGB] = []
            for x in range(dw):
                r, g, b = px[x, y][:3]  # type: ignore[index]
                row.append((int(r), int(g), int(b)))
            pixels.append(row)
        self._cache = ((dw, dh), pixels)
        return pixels

    def _mask_rgb(self) -> RGB:
        return _rgb(self.get_component_rich_style("mask-canvas--mask").color, (220, 40, 40))

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self.image is None:
            if y == self.size.height // 2:
                style = self.get_component_rich_style("mask-canvas--empty")
                text = "Load an image: ctrl+l from the gallery, ctrl+o from a file"
                return Strip([Segment(text[:width].center(width), style)], width)
            return Strip.blank(width, self.rich_style)
        pixels = self._pixels()
        dh = len(pixels)
        dw = len(pixels[0]) if pixels else 0
        blank = self.rich_style
        cursor_style = self.get_component_rich_style("mask-canvas--cursor")
        segments: list[Segment] = []
        for x in range(width):
            if self.has_focus and (x, y) == self.cursor:
                segments.append(Segment("◎" if not self.erasing else "○", cursor_style))
                continue
            top_y, bottom_y = 2 * y, 2 * y + 1
            if x >= dw or top_y >= dh:
                segments.append(Segment(" ", blank))
                continue
            top = pixels[top_y][x]
            style_top = RichColor.from_rgb(*top)
            if bottom_y < dh:
                bottom = pixels[bottom_y][x]
                segments.append(
                    Segment("▀", Style(color=style_top, bgcolor=RichColor.from_rgb(*bottom)))
                )
            else:
                segments.append(Segment("▀", Style(color=style_top, bgcolor=blank.bgcolor)))
        return Strip(segments, width)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
