"""Expected effects and the ranking they give, and the values the rules compute from measurements, on the runs
the issue describes: a batch-size ramp that ran out of memory (the config's first batch is not the one that
failed), a slow dataset (the worker count that hides the wait, and what it does), an input-bound run with
memory to spare (no fewer-workers card), a diverging learning rate (sized from the measured growth, clipping
beside it), and severities that follow consequences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from runlens.analyze import effects
from runlens.analyze.analysis import build_analysis, rank_recommendations
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.batches import round_batch
from runlens.analyze.measures.divergence import floor_lr
from runlens.analyze.rules import memory, throughput, training
from runlens.core.settings import Settings

T0 = 1_700_000_000.0


def frame(n: int, *, dt: float = 0.1, start: float = T0 + 5, **cols: Any) -> pd.DataFrame:
    data: dict[str, Any] = {"step": np.arange(n), "timestamp": start + dt * np.arange(1, n + 1),
                            "loss": 2.0 * np.exp(-np.arange(n) / (n / 3)) + 0.1,
                            "step_time_seconds": np.full(n, dt), "data_time_seconds": np.full(n, dt * 0.005)}
    for k, v in cols.items():
        data[k] = np.broadcast_to(np.asarray(v), (n,)).copy() if np.ndim(v) == 0 else np.asarray(v)
    return pd.DataFrame(data)


def samples(ts: np.ndarray, *, total: float = 64.0, used: Any = 20.0, **cols: Any) -> pd.DataFrame:
    n = ts.size
    data: dict[str, Any] = {"id": np.arange(1, n + 1), "timestamp": ts, "total_memory_gb": np.full(n, total),
                            "used_memory_gb": np.broadcast_to(np.asarray(used, dtype=float), (n,)).copy()}
    data["available_memory_gb"] = total - data["used_memory_gb"]
    for k, v in cols.items():
        data[k] = np.broadcast_to(np.asarray(v, dtype=float), (n,)).copy()
    return pd.DataFrame(data)


def events(*rows: dict[str, Any]) -> pd.DataFrame:
    cols = ["id", "timestamp", "event_type", "details", "memory_snapshot_id", "host", "rank", "step"]
    out = [{"id": i + 1, "memory_snapshot_id": None, "host": "h", "rank": None, "step": None, "details": {}, **r}
           for i, r in enumerate(rows)]
    return pd.DataFrame(out, columns=cols)


def job(*, steps: pd.DataFrame, smp: pd.DataFrame | None = None, ev: pd.DataFrame | None = None,
        config: Any = None, dialect: str = "generic", cores: int = 8, **fields: Any) -> JobData:
    smp = smp if smp is not None else samples(np.arange(0.0), used=20.0)
    end = max([T0 + 1] + [float(f["timestamp"].max()) for f in (steps, smp) if len(f)])
    row = {"job_id": "j", "name": "j", "status": "succeeded", "started_at": T0, "ended_at": end, "exit_code": 0,
           "environment": {"cpu_count": cores, "env": {}}, **fields}
    return JobData(job=row, steps=steps, samples=smp, events=ev if ev is not None else events(),
                   gpus=pd.DataFrame(), costs=pd.DataFrame(), log_findings=[], config=config, dialect=dialect,
                   settings=Settings())


def only(findings: list[Finding], rid: str) -> Finding:
    hits = [f for f in findings if f.id == rid]
    assert len(hits) == 1, [f.id for f in findings]
    return hits[0]


# -- effects and ranking -----------------------------------------------------------------------------------

def _f(rid: str, severity: str, eff: dict[str, Any] | None, **kw: Any) -> Finding:
    return Finding(id=rid, severity=severity, title=rid, action="", impact="", category="x", expected_effect=eff,
                   **kw)


def test_ranking_puts_failures_first_then_time_saved_then_memory_and_never_mixes_units() -> None:
    """The issue's slow-dataset run ranked '100% of late steps clipped' above '88% of step time waiting' by
    comparing the raw numbers; in one currency the time saved wins, and failures come before both."""
    clipped = _f("training.gradient_norm", "warning", effects.effect("clipped_share", 1.0, None, "ratio"),
                 impact_value=100.0, impact_unit="percent_steps")
    waiting = _f("throughput.input_bound", "warning", effects.effect("step_time_seconds", 0.095, 0.017),
                 impact_value=88.0, impact_unit="percent_time")
    stalls = _f("throughput.stalls", "warning", effects.effect("wall_share", 0.05, 0.0))
    memory_lever = _f("memory.workers", "warning", effects.effect("peak_memory_gb", 30.0, 20.0),
                      impact_value=10.0, impact_unit="GB", memory_lever=True, recommended_value=0)
    diverged = _f("training.nonfinite", "critical", effects.failure(True))
    hang = _f("hangs.stall", "critical", effects.failure(None))
    info_wait = _f("x.info_time", "info", effects.effect("step_time_seconds", 0.1, 0.05))
    ranked = rank_recommendations([clipped, info_wait, memory_lever, stalls, waiting, hang, diverged])
    assert [f.id for f in ranked] == ["training.nonfinite", "hangs.stall", "throughput.input_bound",
                                      "throughput.stalls", "memory.workers", "training.gradient_norm",
                                      "x.info_time"]
    # 0.095 -> 0.017 s a step saves 82 % of every hour; 5 % of the wall time lost to stalls saves 3 minutes.
    assert effects.seconds_saved_per_hour(waiting.expected_effect) == pytest.approx(3600 * (1 - 0.017 / 0.095))
    assert effects.seconds_saved_per_hour(stalls.expected_effect) == pytest.approx(180.0)
    assert effects.memory_saved_gb(memory_lever.expected_effect) == pytest.approx(10.0)


def test_memory_saving_ranks_only_under_pressure() -> None:
    """GiB freed is a currency while memory is short; an information-level lever ranks with the rest."""
    calm = _f("memory.workers", "info", effects.effect("peak_memory_gb", 5.0, 4.0))
    short = _f("memory.batch", "warning", effects.effect("peak_memory_gb", 60.0, 50.0))
    assert effects.tier(calm) == effects.TIER_OTHER and effects.tier(short) == effects.TIER_MEMORY


def test_effect_text() -> None:
    eff = effects.effect("step_time_seconds", 0.095, 0.0172, also=[effects.effect("data_wait_share", 0.85, 0.0)])
    assert effects.effect_text(eff) == "step time 95 ms -> ~17 ms; data wait 85% -> ~0%"
    assert effects.effect_text(effects.failure(True, also=[effects.effect("peak_memory_gb", 23.5, 12.0)])) == \
        "run fails -> completes; peak memory 23.5 GiB -> ~12.0 GiB"
    assert effects.effect_text(effects.failure(None)) == "run fails (no prediction measured)"
    assert effects.effect_text(None) == ""


def test_every_recommendation_of_the_document_has_an_expected_effect() -> None:
    """A run with memory pressure, a data wait and a loss that rose: each card predicts something."""
    n = 300
    steps = frame(n, dt=0.2, data_time_seconds=0.06, loss=np.linspace(1.0, 3.0, n), learning_rate=1e-3,
                  batch_size=8, gradient_norm=np.r_[np.full(150, 0.5), np.full(150, 3.0)])
    smp = samples(T0 + np.arange(0.0, 70.0), used=60.0, worker_memory_gb=6.0, worker_count=3,
                  main_process_memory_gb=8.0)
    doc = build_analysis(job(steps=steps, smp=smp, config={"num_workers": 3, "batch_size": 8, "lr": 1e-3,
                                                           "max_grad_norm": 1.0}))
    recs = doc["recommendations"]
    assert recs and all(r["expected_effect"] and r["expected_effect"]["metric"] for r in recs), recs
    assert {"throughput.input_bound", "memory.workers", "memory.peak"} <= {r["id"] for r in recs}


# -- workers ---------------------------------------------------------------------------------------------

def _thread_cpu(steps: pd.DataFrame, busy: float) -> pd.DataFrame:
    """The training thread's CPU clock on every fifth step, ``busy`` CPU seconds a wall second."""
    ts = steps["timestamp"].to_numpy()
    clock = np.where(np.arange(len(ts)) % 5 == 0, (ts - ts[0]) * busy, np.nan)
    return steps.assign(thread_cpu_seconds=clock)


