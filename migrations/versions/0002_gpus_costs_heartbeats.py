"""Per-GPU samples, monitoring cost, heartbeats, the job's settings and environment, allocator and PSI columns.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

def _job_columns() -> list[sa.Column]:
    return [
        sa.Column("settings", sa.JSON),
        sa.Column("environment", sa.JSON),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("progress_at", sa.Float),
        sa.Column("last_step", sa.Integer),
    ]


def _sample_columns() -> list[sa.Column]:
    return [
        sa.Column("swap_in_gb_per_s", sa.Float),
        sa.Column("gpu_memory_total_gb", sa.Float),
        sa.Column("cuda_allocated_gb", sa.Float),
        sa.Column("cuda_reserved_gb", sa.Float),
        sa.Column("cuda_max_allocated_gb", sa.Float),
        sa.Column("memory_pressure_some_avg10", sa.Float),
        sa.Column("memory_pressure_full_avg10", sa.Float),
        sa.Column("unified_memory", sa.Boolean),
        sa.Column("process_cpu_percent", sa.Float),
    ]


def _report_columns() -> list[sa.Column]:
    return [sa.Column("analysis", sa.JSON), sa.Column("runlens_version", sa.String(32))]


def upgrade() -> None:
    for table, columns in (("jobs", _job_columns()), ("metrics_samples", _sample_columns()),
                           ("analysis_reports", _report_columns())):
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.add_column(column)
    op.create_table(
        "gpu_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sample_id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("device_index", sa.Integer, nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("memory_used_gb", sa.Float),
        sa.Column("memory_total_gb", sa.Float),
        sa.Column("utilization_percent", sa.Float),
        sa.Column("temperature_c", sa.Float),
        sa.Column("power_w", sa.Float),
        sa.ForeignKeyConstraint(["sample_id"], ["metrics_samples.id"], name="fk_gpu_samples_sample_id_metrics_samples",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_gpu_samples_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_gpu_samples"),
    )
    op.create_index("ix_gpu_samples_sample_id", "gpu_samples", ["sample_id"])
    op.create_index("ix_gpu_samples_job_id_timestamp", "gpu_samples", ["job_id", "timestamp"])
    op.create_table(
        "monitoring_costs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("operation", sa.String(128), nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("total_seconds", sa.Float, nullable=False),
        sa.Column("on_training_thread", sa.Boolean, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("rank", sa.Integer),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_monitoring_costs_job_id_jobs",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_monitoring_costs"),
    )
    op.create_index("ix_monitoring_costs_job_id_operation", "monitoring_costs", ["job_id", "operation"])


def downgrade() -> None:
    op.drop_table("monitoring_costs")
    op.drop_table("gpu_samples")
    for table, columns in (("analysis_reports", _report_columns()), ("metrics_samples", _sample_columns()),
                           ("jobs", _job_columns())):
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column.name)
