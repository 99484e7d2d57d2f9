"""The tables of a runlens store.

Names and columns follow DESIGN.md's data model; columns are added, never renamed or dropped without a
migration. Timestamps are UNIX seconds (REAL); ``_gb`` columns hold GiB (see ``runlens.core.units``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """One training run. ``status`` is one of: running, succeeded, failed, timed_out, never_started."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), default="running")
    status_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    ended_at: Mapped[float | None] = mapped_column(Float, default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    exit_signal: Mapped[int | None] = mapped_column(Integer, default=None)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    argv: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    config_dialect: Mapped[str | None] = mapped_column(String(32), default=None)
    config_path: Mapped[str | None] = mapped_column(Text, default=None)
    log_path: Mapped[str | None] = mapped_column(Text, default=None)
    runlens_version: Mapped[str | None] = mapped_column(String(32), default=None)
    world_size: Mapped[int | None] = mapped_column(Integer, default=None)
    # Added in 0002: what the collectors were told (intervals, hang budgets) and the machine they ran on.
    settings: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, default=None)
    progress_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_step: Mapped[int | None] = mapped_column(Integer, default=None)


class MetricsSample(Base):
    """A system sample: host memory, swap, CPU, the job's processes and its GPUs at one moment."""

    __tablename__ = "metrics_samples"
    __table_args__ = (Index("ix_metrics_samples_job_id_timestamp", "job_id", "timestamp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    timestamp: Mapped[float] = mapped_column(Float)
    total_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    used_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    available_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    swap_used_gb: Mapped[float | None] = mapped_column(Float, default=None)
    main_process_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    worker_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    worker_count: Mapped[int | None] = mapped_column(Integer, default=None)
    gpu_memory_used_gb: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_utilization_percent: Mapped[float | None] = mapped_column(Float, default=None)
    cpu_utilization_percent: Mapped[float | None] = mapped_column(Float, default=None)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    rank: Mapped[int | None] = mapped_column(Integer, default=None)
    # Added in 0002.
    swap_in_gb_per_s: Mapped[float | None] = mapped_column(Float, default=None)
    gpu_memory_total_gb: Mapped[float | None] = mapped_column(Float, default=None)
    cuda_allocated_gb: Mapped[float | None] = mapped_column(Float, default=None)
    cuda_reserved_gb: Mapped[float | None] = mapped_column(Float, default=None)
    cuda_max_allocated_gb: Mapped[float | None] = mapped_column(Float, default=None)
    memory_pressure_some_avg10: Mapped[float | None] = mapped_column(Float, default=None)
    memory_pressure_full_avg10: Mapped[float | None] = mapped_column(Float, default=None)
    unified_memory: Mapped[bool | None] = mapped_column(Boolean, default=None)
    process_cpu_percent: Mapped[float | None] = mapped_column(Float, default=None)
    # Added in 0004: the job's process tree's memory on its GPUs (NVML's per-process list, summed over the
    # devices); null where NVML lists no process of the job (a container in its own PID namespace).
    job_gpu_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    # Added in 0005: the job's memory cgroup (a container, a pod, a Slurm job), whose limit is the wall an OOM
    # kill hits when it is below the host's RAM: the binding limit (None when no cgroup up the tree has one),
    # the working set (usage minus inactive file pages) measured against it, and the cgroup's OOM-kill count.
    container_memory_limit_gb: Mapped[float | None] = mapped_column(Float, default=None)
    container_memory_working_set_gb: Mapped[float | None] = mapped_column(Float, default=None)
    container_oom_kills: Mapped[int | None] = mapped_column(Integer, default=None)
    # Added in 0007: the DataLoader workers' own CPU use, summed (100 = one core).
    worker_cpu_percent: Mapped[float | None] = mapped_column(Float, default=None)


class GpuSample(Base):
    """Per-device detail of a sample, for machines with several GPUs."""

    __tablename__ = "gpu_samples"
    __table_args__ = (Index("ix_gpu_samples_job_id_timestamp", "job_id", "timestamp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("metrics_samples.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    timestamp: Mapped[float] = mapped_column(Float)
    device_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    memory_used_gb: Mapped[float | None] = mapped_column(Float, default=None)
    memory_total_gb: Mapped[float | None] = mapped_column(Float, default=None)
    utilization_percent: Mapped[float | None] = mapped_column(Float, default=None)
    temperature_c: Mapped[float | None] = mapped_column(Float, default=None)
    power_w: Mapped[float | None] = mapped_column(Float, default=None)
    # Added in 0004: the job's own share of memory_used_gb (which counts every process on the device).
    job_gpu_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)


class TrainingEvent(Base):
    """A lifecycle event (start, end, exception, oom, phase_start, hang_suspected, ...) with its memory snapshot."""

    __tablename__ = "training_events"
    __table_args__ = (Index("ix_training_events_job_id_timestamp", "job_id", "timestamp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    timestamp: Mapped[float] = mapped_column(Float)
    event_type: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    memory_snapshot_id: Mapped[int | None] = mapped_column(
        ForeignKey("metrics_samples.id", ondelete="SET NULL"), default=None
    )
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    rank: Mapped[int | None] = mapped_column(Integer, default=None)
    step: Mapped[int | None] = mapped_column(Integer, default=None)


class StepMetric(Base):
    """One optimizer step as the training loop reported it; extra user scalars live in ``extras``."""

    __tablename__ = "step_metrics"
    __table_args__ = (
        Index("ix_step_metrics_job_id_step", "job_id", "step"),
        Index("ix_step_metrics_job_id_timestamp", "job_id", "timestamp"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[float] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    batch_size: Mapped[int | None] = mapped_column(Integer, default=None)
    gradient_norm: Mapped[float | None] = mapped_column(Float, default=None)
    learning_rate: Mapped[float | None] = mapped_column(Float, default=None)
    step_time_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    data_time_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    rank: Mapped[int | None] = mapped_column(Integer, default=None)
    tokens: Mapped[float | None] = mapped_column(Float, default=None)
    extras: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Added in 0003: the rank's training-thread CPU clock (cumulative seconds), read by the writer thread about
    # once per flush and put on the newest step it had then; null on the other rows. CPU time against wall time
    # between two readings says how much of each step the rank computed and how much it waited for the others.
    thread_cpu_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    # Added in 0006: "monitor" (the loop called runlens) or "output" (runlens collect read the step from the
    # progress lines the child printed).
    source: Mapped[str | None] = mapped_column(String(16), default=None, server_default="monitor")


class MonitoringCost(Base):
    """Cumulative cost of one monitoring operation, appended periodically; the latest row per operation wins."""

    __tablename__ = "monitoring_costs"
    __table_args__ = (Index("ix_monitoring_costs_job_id_operation", "job_id", "operation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    timestamp: Mapped[float] = mapped_column(Float)
    operation: Mapped[str] = mapped_column(String(128))
    calls: Mapped[int] = mapped_column(Integer, default=0)
    total_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    on_training_thread: Mapped[bool] = mapped_column(Boolean, default=True)
    host: Mapped[str | None] = mapped_column(String(255), default=None)
    rank: Mapped[int | None] = mapped_column(Integer, default=None)


class AnalysisReport(Base):
    """One run of ``runlens analyze``: the analysis JSON split as DESIGN.md lists, plus the whole document."""

    __tablename__ = "analysis_reports"
    __table_args__ = (Index("ix_analysis_reports_job_id_created_at", "job_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.job_id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    recommendations: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    log_errors: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    peak_memory_gb: Mapped[float | None] = mapped_column(Float, default=None)
    health_score: Mapped[str | None] = mapped_column(String(16), default=None)
    # Added in 0002: the full document, so `runlens report` re-renders without re-analysing.
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    runlens_version: Mapped[str | None] = mapped_column(String(32), default=None)
