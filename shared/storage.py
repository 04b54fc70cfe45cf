"""Metadata storage (SQLite by default) and atomic file writes.

`Database` is the small interface services code against; `SQLiteDatabase` implements it with one
connection per thread, WAL journaling, foreign keys, a busy timeout and versioned migrations
(`PRAGMA user_version`). A server database could implement the same interface later.

    db = SQLiteDatabase(ctx.config.service_dir / "catalog.sqlite3", MIGRATIONS)
    db.migrate()
    with db.transaction() as tx:
        tx.execute("INSERT INTO models(id, name) VALUES (?, ?)", (mid, name))
    rows = db.query("SELECT * FROM models ORDER BY created DESC LIMIT ?", (10,))
    row = await db.run(lambda c: c.execute("...").fetchone())   # off the event loop

MIGRATIONS is a sequence of SQL scripts (or callables taking a connection); migration i brings the
schema to version i + 1. Append only: never edit a released migration.

Files: `atomic_write_bytes(path, data)` writes to a temporary file in the same folder, fsyncs it,
renames it over `path` and fsyncs the folder, so readers see the old or the new file, never half.
`folder_size(path)` counts the bytes of the files under a folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

T = TypeVar("T")
Migration = str | Callable[[sqlite3.Connection], None]
Params = Sequence[Any] | dict[str, Any]


class Database(Protocol):
    """The storage interface services use."""

    def migrate(self) -> int: ...
    def execute(self, sql: str, params: Params = ()) -> int: ...
    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]: ...
    def query_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None: ...
    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...
    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...
    def close(self) -> None: ...


class SQLiteDatabase:
    """SQLite with a connection per thread, WAL, foreign keys and versioned migrations."""

    def __init__(
        self,
        path: Path | str,
        migrations: Sequence[Migration] = (),
        *,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.migrations = list(migrations)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)

    # -- connections

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit; transaction() issues BEGIN explicitly
                check_same_thread=False,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened (from any thread)."""
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()

    # -- schema

    @property
    def version(self) -> int:
        return int(self.connection().execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction. Returns the schema version."""
        conn = self.connection()
        current = self.version
        if current > len(self.migrations):
            raise RuntimeError(
                f"{self.path} has schema version {current}, newer than this code "
                f"({len(self.migrations)}); refusing to run"
            )
        for index in range(current, len(self.migrations)):
            step = self.migrations[index]
            conn.execute("BEGIN IMMEDIATE")
            try:
                if isinstance(step, str):
                    for statement in _split_sql(step):
                        conn.execute(statement)
                else:
                    step(conn)
                conn.execute(f"PRAGMA user_version={index + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.version

    # -- statements

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error). Not re-entrant."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns the number of rows changed."""
        cur = self.connection().execute(sql, params)
        return cur.rowcount

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.connection().execute(sql, params).fetchone()
        return row

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in a worker thread (keeps the event loop responsive)."""
        return await asyncio.to_thread(lambda: fn(self.connection()))


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (handles ';' inside quotes via sqlite3)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements


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
