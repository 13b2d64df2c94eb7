"""Alert webhooks: each webhook's cursor and retry state, and the delivery log.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("url", sa.String(300), nullable=False),
        sa.Column("kinds", sa.JSON, nullable=False),
        sa.Column("gpus", sa.JSON),
        sa.Column("signed", sa.Boolean, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("cursor_event_id", sa.BigInteger, nullable=False),
        sa.Column("pending_event_id", sa.BigInteger),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger),
        sa.Column("last_attempt_ms", sa.BigInteger),
        sa.Column("last_status", sa.String(16)),
        sa.Column("last_http_status", sa.SmallInteger),
        sa.Column("last_error", sa.String(200)),
        sa.Column("last_delivered_ms", sa.BigInteger),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("host", "name", name="uq_webhooks_host_name"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("webhook_id", sa.Integer, sa.ForeignKey("webhooks.id"), nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("ts_ms", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("http_status", sa.SmallInteger),
        sa.Column("error", sa.String(200)),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("next_retry_ms", sa.BigInteger),
        sa.CheckConstraint("status IN ('delivered', 'failed', 'rejected', 'gave_up')",
                           name="ck_webhook_deliveries_status"),
    )
    op.create_index("ix_webhook_deliveries_webhook", "webhook_deliveries",
                    ["webhook_id", "id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"])
    op.create_index("ix_webhook_deliveries_ts", "webhook_deliveries", ["ts_ms"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_ts", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_event", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_webhook", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
