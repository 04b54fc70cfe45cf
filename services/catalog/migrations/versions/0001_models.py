"""The models table, as the pre-Alembic layout had it (PRAGMA user_version 1): a
catalog.sqlite3 of that layout is stamped at this revision, not re-created.

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
    def text(name: str, default: bool = True) -> sa.Column[str]:
        if default:
            return sa.Column(name, sa.Text(), nullable=False, server_default="")
        return sa.Column(name, sa.Text(), nullable=False)

    def number(name: str) -> sa.Column[int]:
        return sa.Column(name, sa.Integer(), nullable=False, server_default="0")

    op.create_table(
        "models",
        sa.Column("id", sa.Text(), primary_key=True),
        text("display_name", default=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        text("backend_id", default=False),
        text("architecture"),
        number("native_resolution"),
        number("prediction_type"),
        text("base_model_id"),
        text("training_job_id"),
        text("trigger_phrase"),
        text("source_path", default=False),
        sa.Column("format", sa.Integer(), nullable=False),
        text("config_path"),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("size_bytes", BIG, nullable=False, server_default="0"),
        number("builtin"),
        number("inpainting"),
        text("description"),
        text("owned_path"),
    )
    op.create_index("models_created", "models", [sa.text("created DESC"), sa.text("id DESC")])
    op.create_index("models_base", "models", ["base_model_id"])


def downgrade() -> None:
    op.drop_index("models_base", table_name="models")
    op.drop_index("models_created", table_name="models")
    op.drop_table("models")
