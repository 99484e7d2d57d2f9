"""The DataLoader workers' own CPU use (the sum over the workers, 100 = one core): the data-loading model tells
CPU-bound loading from loading that waits on I/O with it. The host's CPU use minus the main process's cannot,
on a machine other jobs share. Older rows have none.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metrics_samples") as batch:
        batch.add_column(sa.Column("worker_cpu_percent", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metrics_samples") as batch:
        batch.drop_column("worker_cpu_percent")
