"""The driver-reserved device memory of each sample (``samples.memory_reserved_mib``).

Memory is recorded as ``nvidia-smi`` shows it, from NVML's v2 memory info: used without
what the driver reserves, and the reservation as its own nullable column (NULL where the
driver has only v1 memory info, and in samples recorded before this revision, whose used
memory includes the reservation).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("samples", sa.Column("memory_reserved_mib", sa.Integer, nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a batch copy of samples would be
    # as long as the log and lose its WITHOUT ROWID layout.
    op.drop_column("samples", "memory_reserved_mib")
