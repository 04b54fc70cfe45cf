"""HTTP plumbing shared by the remote adapters (AUTOMATIC1111, the hosted API): one request
with a timeout, the backend's own error message pulled out of its JSON body, and failures
turned into reasons the Generator reports (BACKEND_REJECTED, BACKEND_UNAUTHORIZED,
BACKEND_UNAVAILABLE)."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from typing import Any

from PIL import Image


class BackendError(Exception):
    """A remote backend failed; `reason` is the machine-readable part."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _detail(raw: bytes) -> str:
    text = raw.decode(errors="replace")[:500]
    try:
        err = json.loads(text)
    except ValueError:
        return text
    if not isinstance(err, dict):
        return text
    # A1111 says {detail | error}; Stability says {id, name, message}
    return str(err.get("message") or err.get("detail") or err.get("error") or text)


def http_request(url: str, *, method: str = "GET", data: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0,
                 backend: str = "backend") -> bytes:
    """The response body; BackendError on an HTTP error status or no answer."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        reason = "BACKEND_UNAUTHORIZED" if exc.code in (401, 403) else "BACKEND_REJECTED"
        raise BackendError(reason, f"{backend} answered {exc.code}: {_detail(exc.read())}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise BackendError("BACKEND_UNAVAILABLE", f"{backend} at {url} unreachable: {exc}") from exc


def json_request(url: str, body: Any = None, *, method: str = "POST",
                 headers: dict[str, str] | None = None, timeout: float = 10.0,
                 backend: str = "backend") -> Any:
    """POST (or `method`) a JSON body and decode the JSON answer (None when empty)."""
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    raw = http_request(url, method=method, data=data, headers=hdrs, timeout=timeout,
                       backend=backend)
    return json.loads(raw) if raw else None


def png_bytes(image: Image.Image) -> bytes:
    """The picture as PNG, the format both remote backends take."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()
