"""What a lease covers: the processes (pids), Slurm job and container it is held for.

The sampler compares the device memory those processes use with what the lease reserved
(``lease_exceeded``) and the memory of processes no lease covers with the GPU's lease
capacity (``unleased_usage``); see docs/leases.md. All three are optional: a lease that
names nothing covers no process.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN (SQLite >= 3.35 has both): the table, its partial unique index
    # and its rows stay as they are.
    op.add_column("leases", sa.Column("pids", sa.JSON))
    op.add_column("leases", sa.Column("slurm_job", sa.String(64)))
    op.add_column("leases", sa.Column("container", sa.String(128)))


def downgrade() -> None:
    op.drop_column("leases", "container")
    op.drop_column("leases", "slurm_job")
    op.drop_column("leases", "pids")