def test_slow_dataset_gets_enough_workers_to_hide_the_wait_and_says_what_they_do() -> None:
    """0 workers, ~80 ms to read a batch, 15 ms of compute (the issue's slow dataset): one worker more cannot
    hide it; ceil(80 / 15) + 1 = 7 can, on a 2-core machine too, because reading waits rather than computes."""
    steps = _thread_cpu(frame(200, dt=0.095, data_time_seconds=0.080), busy=0.15 / 0.95 * 0.1 / 0.1)
    d = job(steps=steps, config={"num_workers": 0, "batch_size": 4}, cores=2)
    f = only(throughput.input_bound(d), "throughput.input_bound")
    assert f.evidence["loading"] == "io" and f.recommended_value == 7
    eff = f.expected_effect
    assert eff["metric"] == "step_time_seconds" and eff["current"] == pytest.approx(0.095)
    assert eff["predicted"] == pytest.approx(0.015)   # 80 / 7 = 11.4 ms < 15 ms: the wait is gone
    assert eff["also"][0] == {"metric": "data_wait_share", "current": pytest.approx(80 / 95), "predicted": 0.0,
                              "unit": "ratio"}
    assert "95 ms -> ~15 ms with 7 workers" in f.impact and "per hour" in f.impact


def test_cpu_bound_loading_is_capped_by_the_free_cores_and_the_prediction_says_so() -> None:
    """Decoding on the CPU (the thread stays busy while it waits): 4 cores leave 3 for workers, which cannot
    hide 80 ms of work behind 15 ms; the prediction is what 3 workers do, not the ceiling."""
    steps = _thread_cpu(frame(200, dt=0.095, data_time_seconds=0.080), busy=1.0)
    f = only(throughput.input_bound(job(steps=steps, config={"num_workers": 0}, cores=4)), "throughput.input_bound")
    assert f.evidence["loading"] == "cpu" and f.recommended_value == 3
    assert f.expected_effect["predicted"] == pytest.approx(0.080 / 3)   # 26.7 ms: the workers pace the loop


