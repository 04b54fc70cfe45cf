"""Page size validation and opaque page tokens for List* RPCs.

    size = page_size(request.page_size)              # InvalidArgument on field "page_size"
    offset = decode_offset(request.page_token, scope) # InvalidArgument on field "page_token"
    ...
    next_token = encode_token(offset + size, scope) if more else ""

`scope` binds a token to the filters it was issued for (e.g. "kind=2;backend=diffusers"), so a
token reused with other filters is rejected instead of silently skipping results.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from boothstudio.shared.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Tokens we issue are ~60 characters; anything far longer is forged, refuse before decoding.
MAX_TOKEN_CHARS = 512
# An offset beyond any list we could hold: larger ones are forged (and would overflow SQLite).
MAX_OFFSET = 10**9


def page_size(
    value: int,
    *,
    default: int = DEFAULT_PAGE_SIZE,
    maximum: int = MAX_PAGE_SIZE,
    field: str = "page_size",
) -> int:
    """Validate a requested page size: 0 = default, 1..maximum as is, else InvalidArgument."""
    if value < 0 or value > maximum:
        raise InvalidArgument.for_field(
            field, f"must be between 0 and {maximum} (0 = default {default}), got {value}"
        )
    return value or default


def _scope_hash(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode_token(position: Any, scope: str = "") -> str:
    """An opaque token for `position` (an offset, or a JSON-able cursor)."""
    raw = json.dumps({"p": position, "s": _scope_hash(scope)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(token: str, scope: str = "", *, field: str = "page_token") -> Any:
    """The position in a token from encode_token; None for an empty token."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidArgument.for_field(field, "malformed page token")
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, token_scope = data["p"], data["s"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError,
            RecursionError) as exc:
        raise InvalidArgument.for_field(field, "malformed page token") from exc
    if token_scope != _scope_hash(scope):
        raise InvalidArgument.for_field(
            field, "page token was issued for a different query (filters changed)"
        )
    return position


def decode_offset(token: str, scope: str = "", *, field: str = "page_token") -> int:
    """The offset in a token from encode_token(offset, scope); 0 for an empty token.

    The one decoder every offset-paged List RPC uses: whatever a forged token holds (a huge
    number, a float, a string, a list), the answer is INVALID_ARGUMENT on `field`.
    """
    if not token:
        return 0
    position = decode_token(token, scope, field=field)
    # bool is an int in Python; a token never carries one
    if type(position) is not int or not 0 <= position <= MAX_OFFSET:
        raise InvalidArgument.for_field(field, "malformed page token")
    return position
