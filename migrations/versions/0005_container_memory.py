"""The job's memory cgroup on system samples: the container's limit, its working set and its OOM kills.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = (
    ("container_memory_limit_gb", sa.Float),
    ("container_memory_working_set_gb", sa.Float),
    ("container_oom_kills", sa.Integer),
)


def upgrade() -> None:
    with op.batch_alter_table("metrics_samples") as batch:
        for name, kind in COLUMNS:
            batch.add_column(sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("metrics_samples") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
