"""Files on the local disk: atomic writes, exclusive creation, sizes, modes.

(Relational state lives in shared/metadata_store.py.)

`atomic_write_bytes(path, data)` writes to a temporary file in the same folder, fsyncs it,
renames it over `path` and fsyncs the folder, so readers see the old or the new file, never half.
`folder_size(path)` counts the bytes of the files under a folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# --------------------------------------------------------------------------- files


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import (before the services start
    # threads that create files), and put straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def default_file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask (0644 under the usual 022)."""
    return 0o666 & ~_UMASK


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success fsync + rename it over `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; give the file the mode open() would (0644 under umask 022),
        # so models and pictures stay readable by other tools like any other file.
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` atomically (tmp + fsync + rename + dir fsync)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_create_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to a new file at `path`, atomically and without ever replacing a file:
    FileExistsError when `path` exists, even when another writer creates it meanwhile (the
    data is written to a temporary file first, then hard-linked to `path`, which fails on an
    existing name)."""
    target = Path(path)
    staged = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    atomic_write_bytes(staged, data)
    try:
        os.link(staged, target)
    finally:
        staged.unlink()
    fsync_dir(target.parent)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def folder_size(path: Path) -> int:
    """Bytes of the files under `path` (or of `path`, a file); 0 when it is neither.

    A file that goes or cannot be read while it is counted is left out, not an error.
    """
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total
