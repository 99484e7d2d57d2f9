"""The original data model: jobs, metrics samples, training events, step metrics, analysis reports.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("job_id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("status_reason", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("exit_code", sa.Integer),
        sa.Column("exit_signal", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("argv", sa.JSON),
        sa.Column("config", sa.JSON),
        sa.Column("config_dialect", sa.String(32)),
        sa.Column("config_path", sa.Text),
        sa.Column("log_path", sa.Text),
        sa.Column("runlens_version", sa.String(32)),
        sa.Column("world_size", sa.Integer),
        sa.PrimaryKeyConstraint("job_id", name="pk_jobs"),
    )
    op.create_table(
        "metrics_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("total_memory_gb", sa.Float),
        sa.Column("used_memory_gb", sa.Float),
        sa.Column("available_memory_gb", sa.Float),
        sa.Column("swap_used_gb", sa.Float),
        sa.Column("main_process_memory_gb", sa.Float),
        sa.Column("worker_memory_gb", sa.Float),
        sa.Column("worker_count", sa.Integer),
        sa.Column("gpu_memory_used_gb", sa.Float),
        sa.Column("gpu_utilization_percent", sa.Float),
        sa.Column("cpu_utilization_percent", sa.Float),
        sa.Column("host", sa.String(255)),
        sa.Column("rank", sa.Integer),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_metrics_samples_job_id_jobs",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_metrics_samples"),
    )
    op.create_index("ix_metrics_samples_job_id_timestamp", "metrics_samples", ["job_id", "timestamp"])
    op.create_table(
        "training_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON),
        sa.Column("memory_snapshot_id", sa.Integer),
        sa.Column("host", sa.String(255)),
        sa.Column("rank", sa.Integer),
        sa.Column("step", sa.Integer),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_training_events_job_id_jobs",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["memory_snapshot_id"], ["metrics_samples.id"],
                                name="fk_training_events_memory_snapshot_id_metrics_samples", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_training_events"),
    )
    op.create_index("ix_training_events_job_id_timestamp", "training_events", ["job_id", "timestamp"])
    op.create_table(
        "step_metrics",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("loss", sa.Float),
        sa.Column("batch_size", sa.Integer),
        sa.Column("gradient_norm", sa.Float),
        sa.Column("learning_rate", sa.Float),
        sa.Column("step_time_seconds", sa.Float),
        sa.Column("data_time_seconds", sa.Float),
        sa.Column("rank", sa.Integer),
        sa.Column("tokens", sa.Float),
        sa.Column("extras", sa.JSON),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_step_metrics_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_step_metrics"),
    )
    op.create_index("ix_step_metrics_job_id_step", "step_metrics", ["job_id", "step"])
    op.create_index("ix_step_metrics_job_id_timestamp", "step_metrics", ["job_id", "timestamp"])
    op.create_table(
        "analysis_reports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("summary", sa.JSON),
        sa.Column("recommendations", sa.JSON),
        sa.Column("log_errors", sa.JSON),
        sa.Column("peak_memory_gb", sa.Float),
        sa.Column("health_score", sa.String(16)),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.job_id"], name="fk_analysis_reports_job_id_jobs",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_analysis_reports"),
    )
    op.create_index("ix_analysis_reports_job_id_created_at", "analysis_reports", ["job_id", "created_at"])


def downgrade() -> None:
    for table in ("analysis_reports", "step_metrics", "training_events", "metrics_samples", "jobs"):
        op.drop_table(table)
