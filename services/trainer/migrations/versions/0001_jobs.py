"""Jobs, their events, checkpoints, datasets and dataset images, as the pre-Alembic layout had
them (PRAGMA user_version 1): a trainer.sqlite3 of that layout is stamped at this revision, not
re-created.

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
    def text(name: str, default: str | None = None) -> sa.Column[str]:
        if default is None:
            return sa.Column(name, sa.Text(), nullable=False)
        return sa.Column(name, sa.Text(), nullable=False, server_default=default)

    def number(name: str, default: bool = False) -> sa.Column[int]:
        if default:
            return sa.Column(name, sa.Integer(), nullable=False, server_default="0")
        return sa.Column(name, sa.Integer(), nullable=False)

    def job_ref() -> sa.Column[str]:
        return sa.Column("job_id", sa.Text(), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                         nullable=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Text(), primary_key=True),
        text("display_name"),
        number("state"),
        sa.Column("config", sa.LargeBinary(), nullable=False),  # DreamBoothConfig, no image bytes
        text("base_model"),  # JSON: what the Catalog said about the base model
        number("step", default=True),
        number("total_steps", default=True),
        text("failure_reason", ""),
        text("failure_message", ""),
        sa.Column("create_time", sa.Float(), nullable=False),
        sa.Column("start_time", sa.Float()),
        sa.Column("end_time", sa.Float()),
        sa.Column("update_time", sa.Float(), nullable=False),
        sa.Column("queued_at", sa.Float(), nullable=False),  # queue order
        text("output_model_id", ""),
        text("trigger_phrase", ""),
        sa.Column("last_metrics", sa.LargeBinary()),
        text("warnings", "[]"),
        number("attempts", default=True),
        number("instance_image_count", default=True),
        text("job_dir"),
        number("worker_pid", default=True),
    )
    op.create_index("jobs_state", "jobs", ["state", "queued_at"])
    op.create_table(
        "events",
        job_ref(),
        number("seq"),
        sa.Column("time", sa.Float(), nullable=False),
        text("kind"),
        sa.Column("payload", sa.LargeBinary(), nullable=False),  # a WatchTrainingJobResponse
        sa.PrimaryKeyConstraint("job_id", "seq"),
    )
    op.create_table(
        "checkpoints",
        job_ref(),
        text("checkpoint_id"),
        number("kind"),
        number("step"),
        text("path"),
        sa.Column("size_bytes", BIG, nullable=False),
        sa.Column("create_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "checkpoint_id", "kind"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Text(), primary_key=True),
        text("name"),
        sa.Column("create_time", sa.Float(), nullable=False),
    )
    op.create_table(
        "dataset_images",
        sa.Column("dataset_id", sa.Text(), sa.ForeignKey("datasets.id", ondelete="CASCADE"),
                  nullable=False),
        text("filename"),
        number("width"),
        number("height"),
        sa.Column("size_bytes", BIG, nullable=False),
        text("sha256"),
        text("caption", ""),
        sa.PrimaryKeyConstraint("dataset_id", "filename"),
    )


def downgrade() -> None:
    op.drop_table("dataset_images")
    op.drop_table("datasets")
    op.drop_table("checkpoints")
    op.drop_table("events")
    op.drop_index("jobs_state", table_name="jobs")
    op.drop_table("jobs")
