"""One sampler per host per database: the claim a sampling process holds on its host.

A row per host, written by the process that samples it (``serve``, ``sampler``, or
``GPUManager``): who holds it (a random owner id, the machine and pid), since when, and a
heartbeat renewed every few seconds. A claim whose heartbeat is older than its
``stale_after_ms``, or whose process is gone from the same machine, may be taken over.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sampler_claims",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("node", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process", sa.String(32), nullable=False),
        sa.Column("acquired_ms", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_ms", sa.BigInteger, nullable=False),
        sa.Column("stale_after_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sampler_claims")
