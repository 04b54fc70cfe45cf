"""Domain observations written by workers (step seconds, checkpoint seconds, class images, peak
memory) for the service process to turn into Prometheus metrics, as the pre-Alembic layout had
them (PRAGMA user_version 2). Ids are never reused (SQLite AUTOINCREMENT, a PostgreSQL
sequence), so a reader's cursor never skips a row after deletions.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# one row per training step: 64-bit ids on PostgreSQL (SQLite's INTEGER already is)
BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "observations",
        sa.Column("id", BIG, primary_key=True, autoincrement=True),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False, server_default=""),
        sa.Column("value", sa.Float(), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("observations")
