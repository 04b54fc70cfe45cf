"""The gallery's images table, as the pre-Alembic layout had it (PRAGMA user_version 1): a
gallery.sqlite3 of that layout is stamped at this revision, not re-created.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# byte counts pass 2 GiB: 64-bit on PostgreSQL (SQLite's INTEGER already is)
BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    def column(name: str, type_: sa.types.TypeEngine | type[sa.types.TypeEngine]) -> sa.Column:
        return sa.Column(name, type_, nullable=False)

    op.create_table(
        "images",
        sa.Column("id", sa.Text(), primary_key=True),
        column("job_id", sa.Text()),
        column("created", sa.Float()),
        column("model_id", sa.Text()),
        # a uint64 seed does not fit a signed 64-bit integer: kept as its decimal text
        column("seed", sa.Text()),
        column("idx", sa.Integer()),
        column("width", sa.Integer()),
        column("height", sa.Integer()),
        column("sampler", sa.Text()),
        column("schedule", sa.Text()),
        column("steps", sa.Integer()),
        column("cfg_scale", sa.Float()),
        column("queue_seconds", sa.Float()),
        column("generation_seconds", sa.Float()),
        column("size_bytes", BIG),
        column("parameters", sa.Text()),
        # the GenerateRequest (without its init image and mask), serialized
        column("request", sa.LargeBinary()),
        column("has_init", sa.Integer()),
        column("has_mask", sa.Integer()),
        column("file", sa.Text()),
    )
    op.create_index("images_created", "images", [sa.text("created DESC"), sa.text("id DESC")])
    op.create_index("images_job", "images", ["job_id"])
    op.create_index("images_model", "images", ["model_id"])


def downgrade() -> None:
    op.drop_index("images_model", table_name="images")
    op.drop_index("images_job", table_name="images")
    op.drop_index("images_created", table_name="images")
    op.drop_table("images")
