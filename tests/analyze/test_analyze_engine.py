"""The analysis machinery around the rules: loading a job into frames, goodput, the drawn timeline, log errors
against memory, JSON safety, the primary memory lever, the stored analysis, config editing, and the
``analyze`` / ``report`` / ``recommend`` commands end to end on real SQLite files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from runlens.analyze import registry
from runlens.analyze.analysis import build_analysis, error_counts, json_safe, memory_at, rank_recommendations
from runlens.analyze.findings import Finding
from runlens.analyze.health import LOST_PARTS, goodput, health_score, run_window
from runlens.analyze.jobdata import JobData
from runlens.analyze.load import job_settings, load_job
from runlens.analyze.timeline import build_timeline
from runlens.cli import cli
from runlens.core.configpath import format_path, get_path, parse_path, set_path
from runlens.core.settings import Settings
from runlens.report.tuned_config import apply_recommendations
from runlens.store import Store
from runlens.store.frames import latest_analysis, load_frames, save_analysis
from runlens.store.writer import BatchWriter

T0 = 1_760_000_000.0
CONTRACT_KEYS = {"schema_version", "generated_at", "runlens_version", "job", "summary", "recommendations",
                 "log_errors", "metrics_timeline", "monitoring_cost", "hangs", "environment"}
SUMMARY_KEYS = {"health_score", "peak_memory_gb", "total_memory_gb", "peak_memory_ratio", "peak_gpu_memory_gb",
                "gpu_total_memory_gb", "training_completed", "status", "status_reason", "steps_completed",
                "last_step", "duration_minutes", "error_count", "warning_count", "goodput",
                "monitoring_overhead_ratio"}


# -- helpers ----------------------------------------------------------------------------------------------

@pytest.fixture
def only_test_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, registry.Rule]]:
    """Run only the rules a test registers: the machinery is under test here, not the real rules."""
    rules: dict[str, registry.Rule] = {}
    monkeypatch.setattr(registry, "_RULES", rules)
    monkeypatch.setattr(registry, "_load_builtin_rules", lambda: None)
    yield rules


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


# -- frames -----------------------------------------------------------------------------------------------

def test_frames_round_trip_with_extras_events_and_latest_costs(store: Store) -> None:
    jid = make_job(store, n_steps=300, n_samples=40)
    f = load_frames(store, jid)
    assert len(f.steps) == 300 and len(f.samples) == 40 and list(f.events["event_type"]) == ["start", "end"]
    assert f.steps["step"].dtype == np.int64 and f.steps["timestamp"].is_monotonic_increasing
    assert f.steps["loss"].iloc[0] == pytest.approx(2.0)
    # extras: numbers become a float column, strings stay strings, rows without extras are NaN/None.
    assert f.steps["x_tokens_per_s"].iloc[3] == pytest.approx(103.0)
    assert math.isnan(f.steps["x_tokens_per_s"].iloc[1])
    assert f.steps["x_phase"].iloc[0] == "train" and pd.isna(f.steps["x_phase"].iloc[1])
    assert f.samples["used_memory_gb"].max() == pytest.approx(30.0)
    assert f.events["details"].iloc[1] == {"status": "succeeded"}
    costs = f.costs.set_index("operation")
    assert costs.loc["step", "calls"] == 300 and costs.loc["step", "total_seconds"] == pytest.approx(0.02)
    assert not costs.loc["thread:runlens-writer", "on_training_thread"]


def test_frames_without_extras_have_no_x_columns_and_empty_tables_keep_columns(store: Store) -> None:
    jid = make_job(store, n_steps=5, n_samples=0, extras=False)
    f = load_frames(store, jid)
    assert not [c for c in f.steps.columns if c.startswith("x_")]
    assert f.samples.empty and "used_memory_gb" in f.samples.columns
    assert f.gpus.empty and "memory_used_gb" in f.gpus.columns


def test_frames_of_a_job_still_being_written(store: Store) -> None:
    """A running job (no end event) is read while its writer keeps appending: each read is a consistent
    snapshot, and the next read sees the new rows."""
    jid = store.create_job(name="live", started_at=T0)
    writer = BatchWriter(store, jid, flush_interval=0.02).start()
    try:
        for i in range(50):
            writer.put_step({"step": i, "timestamp": T0 + i, "step_time_seconds": 1.0})
        assert writer.flush()
        first = load_frames(store, jid)
        for i in range(50, 120):
            writer.put_step({"step": i, "timestamp": T0 + i, "step_time_seconds": 1.0})
            if i % 10 == 0:
                load_frames(store, jid)   # reads interleaved with commits never fail or tear
        assert writer.flush()
        second = load_frames(store, jid)
    finally:
        writer.close()
    assert len(first.steps) == 50 and len(second.steps) == 120
    assert first.job["status"] == "running" and first.job["ended_at"] is None
    data = load_job(store, jid, now=T0 + 130)
    assert run_window(data)[2] in ("now", "last_seen")


def test_save_and_latest_analysis(store: Store) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    assert latest_analysis(store, jid) is None
    rid1 = save_analysis(store, jid, {"summary": {"health_score": "good", "peak_memory_gb": 1.0}, "n": 1})
    rid2 = save_analysis(store, jid, {"summary": {"health_score": "warning", "peak_memory_gb": 2.0}, "n": 2})
    assert rid2 > rid1
    assert latest_analysis(store, jid)["n"] == 2  # type: ignore[index]
    row = store.rows("analysis_reports", jid, order_by="id", descending=True, limit=1)[0]
    assert row["health_score"] == "warning" and row["peak_memory_gb"] == 2.0 and row["runlens_version"]


def test_settings_come_from_defaults_monitoring_section_then_the_job() -> None:
    config = {"monitoring": {"sample_interval": 2, "memory_warning_threshold": 0.8}}
    job = {"settings": {"sample_interval": 1, "db": "sqlite:///elsewhere.db", "phase_budgets": {"eval": 60}}}
    s = job_settings(job, config)
    assert s.sample_interval == 1.0 and s.memory_warning_threshold == 0.8
    assert s.db == Settings().db and s.phase_budgets == {"eval": 60}
    notes: list[str] = []
    assert job_settings({}, {"monitoring": {"sample_interval": "fast"}}, notes) == Settings() and notes


# -- health and goodput -----------------------------------------------------------------------------------

def test_health_score_is_the_worst_severity() -> None:
    assert health_score([]) == "good"
    assert health_score([finding("a", "info"), finding("b", "warning")]) == "warning"
    assert health_score([finding("a", "critical"), finding("b", "warning")]) == "critical"


def _goodput_job() -> JobData:
    """1000 s of wall: 100 s start-up, 800 one-second steps (0.1 s data wait each), an eval phase of 30 s inside
    a step, a 20 s stall, a hang at the end, and 2 s of monitoring on the training thread."""
    n = 800
    st = np.full(n, 1.0)
    st[400] = 31.0   # the eval phase below runs inside this step
    st[600] = 21.0   # a stall
    ts = T0 + 100.0 + np.cumsum(st)
    steps = pd.DataFrame({"step": np.arange(n), "timestamp": ts, "step_time_seconds": st,
                          "data_time_seconds": np.full(n, 0.1)})
    eval_start = ts[399] + 0.5
    end_of_steps = float(ts[-1])
    events = [
        {"timestamp": eval_start, "event_type": "phase_start", "details": {"name": "eval"}},
        {"timestamp": eval_start + 30.0, "event_type": "phase_end", "details": {"name": "eval"}},
        {"timestamp": end_of_steps + 50.0, "event_type": "hang_suspected",
         "details": {"seconds_since_progress": 50.0, "phase": "train"}},
    ]
    costs = pd.DataFrame({"operation": ["step", "thread:w"], "total_seconds": [2.0, 50.0],
                          "on_training_thread": [True, False]})
    return job_data(steps=steps, events=events, costs=costs,
                    job={"started_at": T0, "ended_at": end_of_steps + 60.0})


def test_goodput_parts_sum_to_wall_and_name_each_loss() -> None:
    data = _goodput_job()
    g = goodput(data)
    lost = g["lost_seconds"]
    assert set(lost) == set(LOST_PARTS)
    assert g["productive_seconds"] + sum(lost.values()) == pytest.approx(g["wall_seconds"], abs=1e-6)
    assert all(v >= 0 for v in lost.values())
    assert g["wall_seconds"] == pytest.approx(100.0 + 798 + 31 + 21 + 60)
    assert lost["startup"] == pytest.approx(100.0)
    assert lost["data_wait"] == pytest.approx(80.0)
    assert lost["eval_and_checkpoints"] == pytest.approx(30.0)
    # the stall's excess over the median step's 0.9 s of compute (20.9 - 0.9), plus the hang: 60 s from the
    # last step to the end, which no step covers
    assert lost["stalls_and_hangs"] == pytest.approx(20.0 + 60.0)
    assert lost["other"] == pytest.approx(0.0, abs=1e-6)
    assert lost["monitoring"] == pytest.approx(2.0)
    assert g["ratio"] == pytest.approx(g["productive_seconds"] / g["wall_seconds"])
    assert g["stall_steps"] == 1  # type: ignore[typeddict-item]


def test_goodput_clamps_overlapping_sources_to_the_wall() -> None:
    """Two ranks' steps, monitoring larger than anything: parts never exceed the wall, nothing is negative."""
    n = 100
    steps = pd.DataFrame({"step": np.tile(np.arange(n), 2), "rank": np.repeat([0, 1], n),
                          "timestamp": np.tile(T0 + 1 + np.arange(n) * 1.0, 2), "step_time_seconds": 1.0,
                          "data_time_seconds": 0.0})
    costs = pd.DataFrame({"operation": ["user"], "total_seconds": [500.0], "on_training_thread": [True]})
    g = goodput(job_data(steps=steps, costs=costs, job={"ended_at": T0 + 101.0}))
    assert g["productive_seconds"] + sum(g["lost_seconds"].values()) == pytest.approx(101.0)
    assert min(g["lost_seconds"].values()) >= 0 and g["productive_seconds"] >= 0