def test_a_few_percent_of_data_wait_is_information() -> None:
    steps = frame(200, dt=0.1, data_time_seconds=0.007)
    f = only(throughput.input_bound(job(steps=steps, config={"num_workers": 2})), "throughput.input_bound")
    assert f.severity == "info"


def test_input_bound_run_with_memory_to_spare_is_not_told_to_cut_workers() -> None:
    """The issue's demo: 80 % input-bound with 4 workers and 8 % of memory used was told to cut workers to 2."""
    steps = frame(200, dt=0.5, data_time_seconds=0.4)
    smp = samples(T0 + np.arange(0.0, 110.0), used=5.0, worker_memory_gb=2.7, worker_count=4,
                  main_process_memory_gb=1.5)
    d = job(steps=steps, smp=smp, config={"num_workers": 4})
    assert memory.workers(d) == []
    f = only(throughput.input_bound(d), "throughput.input_bound")
    assert f.recommended_value > 4   # t_b = 4 × 0.5 s = 2 s against 0.1 s of work: more workers, not fewer


def test_workers_under_pressure_while_input_bound_state_the_trade_off() -> None:
    steps = frame(200, dt=0.1, data_time_seconds=0.03)
    smp = samples(T0 + np.arange(0.0, 30.0), used=62.0, worker_memory_gb=3.0, worker_count=3,
                  main_process_memory_gb=8.0)
    f = only(memory.workers(job(steps=steps, smp=smp, config={"num_workers": 3})), "memory.workers")
    assert f.recommended_value == 1 and "costs step time" in f.impact
    also = {a["metric"]: a for a in f.expected_effect.get("also", [])}
    assert also["step_time_seconds"]["predicted"] > also["step_time_seconds"]["current"]


