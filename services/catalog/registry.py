"""The model registry: one row per model in the metadata store (mapping.to_proto makes it a
v1.Model). SQLite under the data dir by default, PostgreSQL when `database_url` is set
(shared.metadata_store); the schema is migrated by Alembic (migrations/)."""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import RowMapping

from boothstudio.services.catalog.migrations import MIGRATIONS_DIR
from boothstudio.shared import metadata_store as store
from boothstudio.shared.errors import AlreadyExists
from boothstudio.v1 import catalog_pb2

SERVICE = "catalog"
#: PRAGMA user_version of a pre-Alembic catalog.sqlite3 -> the revision that is its schema
LEGACY_REVISIONS = {1: "0001"}

COLUMNS = [
    "id",
    "display_name",
    "kind",
    "backend_id",
    "architecture",
    "native_resolution",
    "prediction_type",
    "base_model_id",
    "training_job_id",
    "trigger_phrase",
    "source_path",
    "format",
    "config_path",
    "created",
    "size_bytes",
    "builtin",
    "inpainting",
    "description",
    "owned_path",
    "embedding_vectors",
    "embedding_widths",
    "sha256",
    "preview_sha256",
]
_NUMBERS = {"kind", "native_resolution", "prediction_type", "format", "size_bytes", "builtin",
            "inpainting", "embedding_vectors"}

# The table as the code reads it (the schema itself is the migrations' business).
metadata = sa.MetaData()
models = sa.Table(
    "models",
    metadata,
    *(
        sa.Column(
            c,
            sa.Float() if c == "created" else sa.Integer() if c in _NUMBERS else sa.Text(),
            primary_key=c == "id",
        )
        for c in COLUMNS
    ),
)

Row = RowMapping


class Registry:
    def __init__(self, path: Path, database_url: str = "") -> None:
        """The registry in `database_url`, or in the SQLite file `path` when it is empty;
        migrated to the newest schema (ConfigError naming database_url when unreachable)."""
        self.engine = store.open_database(database_url, path)
        store.migrate(
            self.engine,
            MIGRATIONS_DIR,
            service=SERVICE,
            legacy_revisions=LEGACY_REVISIONS,
            legacy_table="models",
        )

    def get(self, model_id: str) -> Row | None:
        with store.reading(self.engine) as conn:
            return conn.execute(sa.select(models).where(models.c.id == model_id)).mappings().first()

    def exists(self, model_id: str) -> bool:
        return self.get(model_id) is not None

    def insert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Add a model: the row written; AlreadyExists when its id is taken (also by another
        replica meanwhile)."""
        row = _row(values)
        row["created"] = row["created"] or time.time()
        try:
            with store.writing(self.engine) as conn:
                conn.execute(models.insert().values(row))
        except sa.exc.IntegrityError as err:
            raise AlreadyExists(
                f"model {row['id']!r} already exists",
                reason="MODEL_EXISTS",
                violations=[("model_id", "taken")],
            ) from err
        return row

    def set_preview(self, model_id: str, created: float, sha256: str) -> bool:
        """Record the preview of the row an import inserted (matched by its id and creation
        time); False when that row is gone (deleted meanwhile)."""
        stmt = (models.update()
                .where(models.c.id == model_id, models.c.created == created)
                .values(preview_sha256=sha256))
        with store.writing(self.engine) as conn:
            return conn.execute(stmt).rowcount == 1

    def upsert_builtin(self, values: Mapping[str, Any]) -> None:
        """Insert or refresh a model in one statement (replicas starting at once both may)."""
        row = _row(values)
        updates = {c: row[c] for c in COLUMNS if c not in ("id", "created")}
        with store.writing(self.engine) as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(models).values(row)
            conn.execute(stmt.on_conflict_do_update(index_elements=[models.c.id], set_=updates))

    def delete(self, model_id: str) -> int:
        with store.writing(self.engine) as conn:
            return conn.execute(models.delete().where(models.c.id == model_id)).rowcount

    # this method hides the builtin `list` in the class body: types say builtins.list
    def list(
        self, *, kind: int, backend_id: str, base_model_id: str, offset: int, limit: int,
        architecture: str = "",
    ) -> tuple[builtins.list[Row], int]:
        where: builtins.list[sa.ColumnElement[bool]] = []
        if kind:
            where.append(models.c.kind == kind)
        if backend_id:
            where.append(models.c.backend_id == backend_id)
        if base_model_id:
            where.append(models.c.base_model_id == base_model_id)
        if architecture:
            where.append(models.c.architecture == architecture)
        return store.newest_first_page(self.engine, models, where, offset, limit)

    def dependents(self, model_id: str) -> builtins.list[Row]:
        """LoRAs that need this model as their base."""
        stmt = sa.select(models).where(
            models.c.base_model_id == model_id, models.c.kind == catalog_pb2.MODEL_KIND_LORA
        )
        with store.reading(self.engine) as conn:
            return builtins.list(conn.execute(stmt).mappings().all())

    def close(self) -> None:
        self.engine.dispose()


def _row(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every column, a missing or None value replaced by the column's default."""
    return {c: values.get(c) if values.get(c) is not None else _default(c) for c in COLUMNS}


def _default(column: str) -> Any:
    if column in _NUMBERS:
        return 0
    if column == "created":
        return time.time()
    return ""