def test_unmatched_phase_start_runs_to_the_next_step() -> None:
    steps = pd.DataFrame({"step": [0, 1], "timestamp": [T0 + 10, T0 + 80], "step_time_seconds": [1.0, 60.0]})
    events = [{"timestamp": T0 + 15, "event_type": "phase_start", "details": {"name": "save"}}]
    g = goodput(job_data(steps=steps, events=events, job={"ended_at": T0 + 100}))
    assert g["lost_seconds"]["eval_and_checkpoints"] == pytest.approx(65.0)


def test_wall_of_running_and_crashed_jobs() -> None:
    steps = pd.DataFrame({"step": [0], "timestamp": [T0 + 50], "step_time_seconds": [1.0]})
    running = job_data(steps=steps, job={"status": "running", "ended_at": None, "heartbeat_at": T0 + 95},
                       now=T0 + 100)
    assert run_window(running) == (T0, T0 + 100, "now")
    # "running" but silent for an hour: the process died without an end event; the wall stops at its last sign
    stale = job_data(steps=steps, job={"status": "running", "ended_at": None, "heartbeat_at": T0 + 95},
                     now=T0 + 3700)
    assert run_window(stale) == (T0, T0 + 95, "last_seen")
    crashed = job_data(steps=steps, job={"status": "failed", "ended_at": None}, now=T0 + 3700)
    assert run_window(crashed) == (T0, T0 + 50, "last_seen")


