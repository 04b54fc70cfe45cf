"""The gallery: every image with its full request, seed and timings (SQLite + PNG files).

PNG files carry an A1111-style "parameters" text chunk (services.generator.infotext), so other
tools (A1111's PNG Info, ComfyUI loaders, exiftool) read the settings back. Files are written
atomically (temporary file, fsync, rename) before their row is inserted; a failed insert removes
the file.
"""

from __future__ import annotations

import io
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import timestamp_pb2
from PIL import Image, PngImagePlugin

from boothstudio.shared.storage import SQLiteDatabase, atomic_write_bytes
from boothstudio.v1 import generator_pb2

MIGRATIONS = [
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        created REAL NOT NULL,
        model_id TEXT NOT NULL,
        seed TEXT NOT NULL,
        idx INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        sampler TEXT NOT NULL,
        schedule TEXT NOT NULL,
        steps INTEGER NOT NULL,
        cfg_scale REAL NOT NULL,
        queue_seconds REAL NOT NULL,
        generation_seconds REAL NOT NULL,
        size_bytes INTEGER NOT NULL,
        parameters TEXT NOT NULL,
        request BLOB NOT NULL,
        has_init INTEGER NOT NULL,
        has_mask INTEGER NOT NULL,
        file TEXT NOT NULL
    );
    CREATE INDEX images_created ON images(created DESC, id DESC);
    CREATE INDEX images_job ON images(job_id);
    CREATE INDEX images_model ON images(model_id);
    """
]

def png_bytes(image: Image.Image, parameters: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return buf.getvalue()


@dataclass
class GalleryEntry:
    image_id: str
    job_id: str
    model_id: str
    seed: int
    index: int
    width: int
    height: int
    sampler: str
    schedule: str
    steps: int
    cfg_scale: float
    queue_seconds: float
    generation_seconds: float
    parameters: str
    request: generator_pb2.GenerateRequest
    png: bytes


class Gallery:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "images"
        self.files.mkdir(parents=True, exist_ok=True)
        self.db = SQLiteDatabase(root / "gallery.sqlite3", MIGRATIONS)
        self.db.migrate()

    def save(self, e: GalleryEntry) -> None:
        """Write the PNG atomically, then its row (the file is removed if the row fails)."""
        rel = f"{e.image_id}.png"
        path = self.files / rel
        atomic_write_bytes(path, e.png)
        req = generator_pb2.GenerateRequest()
        req.CopyFrom(e.request)
        has_init, has_mask = bool(req.init_image), bool(req.mask_image)
        req.init_image = b""
        req.mask_image = b""
        try:
            self.db.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?)",
                (
                    e.image_id, e.job_id, time.time(), e.model_id, str(e.seed), e.index,
                    e.width, e.height, e.sampler, e.schedule, e.steps, e.cfg_scale,
                    e.queue_seconds, e.generation_seconds, len(e.png), e.parameters,
                    req.SerializeToString(), int(has_init), int(has_mask), rel,
                ),
            )  # fmt: skip
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def get(self, image_id: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM images WHERE id = ?", (image_id,))

    def read_png(self, row: sqlite3.Row) -> bytes:
        return (self.files / row["file"]).read_bytes()

    def list(
        self, *, model_id: str, job_id: str, offset: int, limit: int
    ) -> tuple[list[sqlite3.Row], int]:
        where, params = [], []
        if model_id:
            where.append("model_id = ?")
            params.append(model_id)
        if job_id:
            where.append("job_id = ?")
            params.append(job_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self.db.query_one(f"SELECT COUNT(*) AS n FROM images {clause}", params)
        rows = self.db.query(
            f"SELECT * FROM images {clause} ORDER BY created DESC, id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return rows, int(total["n"]) if total else 0

    def delete(self, image_ids: list[str], job_id: str = "") -> tuple[int, list[str]]:
        """Delete images (rows, then files). Returns (deleted count, ids that did not exist)."""
        rows = [r for i in image_ids if (r := self.get(i)) is not None]
        found = {r["id"] for r in rows}
        missing = [i for i in image_ids if i not in found]
        if job_id:
            rows += [
                r
                for r in self.db.query("SELECT * FROM images WHERE job_id = ?", (job_id,))
                if r["id"] not in found
            ]
        with self.db.transaction() as tx:
            for r in rows:
                tx.execute("DELETE FROM images WHERE id = ?", (r["id"],))
        for r in rows:
            (self.files / r["file"]).unlink(missing_ok=True)
        return len(rows), missing

    def to_proto(self, row: sqlite3.Row, with_png: bool) -> generator_pb2.GalleryImage:
        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(row["created"] * 1e9))
        req = generator_pb2.GenerateRequest.FromString(row["request"])
        msg = generator_pb2.GalleryImage(
            image_id=row["id"],
            job_id=row["job_id"],
            create_time=ts,
            request=req,
            seed=int(row["seed"]),
            index=row["idx"],
            width=row["width"],
            height=row["height"],
            model_id=row["model_id"],
            sampler=row["sampler"],
            schedule=row["schedule"],
            steps=row["steps"],
            cfg_scale=row["cfg_scale"],
            queue_seconds=row["queue_seconds"],
            generation_seconds=row["generation_seconds"],
            size_bytes=row["size_bytes"],
            parameters_text=row["parameters"],
            has_init_image=bool(row["has_init"]),
            has_mask=bool(row["has_mask"]),
        )
        if with_png:
            msg.png = self.read_png(row)
        return msg

    def close(self) -> None:
        self.db.close()
