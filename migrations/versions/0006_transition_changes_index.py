"""An index for the last transition of a given kind per GPU (throttle advice).

"When did this GPU last leave THROTTLED for a cool state?" is one max() seek per (from, to)
pair on (gpu_id, from_state, to_state, ts_ms); without it, the search walked back through
every transition of a GPU that never had one of that kind, and status grew with the log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_transitions_change", "transitions",
                    ["gpu_id", "from_state", "to_state", "ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_transitions_change", table_name="transitions")
