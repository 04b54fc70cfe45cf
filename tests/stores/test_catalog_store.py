"""The Catalog on the metadata store (shared.metadata_store): real processes, a real
PostgreSQL server (tests/stores/postgres.py), SQLite files of today's and yesterday's layout.

- two Catalog processes on one PostgreSQL database see each other's models;
- a catalog.sqlite3 of the pre-Alembic layout (PRAGMA user_version 1) is migrated, rows kept;
- a wrong database_url or storage_url stops the service at start-up with one line naming the key;
- two replicas starting at once on one database and one bucket: a model imported through one is
  got, listed and deleted through the other, and its objects leave the bucket;
- scaled out, a delete while no Trainer answers is refused (UNAVAILABLE), on one host not;
- replicas migrating one database at once all succeed, and the schema is migrated once;
- a database that goes away while serving answers UNAVAILABLE with retry information, and the
  service recovers by itself when it is back.

Rerun: `.venv/bin/pytest tests/stores -v`
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from boothstudio.services.catalog.registry import LEGACY_REVISIONS
from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from boothstudio.shared.artifact_store import MANIFEST
from boothstudio.shared.metadata_store import MIGRATION_LOCK_ID
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.helpers import ROOT, ServiceProcess, free_port, service_env
from tests.stores.helpers import isolated_env, rpc_error, start_error
from tests.stores.postgres import PostgresServer
from tests.stores.s3 import S3Target

EMBEDDED = "boothstudio-tiny"
HEAD = "0003"

# The catalog's schema before Alembic, frozen here as shared.storage.SQLiteDatabase wrote it
# (migration 1 of the old services/catalog/registry.py; PRAGMA user_version = 1).
LEGACY_SCHEMA = """
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    backend_id TEXT NOT NULL,
    architecture TEXT NOT NULL DEFAULT '',
    native_resolution INTEGER NOT NULL DEFAULT 0,
    prediction_type INTEGER NOT NULL DEFAULT 0,
    base_model_id TEXT NOT NULL DEFAULT '',
    training_job_id TEXT NOT NULL DEFAULT '',
    trigger_phrase TEXT NOT NULL DEFAULT '',
    source_path TEXT NOT NULL,
    format INTEGER NOT NULL,
    config_path TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    size_bytes INTEGER NOT NULL DEFAULT 0,
    builtin INTEGER NOT NULL DEFAULT 0,
    inpainting INTEGER NOT NULL DEFAULT 0,
    description TEXT NOT NULL DEFAULT '',
    owned_path TEXT NOT NULL DEFAULT ''
);
CREATE INDEX models_created ON models(created DESC, id DESC);
CREATE INDEX models_base ON models(base_model_id);
PRAGMA user_version = 1;
"""


def stub(svc: ServiceProcess) -> catalog_pb2_grpc.CatalogServiceStub:
    return catalog_pb2_grpc.CatalogServiceStub(svc.channel())


def ids(s: catalog_pb2_grpc.CatalogServiceStub) -> list[str]:
    return [m.id for m in s.ListModels(pb.ListModelsRequest(page_size=100)).models]


def test_two_catalogs_on_one_postgres_database_see_each_others_models(
    start_service: Any, database_url: str
) -> None:
    a = stub(start_service("catalog", env=isolated_env(database_url)))
    b = stub(start_service("catalog", env=isolated_env(database_url)))
    assert ids(a) == ids(b) == [EMBEDDED]  # the second start refreshed the builtin row, no clash

    made = a.ImportModel(pb.ImportModelRequest(
        diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="shared-model", description="on pg"
    )).model
    assert made.id == "shared-model" and made.architecture == "tiny-sd"
    assert set(ids(b)) == {EMBEDDED, "shared-model"}
    got = b.GetModel(pb.GetModelRequest(model_id="shared-model")).model
    assert got.description == "on pg" and got.create_time == made.create_time
    assert got.size_bytes == made.size_bytes > 0
    # the id is taken for every replica
    err = rpc_error(lambda: b.ImportModel(pb.ImportModelRequest(
        diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="shared-model")))
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and err.fields == ["model_id"]
    # filters and paging run in the database
    loras = b.ListModels(pb.ListModelsRequest(kind=pb.MODEL_KIND_LORA)).models
    assert list(loras) == []
    first = a.ListModels(pb.ListModelsRequest(page_size=1))
    assert first.total_size == 2 and first.models[0].id == "shared-model"
    rest = a.ListModels(pb.ListModelsRequest(page_size=1, page_token=first.next_page_token))
    assert [m.id for m in rest.models] == [EMBEDDED] and not rest.next_page_token

    # deleting through the other replica needs a Trainer to vouch that no job uses the model
    # (scaled out, none answering refuses the delete): see the replicas-and-bucket test below
    err = rpc_error(lambda: b.DeleteModel(pb.DeleteModelRequest(model_id="shared-model")))
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "TRAINER_UNREACHABLE"
    assert set(ids(a)) == {EMBEDDED, "shared-model"}
    err = rpc_error(lambda: a.DeleteModel(pb.DeleteModelRequest(model_id=EMBEDDED)))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "MODEL_BUILTIN"


def test_an_old_layout_catalog_sqlite3_is_migrated_with_its_rows(
    start_service: Any, tmp_path: Path
) -> None:
    path = tmp_path / "catalog" / "catalog.sqlite3"
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SCHEMA)
        conn.execute(
            "INSERT INTO models (id, display_name, kind, backend_id, architecture, source_path,"
            " format, created, size_bytes, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("kept-model", "Kept", pb.MODEL_KIND_BASE, "diffusers", "sd15", "/models/kept",
             pb.MODEL_FORMAT_DIFFUSERS, 1_700_000_000.5, 3 * 2**31, "from yesterday"),
        )
    assert LEGACY_REVISIONS[1] == "0001"

    svc = start_service("catalog", env=isolated_env(), data_dir=tmp_path)
    s = stub(svc)
    kept = s.GetModel(pb.GetModelRequest(model_id="kept-model")).model
    assert kept.display_name == "Kept" and kept.description == "from yesterday"
    assert kept.size_bytes == 3 * 2**31 and kept.architecture == "sd15"
    assert kept.create_time.seconds == 1_700_000_000
    assert set(ids(s)) == {EMBEDDED, "kept-model"}
    s.ImportModel(pb.ImportModelRequest(diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="new"))
    svc.stop()

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version_catalog").fetchall() == [
            (HEAD,)
        ]
        rows = {r[0] for r in conn.execute("SELECT id FROM models")}
        assert rows == {EMBEDDED, "kept-model", "new"}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url at all", "cannot parse"),
        ("mysql://user@127.0.0.1/boothstudio", "unsupported database 'mysql'"),
        ("unreachable", "cannot open postgresql+psycopg://nobody:***@127.0.0.1:"),
    ],
)
def test_a_wrong_database_url_stops_the_start_with_one_line_naming_the_key(
    start_service: Any, url: str, says: str
) -> None:
    if url == "unreachable":
        url = f"postgresql+psycopg://nobody:secret@127.0.0.1:{free_port()}/boothstudio"
    error = start_error(lambda: start_service("catalog", env=isolated_env(url), timeout=60),
                        secret="secret")
    assert error.startswith("cannot start: database_url: ") and says in error, error


def test_two_replicas_starting_at_once_on_one_database_and_bucket_share_models_and_files(
    start_service: Any, database_url: str, s3_bucket: S3Target
) -> None:
    """Replicas behind one address: both register the embedded model at start at once (one
    upsert each, no clash); a model imported through A is got, listed and deleted through B,
    and its objects leave the bucket."""
    # a real Trainer to ask whether a job uses the model (scaled out, no answer is a refusal)
    trainer = start_service("trainer", env=isolated_env(database_url, **s3_bucket.env))
    env = {**isolated_env(database_url, **s3_bucket.env),
           "BOOTHSTUDIO_TRAINER_ADDRESS": trainer.address}
    with ThreadPoolExecutor(2) as pool:
        a, b = (stub(svc) for svc in pool.map(lambda _: start_service("catalog", env=env), "ab"))
    assert ids(a) == ids(b) == [EMBEDDED]

    made = a.ImportModel(pb.ImportModelRequest(
        diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="replicated", copy_files=True)).model
    # the copy is under the import attempt's own prefix, catalog/models/<id>/<token>/
    key = made.source_path.removeprefix(f"{s3_bucket.url}/")
    assert re.fullmatch(r"catalog/models/replicated/[0-9a-f]{8}/embedded_model", key), key
    assert f"{key}/{MANIFEST}" in s3_bucket.keys("catalog/models")
    got = b.GetModel(pb.GetModelRequest(model_id="replicated")).model
    assert (got.source_path, got.size_bytes) == (made.source_path, made.size_bytes)
    assert set(ids(b)) == {EMBEDDED, "replicated"}
    freed = b.DeleteModel(pb.DeleteModelRequest(model_id="replicated", delete_files=True))
    assert freed.freed_bytes == made.size_bytes > 0
    assert s3_bucket.keys("catalog/models") == []
    err = rpc_error(lambda: a.GetModel(pb.GetModelRequest(model_id="replicated")))
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert ids(a) == [EMBEDDED]


@pytest.mark.parametrize("scaled_out", [False, True], ids=["single-host", "database_url"])
def test_a_delete_while_no_trainer_answers_is_refused_only_when_scaled_out(
    start_service: Any, new_database: Callable[[], str], scaled_out: bool
) -> None:
    """One host: no Trainer answering means none runs, so nothing trains on the model. Scaled
    out, Trainer replicas may be running jobs on it: UNAVAILABLE, to retry, not deleted."""
    s = stub(start_service("catalog", env=isolated_env(new_database() if scaled_out else "")))
    s.ImportModel(pb.ImportModelRequest(diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="m"))
    delete = pb.DeleteModelRequest(model_id="m", delete_files=True)
    if not scaled_out:
        s.DeleteModel(delete)
        assert ids(s) == [EMBEDDED]
        return
    err = rpc_error(lambda: s.DeleteModel(delete))
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "TRAINER_UNREACHABLE", err
    assert err.retry_after and err.retry_after > 0
    assert set(ids(s)) == {EMBEDDED, "m"}


MIGRATE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from boothstudio.services.catalog.registry import Registry
    start, path, url = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    time.sleep(max(0.0, start - time.time()))
    Registry(path, url).close()
""")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_replicas_migrating_one_database_at_once_all_succeed(
    backend: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    url = new_database() if backend == "postgresql" else ""
    path = tmp_path / "catalog.sqlite3"
    start = time.time() + 8.0  # every process imported and waiting, then all at once
    procs = [
        subprocess.Popen([sys.executable, "-c", MIGRATE, str(start), str(path), url], cwd=ROOT,
                         env=service_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    engine = sa.create_engine(url or f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version_catalog"))
            assert versions.scalars().all() == [HEAD]
            assert conn.execute(sa.text("SELECT COUNT(*) FROM models")).scalar_one() == 0
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_migration_waits_for_the_migration_lock(
    backend: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """What makes simultaneous starts safe, shown deterministically: while another replica
    holds the lock (PostgreSQL: the advisory lock; SQLite: the write lock), a migration waits,
    then runs once the lock is free."""
    url = new_database() if backend == "postgresql" else ""
    path = tmp_path / "catalog.sqlite3"
    engine = sa.create_engine(url or f"sqlite:///{path}", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as holder:
            if url:
                holder.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_ID)))
            else:  # a replica's connection: WAL, then the write lock
                holder.exec_driver_sql("PRAGMA journal_mode=WAL")
                holder.exec_driver_sql("BEGIN IMMEDIATE")
            proc = subprocess.Popen([sys.executable, "-c", MIGRATE, "0", str(path), url],
                                    cwd=ROOT, env=service_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            time.sleep(5.0)  # imported and waiting (SQLite's busy timeout is 10 s)
            assert proc.poll() is None, proc.communicate()[0]
            assert not sa.inspect(holder).has_table("alembic_version_catalog")
            if url:
                holder.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_ID)))
            else:
                holder.exec_driver_sql("COMMIT")
            output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version_catalog"))
            assert versions.scalars().all() == [HEAD]
    finally:
        engine.dispose()


def test_a_database_that_goes_away_answers_unavailable_and_the_service_recovers(
    start_service: Any, postgres: PostgresServer, database_url: str
) -> None:
    s = stub(start_service("catalog", env=isolated_env(database_url)))
    assert ids(s) == [EMBEDDED]
    postgres.stop()
    try:
        for call in (
            lambda: s.ListModels(pb.ListModelsRequest()),
            lambda: s.GetModel(pb.GetModelRequest(model_id=EMBEDDED)),
            lambda: s.ImportModel(pb.ImportModelRequest(
                diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="while-down")),
        ):
            err = rpc_error(call)
            assert err.code == grpc.StatusCode.UNAVAILABLE, err
            assert err.reason == "DATABASE_UNAVAILABLE"
            assert err.retry_after and err.retry_after > 0
            assert "metadata store unavailable" in err.message
    finally:
        postgres.restart()
    # no restart of the service: the pool checks its connections and opens new ones
    assert ids(s) == [EMBEDDED]
    s.ImportModel(pb.ImportModelRequest(diffusers_path=str(EMBEDDED_MODEL_DIR), model_id="after"))
    assert set(ids(s)) == {EMBEDDED, "after"}