# -- timeline ---------------------------------------------------------------------------------------------

def test_timeline_downsamples_but_keeps_the_peak_and_every_critical_event() -> None:
    n = 100_000
    ts = T0 + np.arange(n) * 5.0
    used = 40 + 10 * np.sin(np.arange(n) / 100)
    used[77_777] = 119.2
    samples = pd.DataFrame({"timestamp": ts, "used_memory_gb": used, "total_memory_gb": 120.0,
                            "gpu_memory_used_gb": np.nan})
    steps = pd.DataFrame({"step": np.arange(n * 3), "timestamp": T0 + np.arange(n * 3) * 1.6,
                          "loss": np.linspace(3, 1, n * 3), "step_time_seconds": 1.6})
    steps.loc[123_456, "loss"] = 50.0
    events = [{"timestamp": T0 + i * 40.0, "event_type": "checkpoint_saved", "details": {}} for i in range(5000)]
    events += [{"timestamp": T0 + 1000.0 * k + 7, "event_type": "exception", "details": {"type": "E"}}
               for k in range(30)]
    events += [{"timestamp": float(ts[-1]), "event_type": "end", "details": {"status": "failed"}}]
    data = job_data(samples=samples, steps=steps, events=events, job={"ended_at": float(ts[-1])})
    tl = build_timeline(data, total_memory_gb=120.0)
    mem = tl["memory"]["system_used_gb"]
    assert len(mem["x"]) <= 1500 and max(mem["y"]) == pytest.approx(119.2)
    assert float(ts[77_777]) in mem["x"]
    assert "gpu_used_gb" not in tl["memory"]   # never recorded: left out, not a flat line
    assert len(tl["training"]["loss"]["x"]) <= 1500 and max(tl["training"]["loss"]["y"]) == 50.0
    assert tl["peaks"]["system_used_gb"] == {"value": pytest.approx(119.2), "timestamp": float(ts[77_777])}
    assert len(tl["events"]) <= 200
    kinds = [e["type"] for e in tl["events"]]
    assert kinds.count("exception") == 30 and kinds.count("end") == 1
    assert {e["severity"] for e in tl["events"] if e["type"] in ("exception", "end")} == {"critical"}
    assert tl["thresholds"]["critical_gb"] == pytest.approx(0.95 * 120.0)
    assert tl["raw_counts"] == {"samples": n, "steps": n * 3, "events": 5031}
    assert tl["start_time"] == T0


