"""The core log: gpus, samples, transitions, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gpus",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("gpu_index", sa.SmallInteger, nullable=False),
        sa.Column("uuid", sa.String(96), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("memory_total_mib", sa.Integer),
        sa.Column("power_limit_w", sa.Float),
        sa.Column("slowdown_temp_c", sa.SmallInteger),
        sa.Column("shutdown_temp_c", sa.SmallInteger),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("host", "uuid", name="uq_gpus_host_uuid"),
    )
    op.create_index("ix_gpus_host_index", "gpus", ["host", "gpu_index"])
    op.create_table(
        "samples",
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
        sa.Column("ts_ms", sa.BigInteger, primary_key=True),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("temperature_c", sa.SmallInteger),
        sa.Column("memory_temperature_c", sa.SmallInteger),
        sa.Column("memory_used_mib", sa.Integer),
        sa.Column("utilization_pct", sa.SmallInteger),
        sa.Column("power_dw", sa.Integer),
        sa.Column("sm_clock_mhz", sa.SmallInteger),
        sa.Column("mem_clock_mhz", sa.SmallInteger),
        sa.Column("clock_event_reasons", sa.BigInteger),
        sa.Column("pstate", sa.SmallInteger),
        sa.Column("fan_pct", sa.SmallInteger),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "transitions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.SmallInteger),
        sa.Column("to_state", sa.SmallInteger, nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("temperature_c", sa.SmallInteger),
        sa.Column("memory_percent", sa.Float),
    )
    op.create_index("ix_transitions_gpu_ts", "transitions", ["gpu_id", "ts_ms"])
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id")),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_kind_id", "events", ["kind", "id"])
    op.create_index("ix_events_gpu_id", "events", ["gpu_id", "id"])
    op.create_index("ix_events_ts", "events", ["ts_ms"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("transitions")
    op.drop_table("samples")
    op.drop_table("gpus")
