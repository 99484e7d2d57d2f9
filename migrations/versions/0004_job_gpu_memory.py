"""The job's own GPU memory beside the device's: per device on gpu_samples, summed on metrics_samples.

NVML's device figures count every process on the GPU; ``job_gpu_memory_gb`` is what the job's process tree
holds there (NVML's per-process list), null where that list cannot be read (a container without the host's PID
namespace).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("metrics_samples") as batch:
        batch.add_column(sa.Column("job_gpu_memory_gb", sa.Float))
    with op.batch_alter_table("gpu_samples") as batch:
        batch.add_column(sa.Column("job_gpu_memory_gb", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("gpu_samples") as batch:
        batch.drop_column("job_gpu_memory_gb")
    with op.batch_alter_table("metrics_samples") as batch:
        batch.drop_column("job_gpu_memory_gb")
