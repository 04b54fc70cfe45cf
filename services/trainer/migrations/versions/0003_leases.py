"""Job leases between Trainer replicas: the replica running a job (`lease_owner`, its
replica_id) holds it until `lease_expires` (UTC seconds by the DATABASE's clock, so replicas'
clocks never have to agree) and renews it while it runs; another replica takes the job over once
the lease has expired. `crashes` counts worker crashes since the job was last started by a
person (max_attempts holds across replicas, not per process).

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
    # jobs active before leases existed have no owner and no expiry: any replica may take them
    op.add_column("jobs", sa.Column("lease_owner", sa.Text(), nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("lease_expires", sa.Float()))
    op.add_column("jobs", sa.Column("crashes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("jobs", "crashes")
    op.drop_column("jobs", "lease_expires")
    op.drop_column("jobs", "lease_owner")
