"""Gallery PNGs in the artifact store: `file` holds the object's key (relative to the data dir,
"generator/images/<id>.png", where the file already was) instead of a name under the
Generator's images/ folder, and `sha256` the PNG's hash, checked on every read (rows written
before this revision have none and are served unchecked).

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

PREFIX = "generator/images/"


def upgrade() -> None:
    op.add_column("images", sa.Column("sha256", sa.Text(), nullable=True))
    # `||` and substr are the same on SQLite and PostgreSQL
    op.execute(f"UPDATE images SET file = '{PREFIX}' || file WHERE file NOT LIKE '{PREFIX}%'")


def downgrade() -> None:
    op.execute(
        f"UPDATE images SET file = substr(file, {len(PREFIX) + 1}) WHERE file LIKE '{PREFIX}%'"
    )
    with op.batch_alter_table("images") as batch:
        batch.drop_column("sha256")