def test_workers_under_pressure_drop_only_as_many_as_the_memory_needs() -> None:
    """4 workers of 1 GiB each on a 16 GiB machine at 90 %: one fewer brings it to ~84 %, two to ~78 %: under
    the 80 % the lever aims for."""
    steps = frame(200, dt=0.1, data_time_seconds=0.0005)
    smp = samples(T0 + np.arange(0.0, 30.0), total=16.0, used=14.4, worker_memory_gb=4.0, worker_count=4,
                  main_process_memory_gb=6.0)
    f = only(memory.workers(job(steps=steps, smp=smp, config={"num_workers": 4})), "memory.workers")
    assert f.recommended_value == 2
    assert f.expected_effect == {"metric": "peak_memory_gb", "current": pytest.approx(14.4),
                                 "predicted": pytest.approx(12.4), "unit": "GiB"}


# -- batch size ------------------------------------------------------------------------------------------

def _ramp(batches: list[int], steps_each: int, peaks: list[float], total: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps doubling their batch every ``steps_each`` steps, 1 s apart; GPU samples at each batch's peak."""
    bs = np.repeat(batches, steps_each)
    st = frame(len(bs), dt=1.0, batch_size=bs)
    ts = st["timestamp"].to_numpy()
    used = np.repeat(peaks, steps_each)
    smp = samples(ts - 0.5, used=10.0, gpu_memory_used_gb=used, gpu_memory_total_gb=total)
    return st, smp


def test_batch_ramp_oom_recommends_the_largest_batch_that_ran_and_shows_the_config_value() -> None:
    """The issue's H200 run: 8192 -> 262144 ran, 524288 failed (no step at it), the config says 8192. The card
    reduced 'to 225724' from 8192; now: 524288 (inferred, the ramp's next) -> 262144, the largest that ran."""
    batches = [8192, 16384, 32768, 65536, 131072, 262144]
    peaks = [3.0, 5.0, 9.0, 17.0, 33.0, 65.0]
    st, smp = _ramp(batches, 4, peaks, 140.0)
    t_oom = float(st["timestamp"].iloc[-1]) + 0.6
    msg = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 16.00 GiB. GPU 0 has a total capacity "
           "of 139.8 GiB of which 60.0 GiB is free.")
    ev = events({"timestamp": t_oom, "event_type": "exception", "details": {"type": "OutOfMemoryError",
                                                                           "message": msg}})
    hf = {"per_device_train_batch_size": 8192, "learning_rate": 1e-3}
    d = job(steps=st, smp=smp, ev=ev, config=hf, dialect="huggingface", status="failed", exit_code=1)
    f = only(memory.batch_size(d), "memory.batch_size")
    assert f.config_path == "TrainingArguments.per_device_train_batch_size"
    assert (f.current_value, f.current_value_source, f.config_value) == (524288, "measured", 8192)
    assert f.recommended_value == 262144 and f.evidence["failed_batch_inferred"]
    assert f.expected_effect["metric"] == "failure" and f.expected_effect["predicted"] is False
    also = f.expected_effect["also"][0]
    assert also["metric"] == "peak_memory_gb" and also["predicted"] == pytest.approx(65.0)
    assert "Batch 262144 ran in this run" in f.impact and "failed" in f.impact


