"""The gallery: every image with its full request, seed and timings (a row in the metadata
store + a PNG file).

- Rows: shared.metadata_store, SQLite (`gallery.sqlite3` under the Generator's data dir) by
  default, PostgreSQL when `database_url` is set; the schema is migrated by Alembic
  (migrations/, version table `alembic_version_generator`), and a gallery.sqlite3 of the
  pre-Alembic layout (PRAGMA user_version 1) is stamped at revision 0001 with its rows kept.
  Every Generator replica on one database lists, gets and deletes the same images; a database
  that is gone answers UNAVAILABLE (DATABASE_UNAVAILABLE, retry_after).
- Files: PNGs still live under each replica's own data dir (`images/`), until the artifact
  store (issue 19's later step) holds them. So a replica asked for the PNG of an image that
  another replica made answers FAILED_PRECONDITION (IMAGE_FILE_ELSEWHERE; its metadata is
  served), and deleting such an image removes its row for every replica but leaves the file on
  the replica that wrote it.

PNG files carry an A1111-style "parameters" text chunk (services.generator.infotext), so other
tools (A1111's PNG Info, ComfyUI loaders, exiftool) read the settings back. Files are written
atomically (temporary file, fsync, rename) before their row is inserted; a failed insert removes
the file, so no reader sees a row without its file.
"""

from __future__ import annotations

import builtins
import io
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from google.protobuf import timestamp_pb2
from PIL import Image, PngImagePlugin
from sqlalchemy.engine import RowMapping

from boothstudio.services.generator.migrations import MIGRATIONS_DIR
from boothstudio.shared import metadata_store as store
from boothstudio.shared.errors import FailedPrecondition
from boothstudio.shared.storage import atomic_write_bytes
from boothstudio.v1 import generator_pb2

SERVICE = "generator"
#: PRAGMA user_version of a pre-Alembic gallery.sqlite3 -> the revision that is its schema
LEGACY_REVISIONS = {1: "0001"}

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
    sa.Column("file", sa.Text()),
)

Row = RowMapping


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
    def __init__(self, root: Path, database_url: str = "") -> None:
        """The gallery with its PNGs under `root`/images and its rows in `database_url`, or in
        the SQLite file `root`/gallery.sqlite3 when it is empty; migrated to the newest schema
        (ConfigError naming database_url when unreachable)."""
        self.root = root
        self.files = root / "images"
        self.files.mkdir(parents=True, exist_ok=True)
        self.engine = store.open_database(database_url, root / "gallery.sqlite3")
        store.migrate(
            self.engine,
            MIGRATIONS_DIR,
            service=SERVICE,
            legacy_revisions=LEGACY_REVISIONS,
            legacy_table="images",
        )

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
        row = {
            "id": e.image_id, "job_id": e.job_id, "created": time.time(),
            "model_id": e.model_id, "seed": str(e.seed), "idx": e.index, "width": e.width,
            "height": e.height, "sampler": e.sampler, "schedule": e.schedule, "steps": e.steps,
            "cfg_scale": e.cfg_scale, "queue_seconds": e.queue_seconds,
            "generation_seconds": e.generation_seconds, "size_bytes": len(e.png),
            "parameters": e.parameters, "request": req.SerializeToString(),
            "has_init": int(has_init), "has_mask": int(has_mask), "file": rel,
        }  # fmt: skip
        try:
            with store.writing(self.engine) as conn:
                conn.execute(images.insert().values(row))
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def get(self, image_id: str) -> Row | None:
        with store.reading(self.engine) as conn:
            return conn.execute(sa.select(images).where(images.c.id == image_id)).mappings().first()

    def read_png(self, row: Row) -> bytes:
        try:
            return (self.files / row["file"]).read_bytes()
        except FileNotFoundError:
            # until the artifact store: the PNG is on the replica that generated the image
            raise FailedPrecondition(
                f"the PNG of image {row['id']!r} is not on this generator replica (gallery "
                "files are kept under the data dir of the replica that made them); ask for "
                "metadata_only, or ask that replica",
                reason="IMAGE_FILE_ELSEWHERE",
                metadata={"image_id": row["id"]},
            ) from None

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
        """Delete images (rows, then files): those named and, with `job_id`, all of that job's.
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
            (self.files / r["file"]).unlink(missing_ok=True)
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
