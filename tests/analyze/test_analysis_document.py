"""The analysis document: log errors against memory, error counts, the ranked recommendations with one primary
memory lever, JSON safety, dialect paths for concept findings, and the document of an empty job."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from sample_jobs import CONTRACT_KEYS, SUMMARY_KEYS, T0, finding, job_data

from runlens.analyze import registry
from runlens.analyze.analysis import build_analysis, error_counts, json_safe, memory_at, rank_recommendations
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData


# -- log errors and counts ------------------------------------------------------------------------------

def test_memory_at_uses_the_nearest_sample_within_two_intervals() -> None:
    samples = pd.DataFrame({"timestamp": T0 + np.arange(10) * 5.0, "used_memory_gb": np.arange(10) * 1.0})
    data = job_data(samples=samples)
    got = memory_at(data, [T0 + 11.0, T0 + 13.0, T0 - 9.0, T0 + 45 + 10.0, T0 + 45 + 10.5, None, float("nan")])
    assert got == [2.0, 3.0, 0.0, 9.0, None, None, None]


class _LF:
    def __init__(self, level: str, ts: float | None, count: int = 1) -> None:
        self.level, self.timestamp, self.count = level, ts, count

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "timestamp": self.timestamp, "count": self.count, "category": "x",
                "message": "m", "text": "m", "line_number": 1, "timestamp_source": "line", "details": {}}


def test_error_count_folds_an_event_and_its_log_traceback() -> None:
    events = [{"timestamp": T0 + 100, "event_type": "exception", "details": {}},   # same as the log error at +98
              {"timestamp": T0 + 500, "event_type": "oom", "details": {}},         # not in the log
              {"timestamp": T0 + 600, "event_type": "buffer_overflow", "details": {}}]
    data = job_data(events=events, log_findings=[_LF("error", T0 + 98), _LF("warning", None, count=3)])
    assert error_counts(data) == (2, 4)


# -- recommendations ------------------------------------------------------------------------------------

def test_one_primary_memory_lever_the_largest_feasible() -> None:
    recs = rank_recommendations([
        finding("m.batch", "critical", 3.0, lever=True),
        finding("m.quant", "warning", 9.0, lever=True),
        finding("m.ema", "warning", 20.0, lever=True, value=None),       # no concrete value: not feasible
        finding("m.res", "warning", 12.0, lever=True, evidence={"feasible": False}),
        finding("t.lr", "warning", 50.0),
        finding("m.quant", "info", 1.0, lever=True),                     # duplicate id: the best-ranked wins
    ])
    ids = [r.id for r in recs]
    assert ids.count("m.quant") == 1
    primary = [r for r in recs if r.primary]
    assert [p.id for p in primary] == ["m.quant"] and primary[0].severity == "warning"
    assert set(primary[0].alternatives) == {"m.batch", "m.ema", "m.res"}
    # the primary goes ahead of its alternatives; other findings keep their rank
    assert ids.index("m.quant") < ids.index("m.batch") and ids[0] == "m.quant"


def test_no_primary_without_a_feasible_lever() -> None:
    recs = rank_recommendations([finding("m.a", impact=None, lever=True), finding("x", impact=5.0)])
    assert not any(r.primary for r in recs)


# -- the whole document ---------------------------------------------------------------------------------

def test_document_is_json_safe_with_nan_and_inf_everywhere(only_test_rules: dict[str, registry.Rule]) -> None:
    @registry.rule("test.nan", "test")
    def _nan_rule(data: JobData) -> list[Finding]:
        return [finding("test.nan", "warning", float("nan"), evidence={"x": np.float32("inf"),
                                                                       "arr": np.array([1.0, np.nan])})]

    n = 50
    steps = pd.DataFrame({"step": np.arange(n), "timestamp": T0 + 1 + np.arange(n), "loss": np.nan,
                          "step_time_seconds": 1.0, "gradient_norm": np.inf})
    samples = pd.DataFrame({"timestamp": T0 + np.arange(n), "used_memory_gb": np.nan, "total_memory_gb": np.inf})
    doc = build_analysis(job_data(steps=steps, samples=samples, job={"ended_at": T0 + 60},
                                  log_findings=[_LF("error", float("nan"))]))
    text = json.dumps(doc, allow_nan=False)
    assert CONTRACT_KEYS <= set(doc) and SUMMARY_KEYS <= set(doc["summary"])
    assert doc["recommendations"][0]["impact_value"] is None
    assert doc["summary"]["health_score"] == "warning" and "NaN" not in text
    assert json_safe({"a": (np.int64(3), {1: pd.NaT})}) == {"a": [3, {"1": None}]}


def test_findings_naming_a_concept_get_the_dialects_path(only_test_rules: dict[str, registry.Rule]) -> None:
    @registry.rule("test.concept", "test")
    def _concept(data: JobData) -> list[Finding]:
        return [Finding(id="test.concept", severity="info", title="t", action="a", impact="i", category="throughput",
                        config_key="num_workers", recommended_value=2)]

    hf = {"per_device_train_batch_size": 16, "learning_rate": 3e-4}
    doc = build_analysis(job_data(config=hf, dialect="huggingface"))
    rec = doc["recommendations"][0]
    assert rec["config_path"] == "TrainingArguments.dataloader_num_workers"
    assert (rec["current_value"], rec["current_value_source"], rec["recommended_value"]) == (0, "default", 2)


def test_empty_job_analyses(only_test_rules: dict[str, registry.Rule]) -> None:
    """A job that never started anything: no steps, samples or events."""
    doc = build_analysis(job_data(job={"status": "never_started", "ended_at": None}))
    json.dumps(doc, allow_nan=False)
    s = doc["summary"]
    assert s["steps_completed"] == 0 and s["last_step"] is None and s["peak_memory_gb"] is None
    assert s["goodput"]["ratio"] is None and doc["metrics_timeline"]["memory"] == {}
