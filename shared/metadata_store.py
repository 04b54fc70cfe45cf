"""The metadata store: one SQLAlchemy 2.x Core engine per service, SQLite by default, PostgreSQL
when `database_url` is set, with Alembic migrations run safely at start-up.

    engine = open_database(cfg.database_url, cfg.service_dir / "catalog.sqlite3")
    migrate(engine, MIGRATIONS_DIR, service="catalog", legacy_revisions={1: "0001"})
    with writing(engine) as conn:                       # one transaction
        conn.execute(models.insert().values(...))
    with reading(engine) as conn:
        rows = conn.execute(select(models)).mappings().all()

- SQLite (the default, zero configuration): a file under the data dir with WAL journaling,
  foreign keys and a busy timeout; transactions are real (BEGIN is emitted by us, not by the
  sqlite3 module's guesswork), so DDL is transactional and `writing()` takes the write lock
  first (BEGIN IMMEDIATE) instead of failing half-way with "database is locked".
- PostgreSQL: `postgresql+psycopg://user@host:5432/db` (psycopg 3); connections are checked
  before use (pool_pre_ping), so a service recovers by itself when the server is back.
- Migrations: each service keeps its own Alembic script folder and its own version table
  (`alembic_version_<service>`), so all three services can share one database without their
  histories meeting. `migrate()` runs the upgrade in one transaction under a lock (PostgreSQL:
  an advisory transaction lock; SQLite: BEGIN IMMEDIATE, the file's write lock), so replicas that
  start at once upgrade once and the others wait, then find the schema at head. A SQLite file
  from the pre-Alembic layout (versioned by PRAGMA user_version) is stamped at the matching
  revision, never re-created.
- Errors: a `database_url` that cannot be parsed, names an unsupported database or cannot be
  reached at start-up is a ConfigError naming the key; a store that goes away while serving
  turns a request into shared.errors.Unavailable (reason DATABASE_UNAVAILABLE, retry_after).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from boothstudio.shared.config import ConfigError
from boothstudio.shared.errors import Unavailable

#: the config key (YAML `database_url`, env BOOTHSTUDIO_DATABASE_URL, flag --database-url)
KEY = "database_url"
SUPPORTED = ("sqlite", "postgresql")
BUSY_TIMEOUT_S = 10.0
# Replicas starting together on one SQLite file wait their turn for the whole migration of the
# one that got the lock first, which on a loaded machine can take longer than a write does.
MIGRATION_BUSY_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 5
#: seconds a client is told to wait before retrying while the store is unreachable
RETRY_AFTER_S = 2.0
#: one advisory lock for every service's migrations: they may share one database, and DDL of
#: two services at once could deadlock on shared catalogs
MIGRATION_LOCK_ID = zlib.crc32(b"boothstudio-migrations")


def _config_error(message: str) -> ConfigError:
    return ConfigError(f"{KEY}: {message}")


def _parse(database_url: str) -> URL:
    try:
        url = make_url(database_url)
    except (exc.ArgumentError, ValueError) as err:
        raise _config_error(
            f"cannot parse {database_url!r} (expected e.g. "
            "postgresql+psycopg://user@host:5432/boothstudio or sqlite:////path/to/file.db)"
        ) from err
    if url.get_backend_name() not in SUPPORTED:
        raise _config_error(
            f"unsupported database {url.get_backend_name()!r} in "
            f"{url.render_as_string(hide_password=True)!r} (supported: {', '.join(SUPPORTED)})"
        )
    if url.get_backend_name() == "postgresql" and "+" not in url.drivername:
        # psycopg 3 is the driver we install (older SQLAlchemy took postgresql:// as psycopg2)
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe(engine: Engine) -> str:
    """The engine's URL without its password (for logs and messages)."""
    return engine.url.render_as_string(hide_password=True)


def open_database(database_url: str | None, default_sqlite_path: Path | str) -> Engine:
    """An Engine for `database_url`, or for a SQLite file at `default_sqlite_path` when it is
    empty. Raises ConfigError (naming `database_url`) for a URL that cannot be used; the
    server is not contacted until the first connection (see migrate())."""
    if database_url:
        url = _parse(database_url)
    else:
        path = Path(default_sqlite_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        url = URL.create("sqlite", database=str(path))
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    try:
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
        )
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as err:
        shown = url.render_as_string(hide_password=True)
        raise _config_error(f"cannot use {shown!r}: {err}") from err


