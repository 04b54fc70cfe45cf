"""shared.metadata_store and the `database_url` setting, in process (no servers)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from boothstudio.services.catalog.migrations import MIGRATIONS_DIR
from boothstudio.services.catalog.registry import Registry
from boothstudio.shared import metadata_store as store
from boothstudio.shared.config import ConfigError, load_config
from boothstudio.shared.errors import Unavailable
from tests.stores.test_catalog_store import HEAD as CATALOG_HEAD

PG = "postgresql+psycopg://me@db.example:5432/boothstudio"


def test_database_url_is_a_generic_setting_from_flag_env_and_yaml(tmp_path: Path) -> None:
    assert load_config("catalog", [], env={}).database_url == ""
    assert load_config("trainer", [], env={"BOOTHSTUDIO_DATABASE_URL": PG}).database_url == PG
    yaml_file = tmp_path / "b.yaml"
    yaml_file.write_text(f"database_url: {PG}\ngenerator: {{database_url: 'sqlite:////x.db'}}\n")
    assert load_config("catalog", ["--config", str(yaml_file)], env={}).database_url == PG
    generator = load_config("generator", ["--config", str(yaml_file)], env={})
    assert generator.database_url == "sqlite:////x.db" and "database_url" not in generator.options
    env = {"BOOTHSTUDIO_DATABASE_URL": PG, "BOOTHSTUDIO_CATALOG_DATABASE_URL": "sqlite:////c.db"}
    assert load_config("catalog", [], env=env).database_url == "sqlite:////c.db"
    flag = load_config("catalog", ["--database-url", "sqlite:////f.db"], env=env)
    assert flag.database_url == "sqlite:////f.db"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("::nonsense::", "cannot parse"),
        ("oracle://scott@db/orcl", "unsupported database 'oracle'"),
    ],
)
def test_an_unusable_database_url_is_a_config_error_naming_the_key(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        store.open_database(url, "/unused")
    assert str(info.value).startswith("database_url: ") and says in str(info.value)


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    engine = store.open_database("postgresql://me:pw@db.example/boothstudio", "/unused")
    assert engine.url.drivername == "postgresql+psycopg"
    assert store.describe(engine) == "postgresql+psycopg://me:***@db.example/boothstudio"


def test_sqlite_default_is_a_wal_file_with_foreign_keys(tmp_path: Path) -> None:
    engine = store.open_database("", tmp_path / "deep" / "x.sqlite3")
    with store.reading(engine) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    # transactions are real: DDL rolls back with the rest
    with pytest.raises(RuntimeError), store.writing(engine) as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        raise RuntimeError("undo")
    assert not sa.inspect(engine).has_table("t")
    engine.dispose()


def test_an_unknown_pre_alembic_version_is_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("CREATE TABLE models (id TEXT PRIMARY KEY); PRAGMA user_version = 7;")
    with pytest.raises(ConfigError, match="schema version 7"):
        Registry(path)


def test_a_store_that_is_busy_is_unavailable_but_a_broken_statement_is_not(
    tmp_path: Path,
) -> None:
    engine = store.open_database("", tmp_path / "x.sqlite3")
    store.migrate(engine, MIGRATIONS_DIR, service="catalog")
    assert store.current_revision(engine, "catalog") == CATALOG_HEAD
    with pytest.raises(sa.exc.OperationalError), store.reading(engine) as conn:
        conn.exec_driver_sql("SELECT * FROM no_such_table")
    with pytest.raises(Unavailable) as info, store.unavailable_on_outage():
        raise sa.exc.OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    assert info.value.reason == "DATABASE_UNAVAILABLE" and info.value.retry_after
    assert "database is locked" in info.value.message
    engine.dispose()


def test_a_migration_waits_out_a_writer_longer_than_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas starting together on one SQLite file wait for the whole migration of the one
    that locked first; on a loaded machine that outlasted the 10 s busy timeout of ordinary
    writes and the late replica failed to start ('database is locked')."""
    import threading
    import time

    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.2)  # ordinary writes give up fast here
    path = tmp_path / "catalog.sqlite3"
    engine = store.open_database(None, path)
    with engine.connect():
        pass  # the file exists, in WAL mode
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another replica mid-migration
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        revision = store.migrate(engine, MIGRATIONS_DIR, service="catalog")
    finally:
        release.join()
        holder.close()
    assert revision is not None
    assert time.monotonic() - started >= 0.9  # it waited for the holder, then migrated
