"""The gallery: every image with its full request, seed and timings (a row in the metadata
store + a PNG object in the artifact store).

- Rows: shared.metadata_store, SQLite (`gallery.sqlite3` under the Generator's data dir) by
  default, PostgreSQL when `database_url` is set; the schema is migrated by Alembic
  (migrations/, version table `alembic_version_generator`), and a gallery.sqlite3 of the
  pre-Alembic layout (PRAGMA user_version 1) is stamped at revision 0001 with its rows kept.
  A database that is gone answers UNAVAILABLE (DATABASE_UNAVAILABLE, retry_after).
- PNGs: shared.artifact_store, key `generator/images/<id>.png` (with the default store, the
  file under the data dir where it always was; with `storage_url`, e.g. an S3 bucket). A row
  records the key (`file`) and the PNG's SHA-256, checked on every read: a torn or tampered
  object answers DATA_LOSS (ARTIFACT_CORRUPT); rows from before the hash was recorded are served
  unchecked. A store that is gone answers UNAVAILABLE (STORAGE_UNAVAILABLE, retry_after).
- So every Generator replica on one database and one store lists, gets and deletes every image.

No reader ever sees a row without its PNG: the object is written first (atomically), then its
row; a failed insert deletes the object. A delete removes the rows first (one statement: gone
for every reader at once), then the objects; an object already gone is fine, and one the store
cannot delete now is left behind unreferenced (logged), never a row without its file.

PNG files carry an A1111-style "parameters" text chunk (services.generator.infotext), so other
tools (A1111's PNG Info, ComfyUI loaders, exiftool) read the settings back.

Every method blocks (database and store round trips): async code calls them in a thread.
"""

from __future__ import annotations

import builtins
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from PIL import Image, PngImagePlugin
from sqlalchemy.engine import RowMapping

from boothstudio.services.generator.migrations import MIGRATIONS_DIR
from boothstudio.shared import metadata_store as store
from boothstudio.shared.artifact_store import ArtifactStore, StoreUnavailable, open_artifact_store
from boothstudio.v1 import generator_pb2

SERVICE = "generator"
#: PRAGMA user_version of a pre-Alembic gallery.sqlite3 -> the revision that is its schema
LEGACY_REVISIONS = {1: "0001"}
log = logging.getLogger("boothstudio.generator")

# The table as the code reads it (the schema itself is the migrations' business).
metadata = sa.MetaData()
images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("job_id", sa.Text()),
    sa.Column("created", sa.Float()),
    sa.Column("model_id", sa.Text()),
    sa.Column("seed", sa.Text()),
    sa.Column("idx", sa.Integer()),
    sa.Column("width", sa.Integer()),
    sa.Column("height", sa.Integer()),
    sa.Column("sampler", sa.Text()),
    sa.Column("schedule", sa.Text()),
    sa.Column("steps", sa.Integer()),
    sa.Column("cfg_scale", sa.Float()),
    sa.Column("queue_seconds", sa.Float()),
    sa.Column("generation_seconds", sa.Float()),
    sa.Column("size_bytes", sa.BigInteger()),
    sa.Column("parameters", sa.Text()),
    sa.Column("request", sa.LargeBinary()),
    sa.Column("has_init", sa.Integer()),
    sa.Column("has_mask", sa.Integer()),
    # the PNG's key in the artifact store
    sa.Column("file", sa.Text()),
    sa.Column("sha256", sa.Text()),
)

Row = RowMapping


