"""Rules on hand-built jobs: each rule fires on its condition with the measured impact and the exact config path,
and stays quiet on a healthy run (no crying wolf). Config-path resolution for every dialect is here too."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from runlens.analyze import configpaths
from runlens.core.configpath import parse_path
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.logfindings import LogFinding
from runlens.analyze.registry import all_rules, run_rules
from runlens.analyze.rules import memory, throughput, training
from runlens.core.settings import Settings

T0 = 1_700_000_000.0
AITK = {"job": "extension", "config": {"name": "lora", "process": [{
    "type": "sd_trainer", "device": "cuda:0",
    "train": {"batch_size": 4, "lr": 1e-4, "gradient_checkpointing": True, "dtype": "bf16"},
    "model": {"name_or_path": "flux", "quantize": False},
    "datasets": [{"folder_path": "/data", "resolution": [512, 768, 1024]}],
    "sample": {"sample_every": 250},
}]}}
HF = {"output_dir": "out", "per_device_train_batch_size": 16, "learning_rate": 3e-4, "num_train_epochs": 1,
      "dataloader_num_workers": 4, "logging_steps": 10}
PL = {"trainer": {"max_epochs": 3, "accumulate_grad_batches": 2, "precision": "bf16-mixed"},
      "model": {"lr": 0.01}, "data": {"batch_size": 32, "num_workers": 6}}


def LogLine(category: str, message: str = "", *, level: str = "error", text: str = "", line_number: int = 1,
            timestamp: float | None = None, rank: int | None = None, count: int = 1,
            details: dict[str, Any] | None = None) -> LogFinding:
    """A parsed log finding as runlens.analyze.logparse makes it."""
    return LogFinding(level, category, message, text or message, line_number, timestamp,
                      "line" if timestamp is not None else None, rank, count, details or {})


def steps_frame(n: int, *, dt: float = 0.1, start: float = T0 + 5, loss: Any = None, **cols: Any) -> pd.DataFrame:
    """n steps, dt apart; ``loss`` defaults to a clean decreasing curve."""
    ts = start + dt * np.arange(1, n + 1)
    data: dict[str, Any] = {"step": np.arange(n), "timestamp": ts,
                            "loss": np.asarray(loss if loss is not None else 2.0 * np.exp(-np.arange(n) / (n / 3))
                                               + 0.1, dtype=float),
                            "step_time_seconds": np.full(n, dt), "data_time_seconds": np.full(n, dt * 0.005)}
    for k, v in cols.items():
        data[k] = np.broadcast_to(np.asarray(v), (n,)).copy() if np.ndim(v) == 0 else np.asarray(v)
    return pd.DataFrame(data)


def samples_frame(n: int, *, dt: float = 1.0, start: float = T0, total: float = 64.0, used: Any = 20.0,
                  **cols: Any) -> pd.DataFrame:
    ts = start + dt * np.arange(n)
    data: dict[str, Any] = {"id": np.arange(1, n + 1), "timestamp": ts, "total_memory_gb": np.full(n, total),
                            "used_memory_gb": np.broadcast_to(np.asarray(used, dtype=float), (n,)).copy()}
    data["available_memory_gb"] = total - data["used_memory_gb"]
    for k, v in cols.items():
        data[k] = np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy()
    return pd.DataFrame(data)


def events_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    cols = ["id", "timestamp", "event_type", "details", "memory_snapshot_id", "host", "rank", "step"]
    out = [{"id": i + 1, "memory_snapshot_id": None, "host": "h", "rank": None, "step": None, "details": {}, **r}
           for i, r in enumerate(rows)]
    return pd.DataFrame(out, columns=cols) if out else pd.DataFrame(columns=cols)


def job(*, steps: pd.DataFrame | None = None, samples: pd.DataFrame | None = None,
        events: pd.DataFrame | None = None, config: dict[str, Any] | None = None, dialect: str = "generic",
        logs_: list[Any] | None = None, costs: pd.DataFrame | None = None, gpus: pd.DataFrame | None = None,
        settings: Settings | None = None, **jobfields: Any) -> JobData:
    if steps is None:
        steps = steps_frame(0)
    if samples is None:
        samples = samples_frame(0)
    end = max([T0 + 1] + [float(f["timestamp"].max()) for f in (steps, samples) if len(f)])
    row = {"job_id": "j1", "name": "j", "status": "succeeded", "started_at": T0, "ended_at": end,
           "exit_code": 0, "environment": {"cpu_count": 8, "env": {}}, **jobfields}
    return JobData(job=row, steps=steps, samples=samples, events=events if events is not None else events_frame(),
                   gpus=gpus if gpus is not None else pd.DataFrame(),
                   costs=costs if costs is not None else pd.DataFrame(), log_findings=logs_ or [], config=config,
                   dialect=dialect, settings=settings or Settings())


def one(findings: list[Finding], rid: str) -> Finding:
    hits = [f for f in findings if f.id == rid]
    assert len(hits) == 1, [f.id for f in findings]
    return hits[0]


def healthy_job(**kw: Any) -> JobData:
    """A run with nothing wrong: steady pace, decreasing loss, moderate memory, two small workers."""
    rng = np.random.default_rng(0)
    n = 600
    loss = 2.0 * np.exp(-np.arange(n) / 200) + 0.2 + rng.normal(0, 0.02, n)
    st = 0.1 + rng.normal(0, 0.003, n)
    steps = steps_frame(n, loss=loss, step_time_seconds=st, batch_size=8, learning_rate=1e-3,
                        gradient_norm=0.5 + rng.normal(0, 0.05, n))
    samples = samples_frame(70, used=20.0 + rng.normal(0, 0.2, 70), worker_memory_gb=0.4, worker_count=2,
                            main_process_memory_gb=3.0, swap_used_gb=0.0, swap_in_gb_per_s=0.0)
    return job(steps=steps, samples=samples, **kw)


# -- config paths ------------------------------------------------------------------------------------------

def test_every_table_path_parses() -> None:
    """Each dialect's paths use runlens.core.configpath's grammar, so `recommend --apply` can set them."""
    for table in configpaths.TABLES.values():
        for entry in table.values():
            for p in (entry.path, entry.lookup, *entry.aliases):
                if p:
                    assert parse_path(p)


def test_aitoolkit_paths_and_defaults() -> None:
    ref = configpaths.resolve_config(AITK, "ai-toolkit", "num_workers")
    assert ref.path == "config.process[0].datasets[0].num_workers"
    assert (ref.source, ref.current_value, ref.display) == ("default", 2, "not set (default 2)")
    bs = configpaths.resolve_config(AITK, "ai-toolkit", "batch_size")
    assert (bs.path, bs.current_value, bs.source, bs.display) == ("config.process[0].train.batch_size", 4, "config", "4")
    assert configpaths.resolve_config(AITK, "ai-toolkit", "use_ema").path == \
        "config.process[0].train.ema_config.use_ema"
    q = configpaths.resolve_config(AITK, "ai-toolkit", "quantize")
    assert (q.path, q.current_value, q.source) == ("config.process[0].model.quantize", False, "config")
    gc = configpaths.resolve_config(AITK, "ai-toolkit", "gradient_checkpointing")
    assert gc.current_value is True


def test_aitoolkit_legacy_accumulation_alias() -> None:
    cfg = {"config": {"process": [{"train": {"gradient_accumulation_steps": 4}}]}}
    ref = configpaths.resolve_config(cfg, "ai-toolkit", "gradient_accumulation")
    assert (ref.path, ref.current_value) == ("config.process[0].train.gradient_accumulation_steps", 4)
    absent = configpaths.resolve_config({"config": {"process": [{}]}}, "ai-toolkit", "gradient_accumulation")
    assert (absent.path, absent.display) == ("config.process[0].train.gradient_accumulation", "not set (default 1)")


def test_huggingface_flat_snapshot_is_shown_as_training_arguments() -> None:
    ref = configpaths.resolve_config(HF, "huggingface", "num_workers")
    assert (ref.path, ref.current_value, ref.source) == ("TrainingArguments.dataloader_num_workers", 4, "config")
    gc = configpaths.resolve_config(HF, "huggingface", "gradient_checkpointing")
    assert (gc.path, gc.display) == ("TrainingArguments.gradient_checkpointing", "not set (default False)")
    assert configpaths.resolve_config(HF, "huggingface", "max_grad_norm").current_value == 1.0
    assert configpaths.resolve_config(HF, "huggingface", "save_steps").display == "not set (default 500)"
    nested = configpaths.resolve_config({"training_args": {"learning_rate": 1e-3}}, "huggingface", "learning_rate")
    assert (nested.path, nested.current_value) == ("TrainingArguments.learning_rate", 1e-3)


def test_lightning_paths() -> None:
    acc = configpaths.resolve_config(PL, "lightning", "gradient_accumulation")
    assert (acc.path, acc.current_value) == ("trainer.accumulate_grad_batches", 2)
    assert configpaths.resolve_config(PL, "lightning", "num_workers").current_value == 6
    assert configpaths.resolve_config(PL, "lightning", "batch_size").path == "data.batch_size"
    clip = configpaths.resolve_config(PL, "lightning", "max_grad_norm")
    assert (clip.path, clip.display) == ("trainer.gradient_clip_val", "not set (default None)")
    assert configpaths.resolve_config(PL, "lightning", "learning_rate").current_value == 0.01
    gc = configpaths.resolve_config(PL, "lightning", "gradient_checkpointing")
    assert gc.path is None and gc.hint and "gradient_checkpointing_enable" in gc.hint
    assert configpaths.resolve_config({}, "lightning", "precision").display == "not set (default 32-true)"


def test_generic_user_mapping_then_conventional_keys_then_hint() -> None:
    cfg = {"loader": {"workers": 3}, "optim": {"lr": 0.1, "deep": {"lr": 9}}, "monitoring": {"paths": {}}}
    s = Settings(config_paths={"num_workers": "loader.workers"})
    mapped = configpaths.resolve_config(cfg, "generic", "num_workers", s.config_paths)
    assert (mapped.path, mapped.current_value, mapped.source) == ("loader.workers", 3, "config")
    found = configpaths.resolve_config(cfg, "generic", "learning_rate")
    assert (found.path, found.current_value) == ("optim.lr", 0.1)        # the shallowest match wins
    cfg2 = {"monitoring": {"paths": {"batch_size": "data.bs"}}, "data": {"bs": 12}}
    assert configpaths.resolve_config(cfg2, "generic", "batch_size").current_value == 12
    missing = configpaths.resolve_config({"a": 1}, "generic", "batch_size")
    assert missing.source == "unknown" and missing.path == "batch_size"
    assert "monitoring: paths:" in (missing.hint or "") and missing.display == "not set"


def test_user_mapping_wins_in_a_known_dialect() -> None:
    ref = configpaths.resolve_config({"x": {"nw": 1}}, "huggingface", "num_workers", {"num_workers": "x.nw"})
    assert (ref.path, ref.current_value) == ("x.nw", 1)


@pytest.mark.parametrize("dialect,config", [("ai-toolkit", AITK), ("huggingface", HF), ("lightning", PL),
                                            ("generic", {}), ("generic", None)])
def test_every_concept_resolves_in_every_dialect(dialect: str, config: Any) -> None:
    for concept in configpaths.CONCEPTS:
        ref = configpaths.resolve_config(config, dialect, concept)
        assert ref.source in ("config", "default", "unknown")
        assert ref.display


# -- healthy run: no crying wolf ---------------------------------------------------------------------------

@pytest.mark.parametrize("dialect,config", [("generic", None), ("ai-toolkit", AITK), ("huggingface", HF),
                                            ("lightning", PL)])
def test_healthy_run_has_no_warning_or_critical(dialect: str, config: Any) -> None:
    findings, notes = run_rules(healthy_job(config=config, dialect=dialect))
    assert notes == []
    assert [f.id for f in findings if f.severity in ("warning", "critical")] == []


def test_empty_job_does_not_break_any_rule() -> None:
    findings, notes = run_rules(job())
    assert notes == [] and findings == []


def test_rule_ids_are_unique_and_families_known() -> None:
    rules = all_rules()
    assert len({r.id for r in rules}) == len(rules)
    assert {r.family for r in rules} <= {"memory", "throughput", "training", "logs", "hangs"}


# -- memory ------------------------------------------------------------------------------------------------

def _cpu_oom_job(**kw: Any) -> JobData:
    steps = steps_frame(30, batch_size=1)
    t_oom = float(steps["timestamp"].iloc[-1]) + 0.05
    samples = samples_frame(10, used=5.0, main_process_memory_gb=1.5)
    samples.loc[len(samples)] = {**samples.iloc[-1].to_dict(), "id": 99, "timestamp": t_oom,
                                 "main_process_memory_gb": 2.25}
    msg = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: " \
          "you tried to allocate 268435456 bytes. Error code 12 (Cannot allocate memory)"
    ev = events_frame({"timestamp": t_oom, "event_type": "exception", "memory_snapshot_id": 99, "step": 29,
                       "details": {"type": "RuntimeError", "message": msg, "traceback": "..."}})
    return job(steps=steps, samples=samples, events=ev, status="failed", exit_code=1, **kw)


def test_oom_from_cpu_allocator_exception_names_step_phase_and_figures() -> None:
    f = one(memory.oom(_cpu_oom_job()), "memory.oom")
    assert f.severity == "critical"
    assert f.evidence["step"] == 29 and f.evidence["phase"] == "train" and f.evidence["kind"] == "cpu"
    assert f.evidence["tried_to_allocate_gb"] == pytest.approx(0.25)
    assert f.evidence["process_memory_gb"] == pytest.approx(2.25)
    assert "step 29" in f.title and "0.25 GiB" in f.impact and "2.25 GiB" in f.impact


def test_oom_not_triggered_by_an_ordinary_exception() -> None:
    ev = events_frame({"timestamp": T0 + 3, "event_type": "exception",
                       "details": {"type": "ValueError", "message": "shapes (3,) and (4,) not aligned"}})
    assert memory.oom(job(events=ev, status="failed")) == []


def test_exit_137_is_critical_only_with_high_memory() -> None:
    low = job(samples=samples_frame(10, used=10.0), status="failed", exit_code=137)
    high = job(samples=samples_frame(10, used=62.0), status="failed", exit_code=137)
    assert one(memory.oom(low), "memory.oom").severity == "warning"
    assert one(memory.oom(high), "memory.oom").severity == "critical"


def test_cuda_oom_log_gives_fragmentation_lever_with_env_path() -> None:
    text = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
            "of 23.64 GiB of which 1.10 GiB is free. Of the allocated memory 17.2 GiB is allocated by PyTorch, "
            "and 4.90 GiB is reserved by PyTorch but unallocated.")
    d = job(steps=steps_frame(20, batch_size=2), logs_=[LogLine("cuda_oom", text, text=text, timestamp=T0 + 6)],
            status="failed", exit_code=1)
    oom = one(memory.oom(d), "memory.oom")
    assert oom.evidence["kind"] == "cuda" and "GPU 22.5 / 23.6 GiB" in oom.impact
    frag = one(memory.fragmentation(d), "memory.fragmentation")
    assert frag.config_path == "env:PYTORCH_CUDA_ALLOC_CONF"
    assert frag.recommended_value == "expandable_segments:True" and frag.impact_value == pytest.approx(4.9)
    assert frag.memory_lever
    d.job["environment"]["env"]["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    assert memory.fragmentation(d) == []
    small = text.replace("4.90 GiB is reserved", "0.20 GiB is reserved")
    assert memory.fragmentation(job(logs_=[LogLine("cuda_oom", small, text=small)])) == []


@pytest.mark.parametrize("used,severity", [(61.5, "critical"), (56.0, "warning"), (30.0, None)])
def test_peak_thresholds(used: float, severity: str | None) -> None:
    used_series = np.full(20, 25.0)
    used_series[12] = used
    f = memory.peak(job(samples=samples_frame(20, used=used_series)))
    if severity is None:
        assert f == []
    else:
        assert one(f, "memory.peak").severity == severity
        assert f[0].evidence["peak_gb"] == used and f"{used / 64:.0%}" in f[0].impact


def test_gpu_peak_is_judged_apart_from_ram() -> None:
    s = samples_frame(20, used=10.0, gpu_memory_used_gb=23.0, gpu_memory_total_gb=24.0)
    f = one(memory.peak(job(samples=s)), "memory.gpu_peak")
    assert f.severity == "critical" and "23.0 / 24.0 GiB" in f.impact


def test_swap_growth_with_measured_slowdown() -> None:
    n = 120
    st = np.r_[np.full(60, 0.5), np.full(60, 1.5)]
    ts = T0 + 5 + np.cumsum(st)
    steps = steps_frame(n, step_time_seconds=st)
    steps["timestamp"] = ts
    swap = np.where(np.arange(100) * 1.0 + T0 < ts[60], 0.0, 3.0)
    samples = samples_frame(100, used=60.0, swap_used_gb=swap, swap_in_gb_per_s=0.0)
    f = one(memory.swap(job(steps=steps, samples=samples)), "memory.swap")
    assert f.severity == "critical"
    assert f.evidence["swap_growth_gb"] == pytest.approx(3.0)
    assert f.evidence["step_time_ratio"] == pytest.approx(3.0, rel=0.05)
    assert f.impact_value == pytest.approx(60 * 1.0, rel=0.1)     # 60 steps, 1 s each above the 0.5 s pace


def test_constant_swap_is_not_a_finding() -> None:
    samples = samples_frame(50, used=20.0, swap_used_gb=0.5, swap_in_gb_per_s=0.0)
    assert memory.swap(job(steps=steps_frame(100), samples=samples)) == []


def _pressured_workers(dialect: str, config: Any) -> JobData:
    samples = samples_frame(30, used=62.0, worker_memory_gb=3.0, worker_count=3, main_process_memory_gb=8.0)
    return job(steps=steps_frame(100), samples=samples, config=config, dialect=dialect)


@pytest.mark.parametrize("dialect,config,path,current,source", [
    ("ai-toolkit", AITK, "config.process[0].datasets[0].num_workers", 3, "measured"),
    ("huggingface", {**HF, "dataloader_num_workers": 3}, "TrainingArguments.dataloader_num_workers", 3, "config"),
    ("lightning", {**PL, "data": {"num_workers": 3}}, "data.num_workers", 3, "config"),
    ("generic", {"num_workers": 3}, "num_workers", 3, "config"),
])
def test_worker_memory_lever_per_dialect(dialect: str, config: Any, path: str, current: int, source: str) -> None:
    f = one(memory.workers(_pressured_workers(dialect, config)), "memory.workers")
    assert f.severity == "critical" and f.memory_lever
    assert (f.config_path, f.current_value, f.current_value_source, f.recommended_value) == (path, current, source, 0)
    assert f.impact == "Saves ~3.00 GiB (1.00 GiB/worker)" and f.impact_value == pytest.approx(3.0)


def test_worker_memory_without_pressure_is_info_or_nothing() -> None:
    big = samples_frame(30, used=5.0, worker_memory_gb=1.5, worker_count=3)
    assert one(memory.workers(job(steps=steps_frame(50), samples=big)), "memory.workers").severity == "info"
    small = samples_frame(30, used=20.0, worker_memory_gb=0.5, worker_count=2)
    assert memory.workers(job(steps=steps_frame(50), samples=small)) == []


def test_input_bound_run_keeps_some_workers() -> None:
    steps = steps_frame(100, data_time_seconds=0.03)
    f = one(memory.workers(job(steps=steps, samples=_pressured_workers("generic", None).samples)), "memory.workers")
    assert f.recommended_value == 1 and f.impact_value == pytest.approx(2.0)


def _batch_job(config: Any = AITK, dialect: str = "ai-toolkit", peak_hi: float = 23.5) -> JobData:
    """GPU memory 6 GB static + 2 GB/sample, observed at batch 4 then 8 (batch_size_changed)."""
    bs = np.r_[np.full(50, 4), np.full(50, 8)]
    steps = steps_frame(100, batch_size=bs)
    ts = np.arange(0, 16, 0.5)
    step_ts = steps["timestamp"].to_numpy()
    gpu = np.where(T0 + ts < step_ts[0] - 0.1, 6.0, np.where(T0 + ts <= step_ts[49], 14.0, peak_hi))
    samples = samples_frame(len(ts), dt=0.5, used=20.0, gpu_memory_used_gb=gpu, gpu_memory_total_gb=24.0)
    return job(steps=steps, samples=samples, config=config, dialect=dialect)


def test_batch_size_from_two_observed_batch_sizes() -> None:
    d = _batch_job(peak_hi=22.0)
    f = one(memory.batch_size(d), "memory.batch_size")
    # fit through (4, 14) and (8, 22): static 6 GB, 2 GB/sample; floor((0.85 * 24 - 6) / 2) = 7
    assert f.evidence["fit_method"] == "fit"
    assert f.evidence["static_gb"] == pytest.approx(6.0) and f.evidence["per_sample_gb"] == pytest.approx(2.0)
    assert f.recommended_value == 7 and f.config_path == "config.process[0].train.batch_size"
    # The run ended at batch 8 although its config says 4: the card says both, and reduces from 8.
    assert (f.current_value, f.current_value_source, f.config_value) == (8, "measured", 4)
    assert f.impact_value == pytest.approx(2.0) and f.severity == "warning"
    assert f.expected_effect == {"metric": "peak_memory_gb", "current": 22.0, "predicted": pytest.approx(20.0),
                                 "unit": "GiB"}
    assert f.evidence["also_set"] == {"config.process[0].train.gradient_accumulation": 2}


def test_batch_size_from_static_snapshot() -> None:
    steps = steps_frame(40, batch_size=8)
    ts = np.arange(0, 10, 0.5)
    gpu = np.where(T0 + ts < float(steps["timestamp"].iloc[0]) - 0.1, 4.0, 23.2)
    samples = samples_frame(len(ts), dt=0.5, gpu_memory_used_gb=gpu, gpu_memory_total_gb=24.0)
    f = one(memory.batch_size(job(steps=steps, samples=samples, config=HF, dialect="huggingface")),
            "memory.batch_size")
    assert f.evidence["fit_method"] == "static_snapshot" and f.evidence["per_sample_gb"] == pytest.approx(2.4)
    assert f.recommended_value == 6 and f.config_path == "TrainingArguments.per_device_train_batch_size"
    assert f.severity == "critical"


def test_batch_size_guards() -> None:
    assert memory.batch_size(job(steps=steps_frame(40, batch_size=1), samples=samples_frame(10, used=63.0))) == []
    assert memory.batch_size(healthy_job()) == []


def test_quantization_lever_only_when_off_and_gpu_short() -> None:
    d = _batch_job(peak_hi=23.5)
    f = one(memory.quantize(d), "memory.quantize")
    assert f.config_path == "config.process[0].model.quantize" and f.recommended_value is True
    assert f.evidence["also_set"] == {"config.process[0].model.qtype": "qfloat8"}
    assert f.impact_value == pytest.approx(3.0)   # half of the 6 GB held before the first step (bf16 -> 8 bit)
    d.events = events_frame({"timestamp": T0 + 1, "event_type": "model_info",
                             "details": {"parameters": 12_000_000_000, "dtype": "bf16"}})
    assert memory.quantize(d)[0].impact_value == pytest.approx(12e9 / 2**30)
    on = {**AITK, "config": {"process": [{**AITK["config"]["process"][0], "model": {"quantize": True}}]}}
    assert memory.quantize(_batch_job(config=on)) == []
    assert memory.quantize(healthy_job(config=AITK, dialect="ai-toolkit")) == []


def test_ema_lever() -> None:
    proc = {**AITK["config"]["process"][0], "train": {**AITK["config"]["process"][0]["train"],
                                                       "ema_config": {"use_ema": True}}}
    cfg = {"job": "extension", "config": {"process": [proc]}}
    d = _batch_job(config=cfg)
    d.events = events_frame({"timestamp": T0 + 1, "event_type": "model_info",
                             "details": {"trainable_parameters": 500_000_000, "dtype": "bf16"}})
    f = one(memory.ema(d), "memory.ema")
    assert f.config_path == "config.process[0].train.ema_config.use_ema" and f.recommended_value is False
    assert f.impact_value == pytest.approx(1e9 / 2**30)
    assert memory.ema(_batch_job()) == []


def test_gradient_checkpointing_lever_respects_defaults() -> None:
    f = one(memory.gradient_checkpointing(_batch_job(config=HF, dialect="huggingface")),
            "memory.gradient_checkpointing")
    assert f.config_path == "TrainingArguments.gradient_checkpointing"
    assert (f.current_value, f.current_value_source, f.recommended_value) == (False, "default", True)
    assert "20 %" in f.impact
    assert memory.gradient_checkpointing(_batch_job()) == []   # ai-toolkit's default is on


def test_resolution_lever_drops_the_largest_bucket() -> None:
    f = one(memory.resolution(_batch_job()), "memory.resolution")
    assert f.config_path == "config.process[0].datasets[0].resolution"
    assert f.recommended_value == [512, 768] and f.current_value == [512, 768, 1024]
    act = f.evidence["activation_gb"]
    assert f.impact_value == pytest.approx(act * (1 - (768 / 1024) ** 2))


def test_levers_quiet_without_pressure() -> None:
    d = _batch_job(peak_hi=15.0)
    for fn in (memory.batch_size, memory.quantize, memory.gradient_checkpointing, memory.resolution):
        assert fn(d) == []


def test_oom_names_the_best_measured_lever() -> None:
    d = _batch_job(peak_hi=22.0)
    d.events = events_frame({"timestamp": float(d.steps["timestamp"].iloc[-1]), "event_type": "cuda_oom",
                             "details": {"message": "CUDA out of memory. Tried to allocate 1.00 GiB"}})
    f = one(memory.oom(d), "memory.oom")
    # Only the batch size's saving is measured (2 GB a sample, batch 8 -> 7: peak 20 of 24 GB); dropping 1024px
    # (about 16 × (1 - 0.75²) = 7 GB if activations scale with pixels) and quantization (up to 3 GB of the static
    # memory) are estimates: alternatives, listed after it by their estimate.
    assert f.severity == "critical" and f.evidence["best_lever"] == "memory.batch_size"
    assert f.alternatives[:3] == ["memory.batch_size", "memory.resolution", "memory.quantize"]
    assert "2.00 GiB" in f.action
    assert f.expected_effect == {"metric": "failure", "current": True, "predicted": False, "unit": "bool"}


def test_sampling_oom_before_training_skips_first_sample() -> None:
    ev = events_frame({"timestamp": T0 + 2, "event_type": "phase_start", "details": {"name": "sample"}},
                      {"timestamp": T0 + 4, "event_type": "cuda_oom",
                       "details": {"message": "CUDA out of memory. Tried to allocate 3.00 GiB"}})
    s = samples_frame(6, used=10.0, gpu_memory_used_gb=[8, 8, 20, 23.5, 23.8, 23.8], gpu_memory_total_gb=24.0)
    d = job(samples=s, events=ev, config=AITK, dialect="ai-toolkit", status="failed", exit_code=1)
    oom = one(memory.oom(d), "memory.oom")
    assert oom.evidence["phase"] == "sample" and oom.evidence["step"] is None
    f = one(memory.sampling_peak(d), "memory.sampling_peak")
    assert f.config_path == "config.process[0].train.skip_first_sample" and f.recommended_value is True


def test_shm_too_small_and_shm_errors() -> None:
    s = samples_frame(10, used=10.0, worker_count=4, worker_memory_gb=0.5)
    small = job(samples=s, config=HF, dialect="huggingface")
    small.job["environment"]["shm_total_gb"] = 0.0625
    f = one(memory.shm(small), "memory.shm")
    assert f.severity == "warning" and f.config_path == "TrainingArguments.dataloader_num_workers"
    assert f.recommended_value == 0 and "0.06 GiB" in f.impact
    err = job(samples=s, logs_=[LogLine("shm_bus_error", "ERROR: Unexpected bus error encountered in worker. "
                                        "This might be caused by insufficient shared memory (shm).")])
    assert one(memory.shm(err), "memory.shm").severity == "critical"
    big = job(samples=s)
    big.job["environment"]["shm_total_gb"] = 24.0
    assert memory.shm(big) == []


# -- throughput --------------------------------------------------------------------------------------------

def test_input_bound_share_and_worker_recommendation() -> None:
    steps = steps_frame(200, dt=0.2, data_time_seconds=0.06)
    f = one(throughput.input_bound(job(steps=steps, config=HF | {"dataloader_num_workers": 0},
                                       dialect="huggingface")), "throughput.input_bound")
    assert f.severity == "warning" and f.evidence["data_wait_share"] == pytest.approx(0.3)
    assert f.impact_value == pytest.approx(30.0) and "HIGHLY" == f.evidence["band"]
    # min(cores - 2, n + 2) with 8 cores and 0 workers
    assert (f.config_path, f.current_value, f.recommended_value) == ("TrainingArguments.dataloader_num_workers", 0, 2)


def test_input_bound_on_a_small_machine_and_quiet_below_5_percent() -> None:
    d = job(steps=steps_frame(100, data_time_seconds=0.02))
    d.job["environment"] = {"cpu_count": 2}
    f = one(throughput.input_bound(d), "throughput.input_bound")
    assert f.recommended_value == 1 and f.config_path == "num_workers"
    assert throughput.input_bound(job(steps=steps_frame(100, data_time_seconds=0.004))) == []


def test_gpu_underutilized() -> None:
    s = samples_frame(20, gpu_utilization_percent=30.0, gpu_memory_used_gb=5.0, gpu_memory_total_gb=24.0)
    f = one(throughput.gpu_underutilized(job(steps=steps_frame(150), samples=s)), "throughput.gpu_underutilized")
    assert f.severity == "info" and f.evidence["gpu_utilization_percent"] == pytest.approx(30.0)
    busy = samples_frame(20, gpu_utilization_percent=95.0, gpu_memory_used_gb=5.0, gpu_memory_total_gb=24.0)
    assert throughput.gpu_underutilized(job(steps=steps_frame(150), samples=busy)) == []


def test_batch_headroom_from_the_fit() -> None:
    d = _batch_job(peak_hi=13.0)   # (4, 14)? no: lower batch peaks at 14 > 13 -> use a clean fit below
    bs = np.r_[np.full(50, 2), np.full(50, 4)]
    d.steps["batch_size"] = bs
    step_ts = d.steps["timestamp"].to_numpy()
    ts = d.samples["timestamp"].to_numpy()
    d.samples["gpu_memory_used_gb"] = np.where(ts < step_ts[0] - 0.1, 4.0, np.where(ts <= step_ts[49], 6.0, 8.0))
    f = one(throughput.batch_headroom(d), "throughput.batch_headroom")
    # static 4, 1 GB/sample: floor((0.85 * 24 - 4) / 1) = 16 -> recommend min(16, 2 * 4) = 8
    assert f.evidence["bs_max"] == 16 and f.recommended_value == 8
    assert throughput.batch_headroom(healthy_job()) == []


def test_degradation_measures_lost_time() -> None:
    st = np.r_[np.full(300, 0.1), np.full(300, 0.3)]
    f = one(throughput.degradation(job(steps=steps_frame(600, step_time_seconds=st))), "throughput.degradation")
    assert f.severity == "warning" and f.impact_value == pytest.approx(300 * 0.2, rel=0.05)
    assert f.evidence["onset_step"] == pytest.approx(300, abs=30)
    assert throughput.degradation(healthy_job()) == []


def test_stalls() -> None:
    st = np.full(500, 0.1)
    st[25::50] = 2.1
    f = one(throughput.stalls(job(steps=steps_frame(500, step_time_seconds=st))), "throughput.stalls")
    assert f.evidence["stalled_steps"] == 10 and f.impact_value == pytest.approx(10 * 2.0, rel=0.05)
    assert throughput.stalls(healthy_job()) == []


def test_stalls_inside_eval_phases_are_not_stalls() -> None:
    st = np.full(500, 0.1)
    st[::50] = 2.1
    steps = steps_frame(500, step_time_seconds=st)
    rows = []
    for i in range(0, 500, 50):
        t = float(steps["timestamp"].iloc[i])
        rows += [{"timestamp": t - 2.0, "event_type": "phase_start", "details": {"name": "eval"}},
                 {"timestamp": t - 0.1, "event_type": "phase_end", "details": {"name": "eval",
                                                                               "duration_seconds": 1.9}}]
    assert throughput.stalls(job(steps=steps, events=events_frame(*rows))) == []


def test_eval_overhead_recommends_twice_the_measured_interval() -> None:
    steps = steps_frame(400, dt=0.1)
    rows = []
    for i in range(100, 400, 100):
        t = float(steps["timestamp"].iloc[i])
        rows += [{"timestamp": t, "event_type": "phase_start", "details": {"name": "eval"}},
                 {"timestamp": t + 5.0, "event_type": "phase_end", "details": {"name": "eval"}}]
    d = job(steps=steps, events=events_frame(*rows), config=HF, dialect="huggingface")
    d.job["ended_at"] = T0 + 5 + 40 + 15
    f = one(throughput.overhead(d), "throughput.overhead")
    assert f.evidence["overhead_seconds"] == pytest.approx(15.0)
    assert f.impact_value == pytest.approx(15 / 60 * 100)
    assert (f.config_path, f.current_value_source, f.recommended_value) == ("TrainingArguments.eval_steps",
                                                                            "measured", 200)
    assert throughput.overhead(healthy_job()) == []


def test_monitoring_cost_over_budget() -> None:
    costs = pd.DataFrame({"operation": ["step", "user:eval_samples", "thread:runlens-sampler", "start"],
                          "calls": [1000, 10, 0, 1], "total_seconds": [0.01, 8.0, 0.5, 3.0],
                          "on_training_thread": [True, True, False, True]})
    d = job(steps=steps_frame(100), costs=costs)
    d.job["ended_at"] = T0 + 100
    f = one(throughput.monitoring_cost(d), "throughput.monitoring_cost")
    assert f.impact_value == pytest.approx((8.51) / 100 * 100) and "eval_samples" in f.action
    short = job(steps=steps_frame(100), costs=costs)   # ~15 s wall: no verdict, as the collector
    assert throughput.monitoring_cost(short) == []
    cheap = costs.assign(total_seconds=[0.01, 0.5, 0.5, 3.0])
    d2 = job(steps=steps_frame(100), costs=cheap)
    d2.job["ended_at"] = T0 + 100
    assert throughput.monitoring_cost(d2) == []


# -- training ----------------------------------------------------------------------------------------------

def test_nonfinite_loss_from_the_monitor_marker() -> None:
    n = 100
    loss = 2.0 * np.exp(-np.arange(n) / 30) + 0.1
    loss[60:] = np.nan
    steps = steps_frame(n, loss=loss, learning_rate=0.5)
    steps["x_nonfinite"] = [None] * 60 + [{"loss": "nan"}] * 40
    f = one(training.nonfinite_loss(job(steps=steps, config={"lr": 0.5})), "training.nonfinite")
    assert f.severity == "critical" and f.evidence["step"] == 60 and "step 60" in f.title
    assert (f.config_path, f.current_value, f.recommended_value) == ("lr", 0.5, 0.25)


def test_inf_loss_sizes_the_rate_from_the_measured_growth_and_reports_onset() -> None:
    n = 80
    loss = np.r_[np.full(40, 1.0) + np.random.default_rng(1).normal(0, 0.01, 40), 10.0 ** np.arange(1, 21),
                 np.full(20, np.inf)]
    steps = steps_frame(n, loss=loss, learning_rate=1e-3)
    f = one(training.nonfinite_loss(job(steps=steps, config=HF, dialect="huggingface")), "training.nonfinite")
    assert f.evidence["step"] == 60 and f.evidence["diverging_since_step"] == 40
    # The loss grew ×10 a step: the error ×√10 = 3.16, so lr·λ was 4.16; the rate that puts it at 1 is the
    # config's 3e-4 / 4.16 = 7.2e-5 (rounded down).
    assert f.evidence["growth_per_step"] == pytest.approx(10 ** 0.5) and f.evidence["growth_measured_on"] == "loss"
    assert f.config_path == "TrainingArguments.learning_rate" and f.recommended_value == 7.2e-5
    assert f.expected_effect == {"metric": "failure", "current": True, "predicted": False, "unit": "bool"}
    assert training.loss_spikes(job(steps=steps)) == []   # reported once, by training.nonfinite


def test_nonfinite_quiet_on_finite_run_and_fp16_skips() -> None:
    assert training.nonfinite_loss(healthy_job()) == []
    steps = healthy_job().steps
    g = steps["gradient_norm"].to_numpy().copy()
    g[100] = np.inf
    steps["gradient_norm"] = g
    assert training.nonfinite_loss(job(steps=steps, config={**HF, "fp16": True}, dialect="huggingface")) == []


def test_loss_spikes_recovered_and_diverged() -> None:
    rng = np.random.default_rng(2)
    loss = 1.0 + np.exp(-np.arange(900) / 300) + rng.normal(0, 0.02, 900)
    for s in (200, 450, 700):
        loss[s:s + 8] = 5.0
    f = one(training.loss_spikes(job(steps=steps_frame(900, loss=loss, learning_rate=1e-3))), "training.loss_spikes")
    assert f.severity == "warning" and f.evidence["count"] == 3
    assert [s["step"] for s in f.evidence["spikes"]] == [200, 450, 700]
    assert f.recommended_value == 5e-4
    # The same spikes on a loss that no longer falls: a lower rate would slow it further, so none is set.
    flat = 1.0 + rng.normal(0, 0.02, 900)
    for s in (200, 450, 700):
        flat[s:s + 8] = 5.0
    h = one(training.loss_spikes(job(steps=steps_frame(900, loss=flat, learning_rate=1e-3))), "training.loss_spikes")
    assert h.severity == "warning" and h.recommended_value is None and "warm-up" in h.action
    div = 1.0 + rng.normal(0, 0.02, 400)
    div[300:] = np.linspace(3, 50, 100)
    g = one(training.loss_spikes(job(steps=steps_frame(400, loss=div))), "training.loss_spikes")
    assert g.severity == "critical" and g.evidence["diverged"] and "step 300" in g.title
    assert training.loss_spikes(healthy_job()) == []


def test_noisy_diffusion_loss_is_not_a_spike() -> None:
    """Flow-matching losses swing with the random timestep; single-step outliers are not spikes."""
    rng = np.random.default_rng(3)
    loss = rng.gamma(2.0, 0.1, 3000)
    d = job(steps=steps_frame(3000, loss=loss), config=AITK, dialect="ai-toolkit")
    assert [f for f in training.loss_spikes(d) if f.severity != "info"] == []
    assert training.loss_not_decreasing(d) == []


def test_loss_not_decreasing() -> None:
    rising = np.linspace(1.0, 3.0, 300)
    f = one(training.loss_not_decreasing(job(steps=steps_frame(300, loss=rising, learning_rate=0.1))),
            "training.loss_not_decreasing")
    assert f.severity == "warning" and f.evidence["ratio"] > 1.5 and f.recommended_value == 0.05
    flat = 1.0 + np.random.default_rng(4).normal(0, 0.01, 300)
    assert one(training.loss_not_decreasing(job(steps=steps_frame(300, loss=flat))),
               "training.loss_not_decreasing").severity == "info"
    assert training.loss_not_decreasing(healthy_job()) == []


def test_gradient_always_clipped_uses_config_max_grad_norm() -> None:
    """Clipped at the Trainer's default max_grad_norm: a lower rate only while the loss rises; while it falls
    that is clipping at work (information, no change), and while it is flat a lower rate would slow it more."""
    g = np.r_[np.full(100, 0.5), np.full(100, 3.0)]
    rising = np.linspace(1.0, 3.0, 200)
    d = job(steps=steps_frame(200, loss=rising, gradient_norm=g, learning_rate=2e-4), config=HF,
            dialect="huggingface")
    f = one(training.gradient_norm(d), "training.gradient_norm")
    assert f.evidence["max_grad_norm"] == 1.0 and f.evidence["clipped_share_last_20pct"] == 1.0
    assert f.severity == "warning" and f.evidence["loss_trend"] == "rising"
    assert f.config_path == "TrainingArguments.learning_rate" and f.recommended_value == 1.5e-4  # 3e-4 / 2
    falling = one(training.gradient_norm(job(steps=steps_frame(200, gradient_norm=g, learning_rate=2e-4), config=HF,
                                             dialect="huggingface")), "training.gradient_norm")
    assert (falling.severity, falling.recommended_value, falling.evidence["loss_trend"]) == ("info", None, "falling")
    flat = 1.0 + np.random.default_rng(4).normal(0, 0.01, 200)
    still = one(training.gradient_norm(job(steps=steps_frame(200, loss=flat, gradient_norm=g, learning_rate=2e-4),
                                           config=HF, dialect="huggingface")), "training.gradient_norm")
    assert (still.severity, still.recommended_value, still.evidence["loss_trend"]) == ("info", None, "flat")
    # Lightning without gradient_clip_val: no clipping to saturate
    assert training.gradient_norm(job(steps=steps_frame(200, gradient_norm=g), config=PL, dialect="lightning")) == []


def test_gradient_spikes() -> None:
    g = 1.0 + np.random.default_rng(5).normal(0, 0.05, 400)
    g[[100, 200, 300]] = 20.0
    f = one(training.gradient_norm(job(steps=steps_frame(400, gradient_norm=g))), "training.gradient_norm")
    assert f.evidence["spike_steps"] == [100, 200, 300] and f.title == "Gradient norm unstable"
    assert training.gradient_norm(healthy_job()) == []


# -- logs --------------------------------------------------------------------------------------------------

def _run_logs(d: JobData) -> list[Finding]:
    out, notes = run_rules(d, [r for r in all_rules() if r.family == "logs"])
    assert notes == []
    return out


def test_each_log_category_present_gives_one_finding_with_first_occurrence() -> None:
    steps = steps_frame(50, dt=1.0)
    lines = [LogLine("nccl_timeout", "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
                     "OpType=ALLREDUCE, Timeout(ms)=1800000)", timestamp=T0 + 20.5, line_number=40, count=3),
             LogLine("too_many_open_files", "OSError: [Errno 24] Too many open files", timestamp=T0 + 30),
             LogLine("python_warning", "UserWarning: something", level="warning", timestamp=T0 + 7)]
    d = job(steps=steps, samples=samples_frame(60, used=12.5), logs_=lines, config=HF, dialect="huggingface",
            status="failed", exit_code=1)
    out = _run_logs(d)
    assert sorted(f.id for f in out) == ["logs.nccl_timeout", "logs.python_warning", "logs.too_many_open_files"]
    nccl = one(out, "logs.nccl_timeout")
    assert nccl.severity == "critical" and nccl.evidence["count"] == 3
    assert nccl.evidence["first_step"] == 14 and nccl.evidence["memory_at_time_gb"] == pytest.approx(12.5)
    assert (nccl.config_path, nccl.current_value, nccl.recommended_value) == ("TrainingArguments.ddp_timeout",
                                                                              1800, 3600)
    files = one(out, "logs.too_many_open_files")
    assert (files.config_path, files.recommended_value) == ("shell:ulimit -n", 65536)
    assert one(out, "logs.python_warning").severity == "info"


def test_log_fixes_per_category() -> None:
    d = job(logs_=[LogLine("af_unix_path_too_long", "OSError: AF_UNIX path too long"),
                   LogLine("config_error", "ValueError: --lr must be positive"),
                   LogLine("network_timeout", "wandb: Network error (ReadTimeout), entering retry loop."),
                   LogLine("fp16_overflow", "Gradient overflow. Skipping step", level="warning", count=40),
                   LogLine("dataloader_worker_died", "DataLoader worker (pid 123) is killed by signal: Killed.")],
            config={**PL, "trainer": {**PL["trainer"], "precision": "16-mixed"}}, dialect="lightning",
            status="failed", exit_code=1)
    out = _run_logs(d)
    assert one(out, "logs.af_unix_path_too_long").config_path == "env:TMPDIR"
    cfg = one(out, "logs.config_error")
    assert "--lr must be positive" in cfg.action and cfg.severity == "critical"
    net = one(out, "logs.network_timeout")
    assert (net.config_path, net.recommended_value) == ("env:WANDB_MODE", "offline")
    fp16 = one(out, "logs.fp16_overflow")
    assert (fp16.severity, fp16.config_path, fp16.recommended_value) == ("warning", "trainer.precision", "bf16-mixed")
    dl = one(out, "logs.dataloader_worker_died")
    assert (dl.config_path, dl.current_value, dl.recommended_value) == ("data.num_workers", 6, 0)


def test_owned_log_categories_are_reported_once() -> None:
    text = "RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB"
    d = job(logs_=[LogLine("cuda_oom", text, text=text, timestamp=T0 + 1)], status="failed", exit_code=1)
    findings, _ = run_rules(d)
    assert [f.id for f in findings if f.id.startswith("logs.")] == []
    assert one(findings, "memory.oom").evidence["tried_to_allocate_gb"] == pytest.approx(20 / 1024)


def test_nan_in_log_only_is_a_log_finding() -> None:
    d = job(steps=steps_frame(50), logs_=[LogLine("nan_loss", "Loss is nan, stopping training", timestamp=T0 + 6)],
            config={"learning_rate": 0.02})
    f = one(_run_logs(d), "logs.nan_loss")
    assert f.severity == "critical" and (f.config_path, f.recommended_value) == ("learning_rate", 0.01)


def test_real_parser_output_drives_the_log_rules() -> None:
    """Lines as real runs print them, through runlens.analyze.logparse, into one finding per category."""
    from runlens.analyze.logparse import parse_lines

    lines = [
        "2026-11-22 10:00:01 INFO starting",
        ("[rank1]:[E ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: "
         "WorkNCCL(SeqNum=1532, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600314 "
         "milliseconds before timing out."),
        "Traceback (most recent call last):",
        '  File "loader.py", line 9, in <module>',
        "    open(p)",
        "OSError: [Errno 24] Too many open files: '/data/x.png'",
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "    main()",
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total capacity "
         "of 23.64 GiB of which 101.06 MiB is free. Of the allocated memory 20.1 GiB is allocated by PyTorch, "
         "and 2.9 GiB is reserved by PyTorch but unallocated."),
    ]
    found = parse_lines(lines)
    cats = {f.category for f in found}
    assert {"nccl_timeout", "too_many_open_files", "cuda_oom"} <= cats, cats
    d = job(steps=steps_frame(10), logs_=found, config=HF, dialect="huggingface", status="failed", exit_code=1)
    findings, notes = run_rules(d)
    assert notes == []
    ids = {f.id for f in findings}
    assert {"logs.nccl_timeout", "logs.too_many_open_files", "memory.oom", "memory.fragmentation"} <= ids
    assert "logs.cuda_oom" not in ids
    assert one(findings, "memory.fragmentation").impact_value == pytest.approx(2.9)
    assert one(findings, "memory.oom").evidence["tried_to_allocate_gb"] == pytest.approx(0.5)


def test_collector_oom_suspicion_follows_memory() -> None:
    """`runlens collect` marks a SIGKILL as host_oom_suspected; with memory low it stays a warning."""
    ev = events_frame({"timestamp": T0 + 9, "event_type": "host_oom_suspected",
                       "details": {"exit_code": 137, "signal": "SIGKILL"}})
    low = job(samples=samples_frame(10, used=10.0), events=ev, status="failed", exit_code=137, exit_signal=9)
    f = one(memory.oom(low), "memory.oom")
    assert f.severity == "warning" and f.evidence["occurrences"] == 1 and f.evidence["kind"] == "host"
    high = job(samples=samples_frame(10, used=63.0), events=ev, status="failed", exit_code=137, exit_signal=9)
    assert one(memory.oom(high), "memory.oom").severity == "critical"


@pytest.mark.parametrize("config,dialect", [
    (AITK, "ai-toolkit"), (HF, "huggingface"), (PL, "lightning"),
    ({"trainer": {"callbacks": []}, "model": {"lr": 0.1}, "data": {"batch_size": 8}}, "lightning"),
    ({"lr": 0.1, "batch_size": 8}, "generic"), (None, "generic"),
    ({"monitoring": {"dialect": "huggingface"}, "lr": 1}, "huggingface"),
])
def test_detect_dialect(config: Any, dialect: str) -> None:
    from runlens.core.dialects import detect_dialect

    assert detect_dialect(config) == dialect
