"""Checks for paths and file names that arrive in requests, before anything touches the disk.

The operating system answers an over-long name with ENAMETOOLONG and a NUL with ValueError,
deep inside whatever call first uses the value, after other side effects may have happened.
These return a sentence for a field violation instead (None when the value is fine):

    problem = path_problem(request.diffusers_path)
    if problem:
        raise InvalidArgument.for_field("diffusers_path", problem)
"""

from __future__ import annotations

import re

# Linux limits: 4096 bytes for a path, 255 for one name (NAME_MAX on ext4, xfs, btrfs).
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_problem(value: str) -> str | None:
    """Why `value` cannot be a local path here, or None."""
    if _CONTROL.search(value):
        return "must not contain control characters"
    if len(value.encode()) > MAX_PATH_BYTES:
        return f"longer than {MAX_PATH_BYTES} bytes"
    for part in value.split("/"):
        if len(part.encode()) > MAX_NAME_BYTES:
            return f"has a name longer than {MAX_NAME_BYTES} bytes ({part[:40]}...)"
    return None


def file_name_problem(value: str) -> str | None:
    """Why `value` cannot be the name of a file we store in one of our folders, or None: it
    must not escape the folder (a separator, `..`) or hide in it (a leading dot)."""
    if not value.strip():
        return "must not be blank"
    size = len(value.encode())
    if size > MAX_NAME_BYTES:
        return f"at most {MAX_NAME_BYTES} bytes (UTF-8), got {size}"
    if _CONTROL.search(value):
        return "must not contain control characters"
    if "/" in value or "\\" in value:
        return f"a file name, not a path: {value[:60]!r} contains a path separator"
    if value.startswith("."):
        return "must not start with '.' (hidden files and '..' are not kept)"
    return None


__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "file_name_problem", "path_problem"]
