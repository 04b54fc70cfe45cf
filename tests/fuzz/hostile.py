"""Hand-picked hostile values for the fuzz suite and the memory bench (bench_hostile_memory.py).

Every path-like string carries MARKER in its last segment, so a file a service wrongly writes
where a hostile path points (relative to its cwd, the repo root, or absolute under /tmp) can be
found afterwards by name (see `marker_files`).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

from PIL import Image

MARKER = "bsfuzz-escape"

# Ids and names the services really know, so that some fuzzed requests reach past the lookups.
KNOWN_MODEL = "boothstudio-tiny"
KNOWN_STRINGS = [
    KNOWN_MODEL, "diffusers", "euler", "euler_a", "dpmpp_2m", "ddim", "karras", "default",
    "sks", "dog", "a photo of sks dog", "constant", "eta", "lora_scale",
]

PATH_STRINGS = [
    f"../../{MARKER}",
    f"../../../../../../../../tmp/{MARKER}",
    f"/tmp/{MARKER}/x",
    f"./{MARKER}",
    f"..\\..\\{MARKER}",
    f"{MARKER}/../../../{MARKER}-2",
    "../../etc/passwd",
    "/etc/passwd",
    "/dev/zero",
    "/proc/self/mem",
    "/",
    ".",
    "..",
    "~",
    "~root/.ssh",
    "file:///etc/passwd",
]

CONTROL_STRINGS = ["\x00", "a\x00b", "\x1b[2J\x1b[31mred", "line\nbreak", "\r", "\x7f", "\t"]

WEIRD_STRINGS = [
    "",
    " ",
    "A",
    "UPPER_CASE",
    "a" * 129,  # one past the id length limit
    "\u202egnp.exe",  # right-to-left override
    "\U0001f600" * 8,
    "é",
    "\ud7ff\ue000",
    "%s%n%x",
    "'; DROP TABLE models; --",
    "\" OR 1=1 --",
    "${jndi:ldap://x}",
    "{{7*7}}",
    "NaN",
    "-1",
    "1e309",
    "null",
]

HUGE_STRINGS = ["x" * 5000, "y" * 100_000, "\U0001f600" * 20_000]


def _token(position: object, scope: str) -> str:
    import hashlib

    raw = json.dumps({"p": position, "s": hashlib.sha256(scope.encode()).hexdigest()[:16]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# Page tokens: garbage, well-formed JSON of the wrong shape, and tokens carrying the scope of the
# unfiltered List* queries but a hostile position (huge, negative, float, bool, list, string).
_SCOPES = ["kind=0;backend=;base=", "model=;job=", "states=[];base=", ""]
FORGED_TOKENS = [
    "!!!",
    "====",
    "e30",  # {}
    base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
    base64.urlsafe_b64encode(b"[" * 5000).decode(),
    base64.urlsafe_b64encode(b'{"p": 1}').decode(),
    "A" * 600,
] + [
    _token(p, s)
    for s in _SCOPES
    for p in (10**12, 2**63, -1, 1.5, True, [1], "1", None, {"p": 1})
]

HOSTILE_STRINGS = PATH_STRINGS + CONTROL_STRINGS + WEIRD_STRINGS + HUGE_STRINGS + FORGED_TOKENS


# --------------------------------------------------------------------------- numbers

INT32_EDGES = [0, 1, -1, 7, 8, 63, 64, 150, 151, 2048, 2049, 4096, 2**31 - 1, -(2**31)]
INT64_EDGES = [*INT32_EDGES, 2**53 + 1, 2**63 - 1, -(2**63)]
UINT32_EDGES = [0, 1, 2**31, 2**32 - 1]
UINT64_EDGES = [0, 1, 2**32, 2**63, 2**64 - 1]
FLOAT_EDGES = [
    0.0, -0.0, 1.0, -1.0, 0.5, 7.0, 30.0, 30.5, 1e-45, 3.4e38, 1e308, -1e308, 5e-324,
    float("nan"), float("inf"), float("-inf"),
]


# --------------------------------------------------------------------------- images


def png(width: int, height: int, mode: str = "RGB", color: object = (120, 30, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, *, full: bool) -> bytes:
    """A PNG declaring width x height RGB. full=True: its IDAT holds every (zero) row, so a
    decoder that trusts it allocates width*height*3 bytes from a few hundred KB; full=False:
    just the first rows (a header-only bomb; decoding fails when the data runs out)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" * (1 + 3 * width)
    comp = zlib.compressobj(9)
    rows = height if full else 4
    body = b"".join(comp.compress(row) for _ in range(rows)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


@functools.cache
def images() -> dict[str, bytes]:
    """Named pictures, from harmless to hostile (built once; the full bombs take ~1 s)."""
    ok = png(64, 64)
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(jpeg, format="JPEG")
    gif = io.BytesIO()
    Image.new("P", (64, 64)).save(gif, format="GIF")
    return {
        "png64": ok,
        "png64_rgba": png(64, 64, "RGBA", (0, 0, 0, 0)),
        "png64_gray": png(64, 64, "L", 7),
        "png72x64": png(72, 64),
        "png1x1": png(1, 1),
        "png4096x1": png(4096, 1),
        "jpeg64": jpeg.getvalue(),
        "gif64": gif.getvalue(),
        "truncated_png": ok[: len(ok) // 2],
        "png_header_only": ok[:33],
        "bad_crc_png": ok[:29] + b"\x00\x00\x00\x00" + ok[33:],
        "bomb_12000_header": png_bomb(12000, 12000, full=False),
        "bomb_65535_header": png_bomb(65535, 65535, full=False),
        "bomb_8192_full": png_bomb(8192, 8192, full=True),
        "bomb_12000_full": png_bomb(12000, 12000, full=True),
        "empty": b"",
        "nul": b"\x00",
        "random": bytes(range(256)) * 4,
        "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"/>',
        "text": b"../../etc/passwd",
    }


def marker_files(roots: list[Path]) -> list[Path]:
    """Files or folders named after MARKER under `roots` and the temp folder (two levels deep:
    the depth the hostile paths above reach) and at the top of the file system."""
    found: list[Path] = []
    tops = [(r, ("*", "*/*")) for r in [*roots, Path(tempfile.gettempdir())]]
    for root, depths in [*tops, (Path("/"), ("*",))]:
        if not root.is_dir():
            continue
        for depth in depths:
            try:
                found += [p for p in root.glob(depth) if MARKER in p.name]
            except OSError:
                continue
    return sorted(set(found))
