"""A job loaded for analysis: plain frames and dicts, no database handle.

Rules take a ``JobData`` and return findings, so they are tested by building one by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from runlens.core.settings import Settings


@dataclass
class JobData:
    """Everything recorded about one job.

    Frames (columns as in runlens.store.models; empty frames keep their columns):
        steps:   step_metrics ordered by timestamp; ``extras`` expanded into ``x_<name>`` columns.
        samples: metrics_samples ordered by timestamp.
        gpus:    gpu_samples (per device).
        events:  training_events ordered by timestamp; ``details`` kept as dicts.
        costs:   monitoring_costs, the latest cumulative row per (operation, host, rank).
    """

    job: dict[str, Any]
    steps: pd.DataFrame
    samples: pd.DataFrame
    events: pd.DataFrame
    gpus: pd.DataFrame = field(default_factory=pd.DataFrame)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    log_findings: list[Any] = field(default_factory=list)   # runlens.analyze.logfindings.LogFinding
    config: dict[str, Any] | None = None
    dialect: str = "generic"
    settings: Settings = field(default_factory=Settings)
    now: float | None = None   # analysis time, for jobs still running
    notes: list[str] = field(default_factory=list)   # what loading could not do (no log file, ...), for the report

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])

    def events_of(self, *types: str) -> pd.DataFrame:
        if self.events.empty:
            return self.events
        return self.events[self.events["event_type"].isin(types)]
