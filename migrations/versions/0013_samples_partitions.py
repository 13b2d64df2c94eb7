"""Samples on PostgreSQL: range-partitioned by day, columns in alignment order, samples_kept.

PostgreSQL: the existing ``samples`` is renamed, a partitioned ``samples`` is created with
the columns in alignment order (8-byte, 4-byte, then 2-byte: no padding between them) and
the same primary key (gpu_id, ts_ms), which includes the partition key as PostgreSQL
requires; a DEFAULT partition, a partition for every day that has rows and for today and
the next days; the rows are copied over (each lands in its day) and the old table is
dropped. ``samples_kept`` takes the incident windows of partitions that retention drops.
The copy takes as long as the table is big and needs its size again in free disk.

SQLite: nothing changes (its records have no alignment; the table stays as it is).

Downgrade (PostgreSQL): one plain ``samples`` table again, holding the partitions' rows and
the kept rows.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from gpuhistory.storage import partitions

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns as this migration leaves them (frozen here: the schema module may move on).
COLUMNS = ("ts_ms, clock_event_reasons, gpu_id, memory_used_mib, power_dw, memory_reserved_mib, "
           "state, temperature_c, memory_temperature_c, utilization_pct, sm_clock_mhz, "
           "mem_clock_mhz, pstate, fan_pct")


def _columns() -> list[sa.Column]:  # type: ignore[type-arg]
    """The columns in alignment order (as gpuhistory/storage/schema.py has them)."""
    return [
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("clock_event_reasons", sa.BigInteger),
        sa.Column("gpu_id", sa.Integer, nullable=False),
        sa.Column("memory_used_mib", sa.Integer),
        sa.Column("power_dw", sa.Integer),
        sa.Column("memory_reserved_mib", sa.Integer),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("temperature_c", sa.SmallInteger),
        sa.Column("memory_temperature_c", sa.SmallInteger),
        sa.Column("utilization_pct", sa.SmallInteger),
        sa.Column("sm_clock_mhz", sa.SmallInteger),
        sa.Column("mem_clock_mhz", sa.SmallInteger),
        sa.Column("pstate", sa.SmallInteger),
        sa.Column("fan_pct", sa.SmallInteger),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE samples RENAME TO samples_unpartitioned")
    op.execute("ALTER TABLE samples_unpartitioned RENAME CONSTRAINT samples_pkey "
               "TO samples_unpartitioned_pkey")
    op.create_table(
        "samples", *_columns(),
        sa.ForeignKeyConstraint(["gpu_id"], ["gpus.id"], name="samples_gpu_id_fkey"),
        sa.PrimaryKeyConstraint("gpu_id", "ts_ms", name="samples_pkey"),
        postgresql_partition_by="RANGE (ts_ms)",
    )
    op.execute(f"CREATE TABLE {partitions.DEFAULT_PARTITION} PARTITION OF samples DEFAULT")
    days = set(bind.execute(sa.text(
        f"SELECT DISTINCT floor(ts_ms / {partitions.DAY_MS}.0)::bigint "
        "FROM samples_unpartitioned")).scalars())
    today = partitions.day_of(int(time.time() * 1000))
    days.update(range(today, today + partitions.AHEAD_DAYS + 1))
    for day in sorted(days):
        if partitions.FIRST_DAY <= day <= partitions.LAST_DAY:
            partitions.create_day(bind, day)
    op.execute(f"INSERT INTO samples ({COLUMNS}) SELECT {COLUMNS} FROM samples_unpartitioned")
    op.drop_table("samples_unpartitioned")
    op.create_table(
        "samples_kept", *_columns(),
        sa.PrimaryKeyConstraint("gpu_id", "ts_ms", name="samples_kept_pkey"),
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE samples RENAME TO samples_partitioned")
    op.execute("ALTER TABLE samples_partitioned RENAME CONSTRAINT samples_pkey "
               "TO samples_partitioned_pkey")
    op.create_table(  # as migrations 0001 and 0010 made it
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
        sa.Column("memory_reserved_mib", sa.Integer),
    )
    op.execute(f"INSERT INTO samples ({COLUMNS}) SELECT {COLUMNS} FROM samples_partitioned")
    op.execute(f"INSERT INTO samples ({COLUMNS}) SELECT {COLUMNS} FROM samples_kept "
               "ON CONFLICT (gpu_id, ts_ms) DO NOTHING")
    op.drop_table("samples_kept")
    op.execute("DROP TABLE samples_partitioned")  # its partitions with it
