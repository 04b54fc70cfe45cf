"""The model registry: SQLite rows <-> boothstudio.v1.Model."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

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

PREDICTION = {
    "epsilon": catalog_pb2.PREDICTION_TYPE_EPSILON,
    "v_prediction": catalog_pb2.PREDICTION_TYPE_V_PREDICTION,
    "sample": catalog_pb2.PREDICTION_TYPE_SAMPLE,
}
FORMATS = {
    "diffusers": catalog_pb2.MODEL_FORMAT_DIFFUSERS,
    "single_file": catalog_pb2.MODEL_FORMAT_SINGLE_FILE,
    "hf_cache": catalog_pb2.MODEL_FORMAT_HF_CACHE,
    "lora": catalog_pb2.MODEL_FORMAT_LORA,
}

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


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not s or not s[0].isalpha():
        s = "m-" + s
    return s[:100]


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def to_proto(row: sqlite3.Row | dict[str, Any]) -> catalog_pb2.Model:
    r = dict(row)
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(r["created"] * 1e9))
    return catalog_pb2.Model(
        id=r["id"],
        display_name=r["display_name"],
        kind=r["kind"],
        backend_id=r["backend_id"],
        architecture=r["architecture"],
        native_resolution=r["native_resolution"],
        prediction_type=r["prediction_type"],
        origin=catalog_pb2.ModelOrigin(
            base_model_id=r["base_model_id"], training_job_id=r["training_job_id"]
        ),
        trigger_phrase=r["trigger_phrase"],
        source_path=r["source_path"],
        format=r["format"],
        create_time=ts,
        size_bytes=r["size_bytes"],
        builtin=bool(r["builtin"]),
        inpainting=bool(r["inpainting"]),
        description=r["description"],
        config_path=r["config_path"],
    )


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

    def list(
        self, *, kind: int, backend_id: str, base_model_id: str, offset: int, limit: int
    ) -> tuple[list[sqlite3.Row], int]:
        where, params = [], []
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

    def dependents(self, model_id: str) -> list[sqlite3.Row]:
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
