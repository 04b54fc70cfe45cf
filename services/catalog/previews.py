"""Model previews: one small PNG per model in the artifact store, at catalog/previews/<id>.png,
so every Catalog replica serves it (GetModelPreview); its SHA-256 is the row's preview_sha256.
ImportModel writes it only once its row holds the id (imports.register), so a replica that
loses the id to another importing it at the same moment never writes nor removes it.

Where a preview comes from, the first that gives a usable picture:
1. ImportModel's `preview` bytes (any kind of model): refused on `preview` when they are no
   picture, before anything is written.
2. A LoRA's own thumbnail, as kohya's sd-scripts embed it in the safetensors metadata
   (Stability's ModelSpec key `modelspec.thumbnail`, a `data:image/...;base64,` URI).
3. A picture beside the LoRA file, where AUTOMATIC1111 and ComfyUI look for one:
   `<stem>.preview.<ext>` or `<stem>.<ext>` for png, jpg, jpeg, webp (also beside a file in the
   artifact store, when its folder holds one).
A file's own picture that cannot be read is skipped with a warning: it is not the request's
fault, and the LoRA is still good.

Every picture is read by the shared reader (shared.images: limits checked on the header before
decoding), shrunk to at most 512 px a side and stored as PNG.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from PIL import Image

from boothstudio.shared.artifact_store import ArtifactStore, StoredFolder
from boothstudio.shared.errors import InvalidArgument
from boothstudio.shared.images import ImageLimits, ImageRejected, decode, probe
from boothstudio.v1 import common_pb2

PREVIEWS_PREFIX = "catalog/previews"
MAX_SIDE = 512
#: what a preview picture may be, given or found (far above any real preview)
LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024)
THUMBNAIL_KEY = "modelspec.thumbnail"
SIDECAR_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class Candidate:
    """A picture found with a model file, and where (for the warning when it is unusable)."""

    origin: str
    data: bytes
    #: why the bytes were not read (too large, not a data URI); empty when they were
    problem: str = ""


def key(model_id: str) -> str:
    return f"{PREVIEWS_PREFIX}/{model_id}.png"


def thumbnail(data: bytes) -> bytes:
    """The picture as a PNG of at most MAX_SIDE px a side (ImageRejected when it is no
    acceptable picture). Blocking: run in a thread."""
    image = decode(data, LIMITS)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def size_of(png: bytes) -> tuple[int, int]:
    info = probe(png, LIMITS)
    return info.width, info.height


async def from_request(data: bytes) -> bytes:
    """ImportModel's `preview` bytes as the thumbnail to store; INVALID_ARGUMENT on `preview`."""
    try:
        return await asyncio.to_thread(thumbnail, data)
    except ImageRejected as err:
        raise InvalidArgument.for_field("preview", str(err)) from err


def embedded(metadata: Mapping[str, str]) -> Candidate | None:
    """The thumbnail a safetensors file's metadata carries (None when it has none); a value
    that is no base64 data URI is a candidate with its problem (reported unusable)."""
    uri = metadata.get(THUMBNAIL_KEY, "")
    if not uri:
        return None
    origin = f"the file's {THUMBNAIL_KEY}"
    head, sep, payload = uri.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        return Candidate(origin, b"", "not a data:image/...;base64, URI")
    # base64 takes 4 characters for 3 bytes: what would decode to more than the limit is not
    # decoded at all
    if len(payload) > LIMITS.max_bytes * 4 // 3 + 4:
        return Candidate(origin, b"", f"more than {LIMITS.max_bytes} bytes")
    try:
        return Candidate(origin, base64.b64decode(payload.strip(), validate=True))
    except (binascii.Error, ValueError):
        return Candidate(origin, b"", "its base64 data is corrupt")


def sidecar_names(file_name: str) -> list[str]:
    """The names a preview beside `file_name` may have, in the order they are tried."""
    stem = PurePosixPath(file_name).stem
    return [name for ext in SIDECAR_EXTENSIONS
            for name in (f"{stem}.preview.{ext}", f"{stem}.{ext}")]


def sidecar_local(path: Path) -> list[Candidate]:
    """Pictures beside a local file (one over the size limit is not read)."""
    found = []
    for name in sidecar_names(path.name):
        picture = path.with_name(name)
        if picture.is_file():
            found.append(_candidate(str(picture), picture.stat().st_size, picture.read_bytes))
    return found


def _candidate(origin: str, size: int, read: Callable[[], bytes]) -> Candidate:
    if size > LIMITS.max_bytes:
        return Candidate(origin, b"", f"{size} bytes is more than the limit of {LIMITS.max_bytes}")
    return Candidate(origin, read())


def sidecar_stored(store: ArtifactStore, stored: StoredFolder) -> list[Candidate]:
    """Pictures beside a file in the artifact store, in the same committed folder."""
    inner = PurePosixPath(stored.inner)
    found = []
    for name in sidecar_names(inner.name):
        rel = inner.with_name(name).as_posix()
        if rel in stored.manifest.files:
            size, sha256 = stored.manifest.files[rel]
            found.append(_candidate(store.url_of(f"{stored.prefix}/{rel}"), size, partial(
                store.get_bytes, f"{stored.prefix}/{rel}", sha256)))
    return found


def first_usable(candidates: list[Candidate]) -> tuple[bytes | None, list[common_pb2.Warning]]:
    """The thumbnail of the first candidate that is a picture, and a warning for each one
    before it that is not. Blocking: run in a thread."""
    warnings = []
    for candidate in candidates:
        try:
            if candidate.problem:
                raise ImageRejected(candidate.problem)
            return thumbnail(candidate.data), warnings
        except ImageRejected as err:
            warnings.append(common_pb2.Warning(
                reason="PREVIEW_UNUSABLE",
                message=f"preview from {candidate.origin} not used: {err}"))
    return None, warnings


def store_preview(store: ArtifactStore, model_id: str, png: bytes) -> str:
    """Write the model's preview; its SHA-256, which the registry records."""
    return store.put_bytes(key(model_id), png).sha256


def remove(store: ArtifactStore, model_id: str) -> None:
    store.delete(key(model_id))
