"""1-minute and 1-hour rollups of samples.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLUP_TABLES = ("samples_1m", "samples_1h")


def _rollup_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
        sa.Column("bucket_ms", sa.BigInteger, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("temp_n", sa.Integer, nullable=False),
        sa.Column("temp_min", sa.SmallInteger),
        sa.Column("temp_max", sa.SmallInteger),
        sa.Column("temp_sum", sa.BigInteger),
        sa.Column("mem_max", sa.Integer),
        sa.Column("util_n", sa.Integer, nullable=False),
        sa.Column("util_sum", sa.BigInteger),
        sa.Column("power_n", sa.Integer, nullable=False),
        sa.Column("power_sum", sa.BigInteger),
        sa.Column("power_max", sa.Integer),
        sa.Column("reasons", sa.BigInteger),
        sa.Column("state_max", sa.SmallInteger, nullable=False),
    ]


def upgrade() -> None:
    for name in ROLLUP_TABLES:
        op.create_table(name, *_rollup_columns(), sqlite_with_rowid=False)
    op.create_table(
        "rollup_progress",
        sa.Column("gpu_id", sa.Integer, sa.ForeignKey("gpus.id"), primary_key=True),
        sa.Column("resolution", sa.String(8), primary_key=True),
        sa.Column("done_until_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollup_progress")
    for name in reversed(ROLLUP_TABLES):
        op.drop_table(name)
