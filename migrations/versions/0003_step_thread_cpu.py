"""The training thread's CPU clock on step rows, so analysis can tell a busy rank from a waiting one.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_metrics") as batch:
        batch.add_column(sa.Column("thread_cpu_seconds", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("step_metrics") as batch:
        batch.drop_column("thread_cpu_seconds")
