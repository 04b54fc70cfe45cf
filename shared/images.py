"""The one way a service reads pictures it is sent: limits checked on the header, then decoded.

A compressed picture can be tiny and still decode to gigabytes (a 560 KB PNG of 12000x12000 is
1.5 GB of pixels), so nothing is decoded before its header has passed the limits:

    info = probe(data, LIMITS)              # header only: size, format; ImageRejected if over
    image = decode(data, LIMITS)            # probe, then decode (call it off the event loop)
    image = await decode_async(data, LIMITS)

`ImageRejected` carries a sentence for the field violation; callers name the field.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


@dataclass(frozen=True)
class ImageLimits:
    """What a service accepts. `max_pixels` bounds the decoded size (width * height)."""

    max_bytes: int = 32 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 4096 * 4096
    min_side: int = 1
    formats: frozenset[str] = field(default=FORMATS)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    mode: str


class ImageRejected(ValueError):
    """The bytes are not an acceptable picture; str() says why, in words for a field violation."""


def probe(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Read the header only and check it against `limits` (no pixel is decoded)."""
    if not data:
        raise ImageRejected("empty image")
    if len(data) > limits.max_bytes:
        raise ImageRejected(f"{len(data)} bytes is more than the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # PIL warns (and past 2x its own limit raises) on large images; we decide here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(limits.formats)) as img:
                info = ImageInfo(img.width, img.height, img.format or "", img.mode)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image too large to decode ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        kinds = "/".join(sorted(limits.formats))
        raise ImageRejected(f"not a decodable {kinds} image") from exc
    if min(info.width, info.height) < limits.min_side:
        raise ImageRejected(
            f"image is only {info.width}x{info.height} pixels (at least {limits.min_side} a side)"
        )
    if max(info.width, info.height) > limits.max_side or (
        info.width * info.height > limits.max_pixels
    ):
        raise ImageRejected(
            f"image is {info.width}x{info.height} pixels; the limit is {limits.max_side} a "
            f"side and {limits.max_pixels} pixels in all"
        )
    return info


def decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Probe, then decode the whole picture. Blocking: off the event loop in servers."""
    probe(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(limits.formats)) as img:
                img.load()
                return img.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        # a header that promises more than the data holds (truncated or corrupt pixels)
        raise ImageRejected("the image data is truncated or corrupt") from exc


async def decode_async(data: bytes, limits: ImageLimits) -> Image.Image:
    """decode() in a worker thread, so a large picture never stalls the event loop."""
    return await asyncio.to_thread(decode, data, limits)


__all__ = [
    "FORMATS",
    "ImageInfo",
    "ImageLimits",
    "ImageRejected",
    "decode",
    "decode_async",
    "probe",
]