def image_key(image_id: str) -> str:
    """The artifact store key of an image's PNG (relative to the data dir, as every key is)."""
    return f"{SERVICE}/images/{image_id}.png"


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
    def __init__(
        self, root: Path, database_url: str = "", artifacts: ArtifactStore | None = None
    ) -> None:
        """The gallery of the Generator whose folder is `root` (<data dir>/generator): rows in
        `database_url`, or in the SQLite file `root`/gallery.sqlite3 when it is empty, migrated
        to the newest schema (ConfigError naming database_url when unreachable); PNGs in
        `artifacts`, by default the data dir itself."""
        self.root = root
        self.artifacts = artifacts or open_artifact_store("", root.parent, check=False)
        self.engine = store.open_database(database_url, root / "gallery.sqlite3")
        store.migrate(
            self.engine,
            MIGRATIONS_DIR,
            service=SERVICE,
            legacy_revisions=LEGACY_REVISIONS,
            legacy_table="images",
        )

    def save(self, e: GalleryEntry) -> None:
        """Store the PNG, then its row (the object is deleted if the row fails)."""
        stored = self.artifacts.put_bytes(image_key(e.image_id), e.png)
        req = generator_pb2.GenerateRequest()
        req.CopyFrom(e.request)
        has_init, has_mask = bool(req.init_image), bool(req.mask_image)
        req.init_image = b""
        req.mask_image = b""
        row = {
            "id": e.image_id, "job_id": e.job_id, "created": time.time(),
            "model_id": e.model_id, "seed": str(e.seed), "idx": e.index, "width": e.width,
            "height": e.height, "sampler": e.sampler, "schedule": e.schedule, "steps": e.steps,
            "cfg_scale": e.cfg_scale, "queue_seconds": e.queue_seconds,
            "generation_seconds": e.generation_seconds, "size_bytes": len(e.png),
            "parameters": e.parameters, "request": req.SerializeToString(),
            "has_init": int(has_init), "has_mask": int(has_mask), "file": stored.key,
            "sha256": stored.sha256,
        }  # fmt: skip
        try:
            with store.writing(self.engine) as conn:
                conn.execute(images.insert().values(row))
        except BaseException:
            self._delete_object(stored.key)
            raise

    def _delete_object(self, key: str) -> None:
        """Delete a PNG whose row is gone (or was never written). The store being unreachable
        leaves an unreferenced object behind, which no reader can reach: logged, not raised,
        since the image itself is already deleted (or was never saved)."""
        try:
            self.artifacts.delete(key)
        except StoreUnavailable as err:
            log.warning("gallery object %s left behind: %s", key, err)

    def get(self, image_id: str) -> Row | None:
        with store.reading(self.engine) as conn:
            return conn.execute(sa.select(images).where(images.c.id == image_id)).mappings().first()

    def read_png(self, row: Row) -> bytes:
        """The PNG from the artifact store, checked against its recorded hash (ArtifactCorrupt,
        DATA_LOSS, on a mismatch; ArtifactMissing, NOT_FOUND, when deleted meanwhile)."""
        return self.artifacts.get_bytes(row["file"], row["sha256"])

    # this method hides the builtin `list` in the class body: types say builtins.list
    def list(
        self, *, model_id: str, job_id: str, offset: int, limit: int
    ) -> tuple[builtins.list[Row], int]:
        where: builtins.list[sa.ColumnElement[bool]] = []
        if model_id:
            where.append(images.c.model_id == model_id)
        if job_id:
            where.append(images.c.job_id == job_id)
        return store.newest_first_page(self.engine, images, where, offset, limit)

    def delete(
        self, image_ids: builtins.list[str], job_id: str = ""
    ) -> tuple[int, builtins.list[str]]:
        """Delete images (rows, then PNGs): those named and, with `job_id`, all of that job's.
        Returns (deleted count, named ids that did not exist). One statement decides what is
        deleted, so two replicas deleting the same image count it once."""
        if not image_ids and not job_id:
            return 0, []
        match: builtins.list[sa.ColumnElement[bool]] = []
        if image_ids:
            match.append(images.c.id.in_(image_ids))
        if job_id:
            match.append(images.c.job_id == job_id)
        stmt = images.delete().where(sa.or_(*match)).returning(images.c.id, images.c.file)
        with store.writing(self.engine) as conn:
            deleted = builtins.list(conn.execute(stmt).mappings().all())
        gone = {r["id"] for r in deleted}
        for r in deleted:
            self._delete_object(r["file"])
        return len(deleted), [i for i in image_ids if i not in gone]

    def to_proto(self, row: Row, with_png: bool) -> generator_pb2.GalleryImage:
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
        self.engine.dispose()
