"""overheat incidents and the incident detector's watermark.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), nullable=False),
        sa.Column("start_ms", sa.BigInteger, nullable=False),
        sa.Column("end_ms", sa.BigInteger),
        sa.Column("last_sample_ms", sa.BigInteger, nullable=False),
        sa.Column("peak_temp_c", sa.SmallInteger, nullable=False),
        sa.Column("peak_ms", sa.BigInteger, nullable=False),
        sa.Column("temp_sum", sa.BigInteger, nullable=False),
        sa.Column("temp_n", sa.Integer, nullable=False),
        sa.Column("above_critical_ms", sa.BigInteger, nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("peak_power_dw", sa.Integer),
        sa.Column("clock_event_reasons", sa.BigInteger, nullable=False),
        sa.Column("temp_throttle", sa.Float, nullable=False),
        sa.Column("hysteresis_c", sa.Float, nullable=False),
        sa.Column("temp_critical", sa.Float, nullable=False),
        sa.Column("detected_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("gpu_id", "start_ms", name="uq_incidents_gpu_start"),
        sa.CheckConstraint("severity IN ('overheat', 'severe')", name="ck_incidents_severity"),
    )
    op.create_index("ix_incidents_start", "incidents", ["start_ms"])
    op.create_table(
        "incident_progress",
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True,
                  autoincrement=False),
        sa.Column("scanned_until_ms", sa.BigInteger),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("thresholds", sa.String(64)),
    )


def downgrade() -> None:
    op.drop_table("incident_progress")
    op.drop_index("ix_incidents_start", table_name="incidents")
    op.drop_table("incidents")