# -- log errors and counts --------------------------------------------------------------------------------

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


# -- recommendations --------------------------------------------------------------------------------------

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


# -- the whole document -----------------------------------------------------------------------------------

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


# -- config editing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "parts"), [
    ("config.process[0].datasets[0].num_workers", ["config", "process", 0, "datasets", 0, "num_workers"]),
    ("TrainingArguments.dataloader_num_workers", ["TrainingArguments", "dataloader_num_workers"]),
    ("trainer.accumulate_grad_batches", ["trainer", "accumulate_grad_batches"]),
    ('model["vae.path"]', ["model", "vae.path"]),
    ("a[0][1]", ["a", 0, 1]),
])
def test_parse_path(text: str, parts: list[Any]) -> None:
    assert parse_path(text) == parts
    assert parse_path(format_path(parts)) == parts


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a[x]", "a[0"])
def test_parse_path_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_path(bad)


def test_get_and_set_path_create_missing_sections() -> None:
    cfg: dict[str, Any] = {"config": {"process": [{"train": {"lr": 1e-4}}]}}
    assert get_path(cfg, "config.process[0].train.lr") == (True, 1e-4)
    assert get_path(cfg, "config.process[1].train") == (False, None)
    set_path(cfg, "config.process[0].train.ema_config.use_ema", False)
    set_path(cfg, "config.process[0].datasets[0].num_workers", 0)
    assert cfg["config"]["process"][0]["train"]["ema_config"] == {"use_ema": False}
    assert cfg["config"]["process"][0]["datasets"] == [{"num_workers": 0}]
    with pytest.raises(KeyError):
        set_path(cfg, "config.process[0].train.lr.x", 1)
    with pytest.raises(KeyError):
        set_path(cfg, "config.process[5].x", 1)


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


def test_apply_keeps_comments_and_order_and_never_touches_the_input(tmp_path: Path) -> None:
    src = tmp_path / "config.yaml"
    src.write_text(AITK_YAML)
    out = tmp_path / "tuned.yaml"
    recs = [
        {"id": "memory.workers", "config_path": "config.process[0].datasets[0].num_workers", "recommended_value": 0},
        {"id": "memory.quantize", "config_path": "config.process[0].model.quantize", "recommended_value": True},
        {"id": "memory.alloc", "config_path": "env:PYTORCH_CUDA_ALLOC_CONF",
         "recommended_value": "expandable_segments:True"},
        {"id": "hf", "config_path": "TrainingArguments.dataloader_num_workers", "recommended_value": 2},
        {"id": "logs.x", "config_path": None, "recommended_value": None},
    ]
    result = apply_recommendations(src, recs, out)
    assert src.read_text() == AITK_YAML
    text = out.read_text()
    assert "          num_workers: 0   # dataloader workers\n" in text
    assert "# my LoRA run" in text and "# shown in the UI" in text and "# per step" in text
    assert "        quantize: true\n" in text
    keys = [ln.split(":")[0].strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert keys[:4] == ["job", "config", "name", "process"]
    assert [c.rec_id for c in result.applied] == ["memory.workers", "memory.quantize"]
    assert {c.rec_id for c in result.skipped} == {"memory.alloc", "hf"}


def test_apply_hf_paths_to_a_flat_args_json(tmp_path: Path) -> None:
    src = tmp_path / "args.json"
    src.write_text(json.dumps({"output_dir": "out", "per_device_train_batch_size": 16, "learning_rate": 3e-4}))
    out = tmp_path / "tuned.json"
    apply_recommendations(src, [
        {"id": "b", "config_path": "TrainingArguments.per_device_train_batch_size", "recommended_value": 8},
        {"id": "w", "config_path": "TrainingArguments.dataloader_num_workers", "recommended_value": 4},
    ], out)
    assert list(json.loads(out.read_text()).items()) == [
        ("output_dir", "out"), ("per_device_train_batch_size", 8), ("learning_rate", 3e-4),
        ("dataloader_num_workers", 4)]


# -- the CLI ----------------------------------------------------------------------------------------------

@pytest.fixture
def warn_rule(only_test_rules: dict[str, registry.Rule]) -> None:
    """One warning with a config path: the health is "warning" and `recommend --apply` has something to set."""

    @registry.rule("test.workers", "test")
    def _workers(data: JobData) -> list[Finding]:
        return [Finding(id="test.workers", severity="warning", title="Fewer workers", action="Lower num_workers",
                        impact="Saves ~2.0 GB", category="memory", impact_value=2.0, impact_unit="GB",
                        config_path="config.process[0].datasets[0].num_workers", current_value=4,
                        current_value_source="config", recommended_value=0, memory_lever=True)]


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_analyze_prints_the_summary_stores_the_row_and_writes_html(
        store: Store, db_url: str, tmp_path: Path, warn_rule: None) -> None:
    jid = make_job(store, n_steps=120, n_samples=30, peak_gb=31.0)
    html = tmp_path / "r" / "report.html"
    result = _run(["analyze", jid, "--db", db_url, "--html", str(html)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Health:          WARNING" in out
    assert "Peak memory:     31.0 / 32.0 GB (97%)" in out
    assert "Steps:           120 (last step 119)" in out
    assert "Completed:       yes" in out
    assert "config.process[0].datasets[0].num_workers: 4 -> 0" in out
    assert store.count("analysis_reports", jid) == 1
    pytest.importorskip("runlens.report.html")
    assert html.is_file() and f"Report: {html.resolve()}" in out
    assert "<svg" in html.read_text()


def test_analyze_json_prints_only_the_document(store: Store, db_url: str, warn_rule: None) -> None:
    jid = make_job(store, n_steps=30, n_samples=10)
    result = CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert CONTRACT_KEYS <= set(doc) and SUMMARY_KEYS <= set(doc["summary"])
    assert doc["job"]["job_id"] == jid and doc["summary"]["steps_completed"] == 30
    assert doc["recommendations"][0]["primary"] is True


def test_analyze_latest_and_fail_on(store: Store, db_url: str, warn_rule: None) -> None:
    make_job(store, n_steps=10, n_samples=5)
    assert _run(["analyze", "latest", "--db", db_url, "--no-html", "--fail-on", "warning"]).exit_code == 3
    assert _run(["analyze", "latest", "--db", db_url, "--no-html", "--fail-on", "critical"]).exit_code == 0


def _one_line_error(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("runlens: "), result.output
    for n in needles:
        assert n in lines[0]


def test_analyze_unknown_job_and_missing_store(store: Store, db_url: str, tmp_path: Path) -> None:
    _one_line_error(CliRunner().invoke(cli, ["analyze", "nope", "--db", db_url]), 2, "no job with id 'nope'")
    missing = tmp_path / "absent.db"
    _one_line_error(CliRunner().invoke(cli, ["analyze", "x", "--db", str(missing)]), 2, "no database file")
    assert not missing.exists()


def test_analyze_unreadable_log(store: Store, db_url: str, tmp_path: Path) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    _one_line_error(CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--log", str(tmp_path / "no.txt")]),
                    2, "cannot read log file", "no such file")
    _one_line_error(CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--log", str(tmp_path)]),
                    2, "is a directory")


def test_missing_recorded_log_is_a_note(store: Store, db_url: str, tmp_path: Path,
                                        only_test_rules: dict[str, registry.Rule]) -> None:
    jid = make_job(store, n_steps=3, n_samples=3, log_path=str(tmp_path / "gone" / "log.txt"))
    result = CliRunner().invoke(cli, ["analyze", jid, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    assert any("not there any more" in n for n in json.loads(result.stdout)["notes"])


def _write_log(path: Path) -> Path:
    """A log with a progress bar, a metric named like an error, and a CUDA OOM traceback at T0 + 100 s."""
    from datetime import datetime, timezone

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([
        f"{iso(T0 + 20)} INFO step 10 loss=0.5 eval_error_rate=0.01 (0 errors)\n",
        " 40%|####      | 40/100 [00:40<01:00, 1.00it/s]\r 50%|#####     | 50/100 [00:50<00:50, 1.00it/s]\n",
        f"{iso(T0 + 100)} ERROR training step failed\n",
        "Traceback (most recent call last):\n",
        '  File "train.py", line 3, in <module>\n',
        "    loss.backward()\n",
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
         "79.11 GiB of which 1.12 GiB is free.\n"),
    ]))
    return path


@pytest.mark.parametrize("in_child", [False, True], ids=["in_process", "forked_child"])
def test_log_errors_carry_the_memory_at_that_moment(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    only_test_rules: dict[str, registry.Rule],
                                                    in_child: bool) -> None:
    from runlens.analyze import load

    if in_child:
        monkeypatch.setattr(load, "PARALLEL_LOG_BYTES", 0)   # take the big-log path: parse in a forked child
    log = _write_log(tmp_path / "runs" / "log.txt")
    # 60 samples over 220 s: one every ~3.7 s, so T0 + 100 is between two of them
    jid = make_job(store, n_steps=200, n_samples=60, log_path=str(log))
    doc = build_analysis(load_job(store, jid))
    errors = doc["log_errors"]
    assert [e["category"] for e in errors] == ["cuda_oom"]
    assert errors[0]["timestamp"] == pytest.approx(T0 + 100)
    samples = load_frames(store, jid).samples
    nearest = samples.iloc[(samples["timestamp"] - (T0 + 100)).abs().argmin()]
    assert errors[0]["memory_at_time_gb"] == pytest.approx(nearest["used_memory_gb"])
    assert doc["summary"]["error_count"] == 1 and doc["summary"]["warning_count"] == 0
    json.dumps(doc, allow_nan=False)


def test_report_rerenders_the_stored_analysis(store: Store, db_url: str, tmp_path: Path,
                                              only_test_rules: dict[str, registry.Rule]) -> None:
    jid = make_job(store, n_steps=3, n_samples=3)
    _one_line_error(CliRunner().invoke(cli, ["report", jid, "--db", db_url]), 2,
                    f"no analysis stored for job {jid}; run 'runlens analyze {jid}' first")
    pytest.importorskip("runlens.report.html")
    assert _run(["analyze", jid, "--db", db_url, "--no-html"]).exit_code == 0
    out = tmp_path / "again.html"
    result = _run(["report", jid, "--db", db_url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out.resolve()) and out.stat().st_size > 1000


def test_recommend_prints_and_applies(store: Store, db_url: str, tmp_path: Path, warn_rule: None) -> None:
    jid = make_job(store, n_steps=10, n_samples=5)
    result = _run(["recommend", jid, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "[WARNING] Fewer workers" in result.output
    assert json.loads(_run(["recommend", jid, "--db", db_url, "--json"]).output)[0]["id"] == "test.workers"

    src = tmp_path / "config.yaml"
    src.write_text(AITK_YAML)
    out = tmp_path / "tuned.yaml"
    result = _run(["recommend", jid, "--db", db_url, "--apply", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "set config.process[0].datasets[0].num_workers: 4 -> 0" in result.output
    assert src.read_text() == AITK_YAML
    assert "num_workers: 0   # dataloader workers" in out.read_text()
    same = CliRunner().invoke(cli, ["recommend", jid, "--db", db_url, "--apply", str(src), "-o", str(src)])
    _one_line_error(same, 2, "never modifies the input config")
    assert CliRunner().invoke(cli, ["recommend", jid, "--db", db_url, "--apply", str(src)]).exit_code == 2


def test_every_command_has_help() -> None:
    for cmd in ("analyze", "report", "recommend"):
        result = _run([cmd, "--help"])
        assert result.exit_code == 0 and "--db" in result.output


def test_analyze_a_job_recorded_by_the_real_monitor(db_url: str, tmp_path: Path,
                                                    only_test_rules: dict[str, registry.Rule]) -> None:
    runlens = pytest.importorskip("runlens")
    try:
        monitor_cls = runlens.Monitor
    except (AttributeError, ImportError):
        pytest.skip("runlens.Monitor is not there yet")
    with monitor_cls(name="real", db=db_url, sample_interval=0.05) as mon:
        for i in range(30):
            mon.step(i, loss=1.0 / (i + 1), lr=1e-3, batch_size=2, extra_metric=float(i))
            time.sleep(0.005)
        with mon.phase("eval"):
            time.sleep(0.05)
        job_id = mon.job_id
    result = CliRunner().invoke(cli, ["analyze", job_id, "--db", db_url, "--json", "--no-html"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["steps_completed"] == 30 and doc["summary"]["status"] == "succeeded"
    g = doc["summary"]["goodput"]
    assert g["productive_seconds"] + sum(g["lost_seconds"].values()) == pytest.approx(g["wall_seconds"], abs=1e-9)
    assert g["lost_seconds"]["eval_and_checkpoints"] > 0.03


# -- PostgreSQL -------------------------------------------------------------------------------------------

@pytest.fixture
def pg_store() -> Iterator[Store]:
    """A fresh database on the throwaway server of .ci/start-postgres.sh (or RUNLENS_TEST_PG_URL)."""
    import os
    import secrets
    import subprocess

    from sqlalchemy import create_engine, text

    from runlens.store import open_store

    url = os.environ.get("RUNLENS_TEST_PG_URL")
    if not url:
        script = Path(__file__).resolve().parents[2] / ".ci" / "start-postgres.sh"
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.skip(f"no PostgreSQL server: {out.stderr.strip()}")
        url = out.stdout.strip()
    name = f"runlens_engine_{secrets.token_hex(4)}"
    admin = create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    store = open_store(url.rsplit("/", 1)[0] + "/" + name)
    try:
        yield store
    finally:
        store.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_frames_and_analysis_on_postgres(pg_store: Store, only_test_rules: dict[str, registry.Rule]) -> None:
    """Native JSON and booleans from psycopg load like SQLite's text: same frames, same document."""
    jid = make_job(pg_store, n_steps=50, n_samples=10)
    f = load_frames(pg_store, jid)
    assert len(f.steps) == 50 and f.steps["step"].dtype == np.int64
    assert f.steps["x_tokens_per_s"].iloc[3] == pytest.approx(103.0)
    assert f.events["details"].iloc[1] == {"status": "succeeded"}
    assert not f.costs.set_index("operation").loc["thread:runlens-writer", "on_training_thread"]
    doc = build_analysis(load_job(pg_store, jid))
    json.dumps(doc, allow_nan=False)
    assert doc["summary"]["steps_completed"] == 50
    rid = save_analysis(pg_store, jid, doc)
    assert rid and latest_analysis(pg_store, jid)["summary"]["steps_completed"] == 50  # type: ignore[index]
