"""Jobs for the analysis tests: one written the way collectors write it (``make_job``, through the store and
the BatchWriter thread), one built in memory (``job_data``), findings, the analysis document's keys, and the
ai-toolkit config that recommendations edit. Imported by test modules as ``sample_jobs`` (tests/ is on
sys.path through its conftest.py)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.store import Store
from runlens.store.writer import BatchWriter


T0 = 1_760_000_000.0


CONTRACT_KEYS = {"schema_version", "generated_at", "runlens_version", "job", "summary", "recommendations",
                 "log_errors", "metrics_timeline", "monitoring_cost", "hangs", "environment"}


SUMMARY_KEYS = {"health_score", "peak_memory_gb", "total_memory_gb", "peak_memory_ratio", "peak_gpu_memory_gb",
                "gpu_total_memory_gb", "training_completed", "status", "status_reason", "steps_completed",
                "last_step", "duration_minutes", "error_count", "warning_count", "goodput",
                "monitoring_overhead_ratio"}


def make_job(store: Store, *, n_steps: int = 200, n_samples: int = 60, status: str = "succeeded",
             ended: bool = True, config: dict[str, Any] | None = None, log_path: str | None = None,
             peak_gb: float = 30.0, extras: bool = True, job_id: str | None = None) -> str:
    """A finished job written the way collectors write it: Store.create_job + the BatchWriter thread."""
    wall = n_steps * 1.0 + 20.0
    fields: dict[str, Any] = {"status": status, "started_at": T0, "config": config,
                              "log_path": log_path, "environment": {"host": "test", "cpu_count": 2}}
    if ended:
        fields["ended_at"] = T0 + wall
    jid = store.create_job(name="engine-test", job_id=job_id, **fields)
    writer = BatchWriter(store, jid, flush_interval=0.05).start()
    for i in range(n_samples):
        used = 20.0 + 5.0 * math.sin(i / 5)
        if i == n_samples // 2:
            used = peak_gb
        writer.put_sample({"timestamp": T0 + i * wall / n_samples, "total_memory_gb": 32.0,
                           "used_memory_gb": used, "available_memory_gb": 32.0 - used, "swap_used_gb": 0.0,
                           "main_process_memory_gb": 8.0, "worker_memory_gb": 2.0, "worker_count": 2})
    for i in range(n_steps):
        row: dict[str, Any] = {"step": i, "timestamp": T0 + 10.0 + (i + 1) * 1.0, "loss": 2.0 / (1 + i / 50),
                               "learning_rate": 1e-4, "gradient_norm": 0.5, "batch_size": 4,
                               "step_time_seconds": 1.0, "data_time_seconds": 0.05}
        if extras and i % 3 == 0:
            row["extras"] = {"tokens_per_s": 100.0 + i, "phase": "train"}
        writer.put_step(row)
    writer.put_event({"timestamp": T0 + 1.0, "event_type": "start", "details": {}})
    if ended:
        writer.put_event({"timestamp": T0 + wall, "event_type": "end", "details": {"status": status}})
    writer.put_costs([
        {"timestamp": T0 + 5, "operation": "step", "calls": 10, "total_seconds": 0.001, "on_training_thread": True},
        {"timestamp": T0 + 50, "operation": "step", "calls": n_steps, "total_seconds": 0.02,
         "on_training_thread": True},
        {"timestamp": T0 + 50, "operation": "thread:runlens-writer", "calls": 0, "total_seconds": 0.3,
         "on_training_thread": False},
    ])
    writer.close()
    return jid


def job_data(*, steps: pd.DataFrame | None = None, samples: pd.DataFrame | None = None,
             events: list[dict[str, Any]] | None = None, costs: pd.DataFrame | None = None,
             job: dict[str, Any] | None = None, **kw: Any) -> JobData:
    ev = pd.DataFrame(events or [], columns=["id", "timestamp", "event_type", "details", "step"])
    return JobData(
        job={"job_id": "j", "status": "succeeded", "started_at": T0, "ended_at": T0 + 1000.0, **(job or {})},
        steps=steps if steps is not None else pd.DataFrame(columns=["step", "timestamp", "step_time_seconds"]),
        samples=samples if samples is not None else pd.DataFrame(columns=["timestamp", "used_memory_gb"]),
        events=ev, costs=costs if costs is not None else pd.DataFrame(), **kw)


def finding(id: str, severity: str = "warning", impact: float | None = None, lever: bool = False,
            value: Any = 1, **kw: Any) -> Finding:
    return Finding(id=id, severity=severity, title=id, action="do it", impact=f"{impact}", category="memory",
                   impact_value=impact, impact_unit="GB", memory_lever=lever, recommended_value=value, **kw)


AITK_YAML = """\
# my LoRA run
job: extension
config:
  name: my_lora   # shown in the UI
  process:
    - type: sd_trainer
      train:
        batch_size: 4      # per step
        lr: 1e-4
      datasets:
        - folder_path: /data/x
          num_workers: 4   # dataloader workers
      model:
        name_or_path: black-forest-labs/FLUX.1-dev
"""
