"""Textual-inversion embeddings (kind EMBEDDING): the vectors each stands for, their widths per
text encoder ("768" or "768,1280") and the file's sha256 (A1111's TI hash is its first 12 hex
digits).

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

COLUMNS = ("embedding_vectors", "embedding_widths", "sha256")


def upgrade() -> None:
    op.add_column(
        "models", sa.Column("embedding_vectors", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "models", sa.Column("embedding_widths", sa.Text(), nullable=False, server_default="")
    )
    op.add_column("models", sa.Column("sha256", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