def _switch_to_wal(cur: Any) -> None:
    """Put a new SQLite file in WAL mode. SQLite answers "database is locked" at once, without
    waiting out the busy timeout, when another connection opens the file at that moment
    (replicas starting together on a new file): retry for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_engine(url: URL) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # no implicit transactions from the sqlite3 module: we emit BEGIN ourselves (below),
        # which makes DDL transactional and lets writers take the lock up front
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # switching needs the file to itself: only when it is not WAL already (a new file)
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine


# --------------------------------------------------------------------------- errors


def is_unreachable(err: BaseException) -> bool:
    """Whether a database error means the store cannot be reached (or is too busy) now,
    rather than a mistake in a statement."""
    if isinstance(err, exc.TimeoutError):  # no pooled connection in time
        return True
    if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, exc.OperationalError | exc.InterfaceError):
        text = str(err.orig).lower()
        # SQLite reports schema mistakes as OperationalError too: those are bugs, not outages
        return not any(s in text for s in ("no such table", "no such column", "syntax error"))
    return False


def _first_line(err: BaseException) -> str:
    orig = getattr(err, "orig", None) or err
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return lines[0] if lines else type(orig).__name__


@contextlib.contextmanager
def unavailable_on_outage() -> Iterator[None]:
    """Turn "the database cannot be reached" into Unavailable (with a reason and retry_after);
    other errors pass through unchanged."""
    try:
        yield
    except exc.SQLAlchemyError as err:
        if is_unreachable(err):
            raise Unavailable(
                f"metadata store unavailable: {_first_line(err)}",
                reason="DATABASE_UNAVAILABLE",
                retry_after=RETRY_AFTER_S,
            ) from err
        raise


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads (its transaction is rolled back at the end)."""
    with unavailable_on_outage(), engine.connect() as conn:
        yield conn


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction, committed at the end (rolled back on an error). On SQLite it
    takes the write lock first (BEGIN IMMEDIATE), waiting up to the busy timeout."""
    with unavailable_on_outage(), engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.execution_options(sqlite_begin="IMMEDIATE")
        with conn.begin():
            yield conn


def newest_first_page(
    engine: Engine, table: sa.Table, where: list[sa.ColumnElement[bool]], offset: int, limit: int
) -> tuple[list[sa.RowMapping], int]:
    """One page of `table`'s rows matching `where`, newest first (`created`, then `id`, both
    descending: a stable order for offset paging), and how many match in all."""
    count = sa.select(sa.func.count()).select_from(table).where(*where)
    page = (
        sa.select(table)
        .where(*where)
        .order_by(table.c.created.desc(), table.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with reading(engine) as conn:
        total = conn.execute(count).scalar_one()
        rows = list(conn.execute(page).mappings().all())
    return rows, int(total)


# --------------------------------------------------------------------------- migrations


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def _alembic_config(script_location: Path, service: str, conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["connection"] = conn
    cfg.attributes["version_table"] = version_table(service)
    return cfg


def run_migrations_in_env(context: Any) -> None:
    """The body of every service's migrations/env.py: run on the connection migrate() holds
    (inside its transaction and lock), with this service's version table, batch mode for
    SQLite's ALTER TABLE."""
    conn = context.config.attributes.get("connection")
    if conn is None:
        raise RuntimeError(
            "BoothStudio migrations run through boothstudio.shared.metadata_store.migrate()"
        )
    context.configure(
        connection=conn,
        version_table=context.config.attributes["version_table"],
        render_as_batch=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def current_revision(engine: Engine, service: str) -> str | None:
    """The revision a service's schema is at (None: not under Alembic yet)."""
    with reading(engine) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
        return ctx.get_current_revision()


def migrate(
    engine: Engine,
    script_location: Path,
    *,
    service: str,
    legacy_revisions: Mapping[int, str] | None = None,
    legacy_table: str | None = None,
) -> str | None:
    """Bring `service`'s tables to the newest revision in `script_location`; returns it.

    Safe when several replicas start at once: the whole upgrade is one transaction under a
    lock (PostgreSQL advisory transaction lock; SQLite BEGIN IMMEDIATE). A SQLite file of the
    pre-Alembic layout (`legacy_table` exists, no version table, PRAGMA user_version = N) is
    stamped at `legacy_revisions[N]` first, then upgraded, so its rows are kept. Raises
    ConfigError naming `database_url` when the database cannot be reached."""
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                _set_busy_timeout(conn, MIGRATION_BUSY_TIMEOUT_S)
                conn.execution_options(sqlite_begin="IMMEDIATE")
            try:
                return _upgrade(conn, script_location, service, sqlite, legacy_revisions,
                                legacy_table)
            finally:
                if sqlite:
                    _set_busy_timeout(conn, BUSY_TIMEOUT_S)
    except exc.SQLAlchemyError as err:
        if is_unreachable(err):
            raise _config_error(f"cannot open {describe(engine)}: {_first_line(err)}") from err
        raise


def _set_busy_timeout(conn: Connection, seconds: float) -> None:
    # on the driver's connection: through SQLAlchemy the PRAGMA would open a transaction first
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")


def _upgrade(
    conn: Connection,
    script_location: Path,
    service: str,
    sqlite: bool,
    legacy_revisions: Mapping[int, str] | None,
    legacy_table: str | None,
) -> str | None:
    with conn.begin():
        if not sqlite:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
        cfg = _alembic_config(script_location, service, conn)
        mc = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
        if mc.get_current_revision() is None and sqlite and legacy_revisions:
            legacy = _legacy_revision(conn, legacy_revisions, legacy_table)
            if legacy is not None:
                command.stamp(cfg, legacy)
        command.upgrade(cfg, "head")
        mc = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
        revision: str | None = mc.get_current_revision()
        return revision


def _legacy_revision(
    conn: Connection, revisions: Mapping[int, str], table: str | None
) -> str | None:
    """The revision matching a pre-Alembic SQLite file's PRAGMA user_version (None: a new
    file). A version this code does not know is refused rather than guessed."""
    version = int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    if version == 0:
        return None
    if table is not None and not sa.inspect(conn).has_table(table):
        return None
    if version not in revisions:
        raise ConfigError(
            f"{conn.engine.url.database} has schema version {version}, which this code does "
            f"not know (known: {sorted(revisions)}); refusing to run"
        )
    return revisions[version]


__all__ = [
    "KEY",
    "RETRY_AFTER_S",
    "current_revision",
    "describe",
    "is_unreachable",
    "migrate",
    "open_database",
    "reading",
    "run_migrations_in_env",
    "unavailable_on_outage",
    "version_table",
    "writing",
]
