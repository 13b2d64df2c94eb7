"""Fleet maintenance claimed once per period: the ``maintenance_runs`` table.

One row per fleet-wide maintenance job (rollups, incident detection, retention). A sampler
whose scheduler fires the job runs it only when it claims the job's current period with a
compare-and-set ``UPDATE ... WHERE next_due_ms <= now``; the row records the holder, the
period's end, the run in progress (``busy_until_ms``) and the last outcome. Plain rows and
one-statement claims: no advisory locks, no session state, so it works behind a
transaction-pooling PgBouncer and on SQLite.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "maintenance_runs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False),
        sa.Column("period_ms", sa.BigInteger, nullable=False),
        sa.Column("next_due_ms", sa.BigInteger, nullable=False),
        sa.Column("busy_until_ms", sa.BigInteger),
        sa.Column("started_ms", sa.BigInteger, nullable=False),
        sa.Column("finished_ms", sa.BigInteger),
        sa.Column("last_error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("maintenance_runs")
