"""The model registry: one SQLite row per model (mapping.to_proto makes it a v1.Model)."""

from __future__ import annotations

import builtins
import sqlite3
import time
from pathlib import Path
from typing import Any

from boothstudio.shared.storage import SQLiteDatabase
from boothstudio.v1 import catalog_pb2

MIGRATIONS = [
    """
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
    """
]

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
]


class Registry:
    def __init__(self, path: Path) -> None:
        self.db = SQLiteDatabase(path, MIGRATIONS)
        self.db.migrate()

    def get(self, model_id: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM models WHERE id = ?", (model_id,))

    def exists(self, model_id: str) -> bool:
        return self.get(model_id) is not None

    def insert(self, values: dict[str, Any]) -> None:
        row = {c: values.get(c) for c in COLUMNS}
        row["created"] = row["created"] or time.time()
        names = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        self.db.execute(
            f"INSERT INTO models ({names}) VALUES ({marks})",
            [row[c] if row[c] is not None else _default(c) for c in COLUMNS],
        )

    def upsert_builtin(self, values: dict[str, Any]) -> None:
        existing = self.get(values["id"])
        if existing is None:
            self.insert(values)
            return
        sets = ", ".join(f"{c} = ?" for c in COLUMNS if c not in ("id", "created"))
        self.db.execute(
            f"UPDATE models SET {sets} WHERE id = ?",
            [
                values.get(c) if values.get(c) is not None else _default(c)
                for c in COLUMNS
                if c not in ("id", "created")
            ]
            + [values["id"]],
        )

    def delete(self, model_id: str) -> int:
        return self.db.execute("DELETE FROM models WHERE id = ?", (model_id,))

    # this method hides the builtin `list` in the class body: types say builtins.list
    def list(
        self, *, kind: int, backend_id: str, base_model_id: str, offset: int, limit: int
    ) -> tuple[builtins.list[sqlite3.Row], int]:
        where: builtins.list[str] = []
        params: builtins.list[Any] = []
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if backend_id:
            where.append("backend_id = ?")
            params.append(backend_id)
        if base_model_id:
            where.append("base_model_id = ?")
            params.append(base_model_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self.db.query_one(f"SELECT COUNT(*) AS n FROM models {clause}", params)
        rows = self.db.query(
            f"SELECT * FROM models {clause} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, int(total["n"]) if total else 0

    def dependents(self, model_id: str) -> builtins.list[sqlite3.Row]:
        """LoRAs that need this model as their base."""
        return self.db.query(
            "SELECT * FROM models WHERE base_model_id = ? AND kind = ?",
            (model_id, catalog_pb2.MODEL_KIND_LORA),
        )

    def close(self) -> None:
        self.db.close()


def _default(column: str) -> Any:
    if column in ("kind", "native_resolution", "prediction_type", "format", "size_bytes"):
        return 0
    if column in ("builtin", "inpainting"):
        return 0
    if column == "created":
        return time.time()
    return ""
