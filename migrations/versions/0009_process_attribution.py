"""who runs each GPU process and where: uid, user, Slurm job, container, pod, systemd unit.

Nullable columns of gpu_processes (NULL: unknown, or recorded before this revision), read
from /proc by gpuhistory/sampling/procinfo.py, with indexes for the questions asked of them
("which GPUs did job 4711 use", "what did alice run").

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("uid", sa.Integer),
    ("user_name", sa.String(64)),
    ("slurm_job_id", sa.String(32)),
    ("slurm_step", sa.String(32)),
    ("container_id", sa.String(64)),
    ("pod_uid", sa.String(64)),
    ("systemd_unit", sa.String(255)),
)


def upgrade() -> None:
    with op.batch_alter_table("gpu_processes") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    op.create_index("ix_gpu_processes_slurm_job", "gpu_processes", ["slurm_job_id"])
    op.create_index("ix_gpu_processes_user", "gpu_processes", ["user_name"])


def downgrade() -> None:
    op.drop_index("ix_gpu_processes_user", table_name="gpu_processes")
    op.drop_index("ix_gpu_processes_slurm_job", table_name="gpu_processes")
    with op.batch_alter_table("gpu_processes") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
