"""Outpainting's canvas: the picture with pixels added on chosen sides, and the mask to repaint.

Outpainting becomes inpainting on a larger canvas, so every backend that inpaints can outpaint:

- the new area starts as the picture's edge colours stretched outwards and blurred (a start any
  backend can take; the request's mask_fill then applies as for inpainting);
- the mask is white on the new area and ramps down across `feather` pixels into the picture, so
  the repainted band overlaps the original and the seam blends instead of showing a hard edge;
- a canvas side that is not a multiple of 8 (what the models need) is rounded up on an extended
  side (right before left, bottom before top; right/bottom when neither is extended).

Light (PIL and numpy): the Generator builds the canvas while it validates a request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

#: blur of the stretched edges, as a share of the widest new band (streaks become soft colour)
_EDGE_BLUR_SHARE = 0.25


@dataclass(frozen=True)
class Sides:
    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0

    def canvas_size(self, width: int, height: int) -> tuple[int, int]:
        return width + self.left + self.right, height + self.top + self.bottom

    def rounded(self, width: int, height: int) -> Sides:
        """The sides grown so that the canvas is a multiple of 8 each way."""
        extra_w = -(width + self.left + self.right) % 8
        extra_h = -(height + self.top + self.bottom) % 8
        left, right, top, bottom = self.left, self.right, self.top, self.bottom
        if self.left and not self.right:
            left += extra_w
        else:
            right += extra_w
        if self.top and not self.bottom:
            top += extra_h
        else:
            bottom += extra_h
        return Sides(left, right, top, bottom)

    def describe(self) -> str:
        """"left=32 top=16": the sides that are extended."""
        named = (("left", self.left), ("right", self.right), ("top", self.top),
                 ("bottom", self.bottom))
        return " ".join(f"{name}={value}" for name, value in named if value)


def repaint_mask(width: int, height: int, sides: Sides, feather: int) -> Image.Image:
    """L mask of the canvas, 255 = repaint: the new area, ramping to 0 across `feather` pixels
    of the original from each extended side."""
    canvas_w, canvas_h = sides.canvas_size(width, height)
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    distance = np.full((height, width), np.inf, dtype=np.float32)
    for extended, along in ((sides.left, xs[None, :]), (sides.right, width - xs[None, :]),
                            (sides.top, ys[:, None]), (sides.bottom, height - ys[:, None])):
        if extended:
            distance = np.minimum(distance, along)
    inside = np.clip(1.0 - distance / feather, 0.0, 1.0) if feather > 0 else np.zeros_like(
        distance)
    mask = np.ones((canvas_h, canvas_w), dtype=np.float32)
    mask[sides.top: sides.top + height, sides.left: sides.left + width] = inside
    return Image.fromarray(np.round(mask * 255).astype(np.uint8), "L")


def extend_canvas(image: Image.Image, sides: Sides, feather: int) -> tuple[Image.Image,
                                                                            Image.Image]:
    """(canvas RGB, mask L): the picture on its larger canvas and what to repaint."""
    rgb = image.convert("RGB")
    stretched = np.pad(np.asarray(rgb), ((sides.top, sides.bottom), (sides.left, sides.right),
                                         (0, 0)), mode="edge")
    canvas = Image.fromarray(stretched)
    band = max(sides.left, sides.right, sides.top, sides.bottom)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(1.0, band * _EDGE_BLUR_SHARE)))
    canvas.paste(rgb, (sides.left, sides.top))
    return canvas, repaint_mask(rgb.width, rgb.height, sides, feather)
