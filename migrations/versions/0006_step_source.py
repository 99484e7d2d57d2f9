"""Where a step came from: ``monitor`` (the training loop called runlens) or ``output`` (runlens collect read it from
the progress lines the child printed). Existing rows were all the Monitor's.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("step_metrics") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=True, server_default="monitor"))


def downgrade() -> None:
    with op.batch_alter_table("step_metrics") as batch:
        batch.drop_column("source")