def test_oom_inside_a_batch_that_had_run_never_goes_below_the_one_before() -> None:
    """4096 ran its steps, 8192 ran two and failed: not below 4096, a multiple of 8, and under 8192."""
    bs = np.r_[np.full(10, 4096), np.full(2, 8192)]
    st = frame(len(bs), dt=1.0, batch_size=bs)
    ts = st["timestamp"].to_numpy()
    smp = samples(ts - 0.5, used=10.0, gpu_memory_used_gb=np.r_[np.full(10, 12.0), np.full(2, 20.0)],
                  gpu_memory_total_gb=24.0)
    ev = events({"timestamp": float(ts[-1]) + 0.5, "event_type": "cuda_oom",
                 "details": {"message": "CUDA out of memory. Tried to allocate 2.00 GiB"}})
    f = only(memory.batch_size(job(steps=st, smp=smp, ev=ev, config={"batch_size": 4096}, status="failed",
                                   exit_code=1)), "memory.batch_size")
    # The samples saw 20 GiB at 8192 (4 GiB static + 1/512 GiB a sample), but the step needed 2 GiB more than
    # that: 18 GiB above the static for 8192 samples. 0.85 × 24 = 20.4 GiB then fits 7463 -> 7456.
    assert f.current_value == 8192 and 4096 <= f.recommended_value < 8192 and f.recommended_value % 8 == 0
    assert f.recommended_value == 7456 and f.evidence["basis"] == "fit"


def test_round_batch() -> None:
    assert round_batch(225724, [8192, 131072, 262144]) == 225720
    assert round_batch(7, [4, 8]) == 7 and round_batch(133, [128, 132]) == 132


# -- learning rate ---------------------------------------------------------------------------------------

def test_diverging_rate_sized_from_the_growth_with_clipping_beside_it() -> None:
    """lr 5.0, clipping off, the gradient norm growing ×11 a step until the loss overflows: the rate that puts
    lr·λ at 1 is 5 / 12; the old card's fixed 10× cut (0.5) diverged again."""
    n = 30
    g = 2.0 * 11.0 ** np.arange(n, dtype=float)
    loss = g ** 2
    loss[20:] = np.inf
    g[20:] = np.nan
    st = frame(n, loss=loss, gradient_norm=g, learning_rate=5.0)
    d = job(steps=st, config={"learning_rate": 5.0, "max_grad_norm": 0.0, "batch_size": 64})
    found = training.nonfinite_loss(d)
    f = only(found, "training.nonfinite")
    assert f.evidence["growth_per_step"] == pytest.approx(11.0) and f.evidence["growth_measured_on"] == "gradient_norm"
    assert f.recommended_value == floor_lr(5.0 / 12) == 0.41
    assert f.expected_effect == effects.failure(True)
    clip = only(found, "training.clipping")
    assert (clip.config_path, clip.current_value, clip.recommended_value) == ("max_grad_norm", 0.0, 1.0)


def test_warmup_divergence_uses_the_rate_at_which_growth_began() -> None:
    """Warm-up 0 -> 1e-2 over 50 steps; the loss starts growing at step 30 (lr 6e-3) and overflows: the
    schedule is scaled so its peak sits at half the rate where growth began."""
    n = 60
    lr = np.minimum(np.arange(n) / 50, 1.0) * 1e-2
    loss = np.r_[np.linspace(2.0, 1.0, 30), 1.0 * 1.3 ** np.arange(1, 21), np.full(10, np.inf)]
    st = frame(n, loss=loss, learning_rate=lr)
    f = only(training.nonfinite_loss(job(steps=st, config={"learning_rate": 1e-2})), "training.nonfinite")
    assert f.evidence["growth_onset_step"] == 29 and f.evidence["learning_rate_at_onset"] == pytest.approx(5.8e-3)
    assert f.recommended_value == floor_lr(1e-2 * min(5.8e-3 / 2 / 9.8e-3, 0.5, 9.3e-3 / (1 + 1.3 ** 0.5) / 9.8e-3))


def test_floor_lr() -> None:
    assert floor_lr(0.4201) == 0.42 and floor_lr(7.2115e-5) == 7.2e-5 and floor_lr(0.099999) == 0.099
