"""Generator replicas and where each generation job runs (services.generator.replicas):
every replica's advertised address and last heartbeat, and each job id's replica, so that
CancelGeneration reaches a job from any replica.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "generator_replicas",
        sa.Column("replica_id", sa.Text(), primary_key=True),
        sa.Column("address", sa.Text(), nullable=False),
        # seconds since the epoch, by the replica's clock
        sa.Column("heartbeat", sa.Float(), nullable=False),
    )
    op.create_table(
        "generator_job_routes",
        sa.Column("job_id", sa.Text(), primary_key=True),
        sa.Column("replica_id", sa.Text(), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
    )
    op.create_index("generator_job_routes_created", "generator_job_routes", ["created"])


def downgrade() -> None:
    op.drop_index("generator_job_routes_created", table_name="generator_job_routes")
    op.drop_table("generator_job_routes")
    op.drop_table("generator_replicas")
