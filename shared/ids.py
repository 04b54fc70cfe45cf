"""Identifiers: short, URL-safe, sortable by creation time (newest-first lists can sort by id)."""

from __future__ import annotations

import os
import re
import time

from boothstudio.shared.errors import InvalidArgument

_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,127}$")
#: The rule, in words, for a field violation.
ID_RULE = "lowercase letter first, then [a-z0-9_-], at most 128 characters"


def new_id(prefix: str = "") -> str:
    """e.g. new_id("img") -> "img_0193c4a2f1b3_9f2c41d7": ms timestamp (hex) + 32 random bits."""
    stamp = f"{int(time.time() * 1000):012x}"
    rand = os.urandom(4).hex()
    return f"{prefix}_{stamp}_{rand}" if prefix else f"{stamp}_{rand}"


def is_valid_id(value: str) -> bool:
    """Ids chosen by callers: lowercase letter first, then [a-z0-9_-], at most 128 chars."""
    return bool(_ID_RE.match(value))


def check_id(field: str, value: str, *, required: bool = False) -> None:
    """InvalidArgument on `field` unless `value` is an id (or empty, when not required):
    anything else is refused before it is looked up, stored or echoed (a hostile id may be
    megabytes of text)."""
    if required and not value:
        raise InvalidArgument.for_field(field, "required")
    if value and not is_valid_id(value):
        raise InvalidArgument.for_field(field, ID_RULE)
