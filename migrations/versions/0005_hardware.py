"""compute processes, throttle-time counters and XID errors.

XID errors are ``xid`` events in the existing ``events`` table: no table of their own.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gpu_processes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("used_memory_mib", sa.Integer),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("ended_ms", sa.BigInteger),
    )
    op.create_index("ix_gpu_processes_gpu_ended", "gpu_processes", ["gpu_id", "ended_ms"])
    op.create_index("ix_gpu_processes_gpu_first_seen", "gpu_processes",
                    ["gpu_id", "first_seen_ms"])
    op.create_table(
        "throttle_counters",
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
        sa.Column("ts_ms", sa.BigInteger, primary_key=True),
        sa.Column("power_cap_ns", sa.BigInteger),
        sa.Column("sw_thermal_ns", sa.BigInteger),
        sa.Column("hw_thermal_ns", sa.BigInteger),
        sa.Column("power_brake_ns", sa.BigInteger),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("throttle_counters")
    op.drop_index("ix_gpu_processes_gpu_first_seen", table_name="gpu_processes")
    op.drop_index("ix_gpu_processes_gpu_ended", table_name="gpu_processes")
    op.drop_table("gpu_processes")
