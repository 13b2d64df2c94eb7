"""The sampler claim names the gpuhistory version of the process holding it.

``GET /api/fleet/hosts`` shows each host's sampler version, so a fleet half upgraded is
visible. Claims written before this revision (or by an older sampler) have none (NULL).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sampler_claims") as batch:
        batch.add_column(sa.Column("version", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sampler_claims") as batch:
        batch.drop_column("version")
