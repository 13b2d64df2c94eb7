"""GPU-memory leases: rows with an expiry that survive restarts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_LEASE = sa.text("released_ms IS NULL")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("allocation_id", sa.String(128), nullable=False),
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("ttl_ms", sa.BigInteger, nullable=False),
        sa.Column("granted_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("released_ms", sa.BigInteger),
        sa.Column("release_reason", sa.String(16)),
        sa.CheckConstraint("memory_mib > 0", name="ck_leases_memory_positive"),
        sa.CheckConstraint("release_reason IN ('released', 'expired')",
                           name="ck_leases_release_reason"),
    )
    op.create_index("uq_leases_host_allocation_active", "leases", ["host", "allocation_id"],
                    unique=True, sqlite_where=ACTIVE_LEASE, postgresql_where=ACTIVE_LEASE)
    op.create_index("ix_leases_gpu_released", "leases", ["gpu_id", "released_ms"])
    op.create_index("ix_leases_gpu_granted", "leases", ["gpu_id", "granted_ms"])


def downgrade() -> None:
    op.drop_index("ix_leases_gpu_granted", table_name="leases")
    op.drop_index("ix_leases_gpu_released", table_name="leases")
    op.drop_index("uq_leases_host_allocation_active", table_name="leases")
    op.drop_table("leases")
