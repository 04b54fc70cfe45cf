"""What the trainer accepts as an instance picture and as its file name (no torch).

Pictures go through `shared.images`: the header is checked against the limits first (a 560 KB
PNG can promise 12000x12000 pixels), and only a picture that passed is decoded, once, to prove
its data is whole (a truncated file passes a header check and would otherwise fail the job
later, in its worker). The decode also gives the alpha share that masked training needs, so no
picture is decoded twice. Blocking: callers run these off the event loop.

File names become files in a job or dataset folder, so they are refused (not rewritten) when
they could escape it or hide in it: a path separator, `.`/`..`, a leading dot (the trainer skips
hidden files), a control character, the folder's own `captions.json` or `MANIFEST.json` (its
list of files in the artifact store), more than 255 UTF-8 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from boothstudio.shared.artifact_store import MANIFEST
from boothstudio.shared.images import ImageLimits, ImageRejected, decode
from boothstudio.shared.paths import file_name_problem

MIN_SIDE = 8
RESERVED_NAMES = {"captions.json": "the folder's captions", MANIFEST: "the folder's file list"}


def image_limits(max_bytes: int) -> ImageLimits:
    """The trainer's picture limits: the shared defaults' size bounds, its own byte limit."""
    return ImageLimits(max_bytes=max_bytes, min_side=MIN_SIDE)


@dataclass(frozen=True)
class CheckedImage:
    width: int
    height: int
    #: share of opaque pixels (alpha >= 128); None when the picture has no alpha
    alpha_share: float | None


def has_alpha(img: object) -> bool:
    """Whether a PIL image carries transparency (an alpha band or a transparent palette entry)."""
    return "A" in img.getbands() or "transparency" in img.info  # type: ignore[attr-defined]


def check_image(data: bytes, limits: ImageLimits, *, want_alpha: bool = False) -> CheckedImage:
    """Header first, then one decode (decode() checks the header itself); raises ImageRejected
    (str = why) for a bad picture."""
    img = decode(data, limits)
    try:
        share = None
        if want_alpha and has_alpha(img):
            alpha = img.convert("RGBA").getchannel("A")
            opaque = alpha.point(lambda a: 255 if a >= 128 else 0).histogram()[255]
            share = opaque / (img.width * img.height)
        return CheckedImage(img.width, img.height, share)
    finally:
        img.close()


def filename_problem(name: str) -> str | None:
    """Why `name` cannot be a picture's file name in a job or dataset folder, or None."""
    if name in RESERVED_NAMES:
        return f"{name!r} is reserved for {RESERVED_NAMES[name]}"
    return file_name_problem(name)


__all__ = [
    "CheckedImage",
    "ImageRejected",
    "check_image",
    "filename_problem",
    "has_alpha",
    "image_limits",
]
