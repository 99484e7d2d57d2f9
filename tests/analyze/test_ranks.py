"""Jobs of several ranks: the straggler is named from per-rank evidence (CPU, data wait, arrival), a balanced
job has none; memory imbalance and the rank that stopped first; goodput, monitoring cost and the budget are
per rank, never summed over ranks; steps are counted per rank."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sample_jobs import T0, job_data

from runlens.analyze.analysis import build_analysis, monitoring_cost
from runlens.analyze.health import goodput, monitoring_seconds
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.ranks import rank_excess, rank_pace
from runlens.analyze.rules.ranks import memory_imbalance, stopped_first, straggler
from runlens.analyze.rules.throughput import monitoring_cost as budget_rule
from runlens.store import Store
from runlens.watch.terminal import jobs_table, ranks_text

STEP = 0.030           # wall seconds per step, the same on every rank (the all-reduce aligns them)
BASE_CPU = 0.002       # training-thread CPU per step of a rank that waits for the others


def _ranks_job(ranks: int = 4, steps: int = 300, *, slow: int | None = None, extra: float = 0.0,
               signal: str = "cpu", hosts: list[str] | None = None, jitter: float = 0.0002, seed: int = 0,
               status: str = "succeeded", last_steps: dict[int, int] | None = None,
               costs: pd.DataFrame | None = None, events: list[dict[str, Any]] | None = None,
               samples: pd.DataFrame | None = None) -> JobData:
    """``ranks`` ranks of ``steps`` steps each, as the Monitor of each rank writes them: the same step times on
    every rank, a CPU reading every 10 steps; rank ``slow`` does ``extra`` seconds more per step, seen as
    ``signal`` (its training thread's CPU, its data wait, or its late arrival at ``mon.step()``)."""
    rng = np.random.default_rng(seed)
    hosts = hosts or ["node-a"] * ranks
    rows = []
    for r in range(ranks):
        n = (last_steps or {}).get(r, steps - 1) + 1
        step = np.arange(n)
        ts = T0 + 10.0 + (step + 1) * STEP + rng.normal(0, jitter, n)
        cpu_step = BASE_CPU + rng.normal(0, jitter / 4, n).clip(-BASE_CPU / 2, BASE_CPU / 2)
        data = np.full(n, 0.001)
        if r == slow:
            if signal == "cpu":
                cpu_step = cpu_step + extra
            elif signal == "data":
                data = data + extra
            elif signal == "arrival":
                ts = ts + extra
        cpu = 3.0 + np.cumsum(cpu_step)
        reading = np.where(step % 10 == 9, cpu, np.nan)
        rows.append(pd.DataFrame({"step": step, "timestamp": ts, "step_time_seconds": STEP,
                                  "data_time_seconds": data, "rank": r, "thread_cpu_seconds": reading}))
    steps_frame = pd.concat(rows).sort_values("timestamp", kind="stable").reset_index(drop=True)
    attached = [{"timestamp": T0 + 1.0, "event_type": "monitor_attached", "details": {}, "rank": r,
                 "host": hosts[r]} for r in range(ranks)]
    data = job_data(steps=steps_frame, costs=costs, samples=samples,
                    job={"status": status, "ended_at": T0 + 10.0 + steps * STEP + 5.0})
    data.events = pd.DataFrame(attached + (events or []),
                               columns=["timestamp", "event_type", "details", "rank", "host"])
    data.events["rank"] = pd.to_numeric(data.events["rank"])
    return data


# -- the straggler ----------------------------------------------------------------------------------------

def test_the_rank_whose_thread_computes_while_the_others_wait_is_named_with_its_host() -> None:
    data = _ranks_job(4, slow=2, extra=0.012, hosts=["node-a", "node-a", "node-b", "node-b"])
    (f,) = straggler(data)
    assert f.id == "ranks.straggler" and f.severity == "warning"
    assert f.evidence["rank"] == 2 and f.evidence["host"] == "node-b" and f.evidence["signal"] == "cpu"
    assert f.evidence["seconds_per_step"] == pytest.approx(0.012, rel=0.05)
    assert f.evidence["lost_seconds"] == pytest.approx(0.012 * 300, rel=0.05)
    assert "rank 2 (host node-b)" in f.title and "3 ranks back by 12 ms per step" in f.title
    table = {row["rank"]: row for row in f.evidence["per_rank"]}
    assert table[2]["busy_share"] == pytest.approx((BASE_CPU + 0.012) / STEP, rel=0.05)
    assert table[0]["busy_share"] == pytest.approx(BASE_CPU / STEP, rel=0.1)
    assert {"data_seconds", "step_seconds", "arrival_lag", "cpu_per_step"} <= set(table[0])


def test_a_balanced_job_has_no_straggler() -> None:
    for seed in range(5):
        data = _ranks_job(8, seed=seed, jitter=0.001)
        assert straggler(data) == [], seed
        assert abs(rank_excess(data)[0].seconds_per_step) < 0.05 * STEP


def test_a_few_percent_of_a_step_is_info_and_jitter_is_nothing() -> None:
    (f,) = straggler(_ranks_job(2, slow=1, extra=0.06 * STEP))
    assert f.severity == "info" and f.evidence["rank"] == 1
    assert straggler(_ranks_job(2, slow=1, extra=0.02 * STEP)) == []


def test_a_rank_waiting_longer_for_its_batches_is_the_straggler() -> None:
    (f,) = straggler(_ranks_job(4, slow=3, extra=0.010, signal="data"))
    assert f.evidence["rank"] == 3 and f.evidence["signal"] == "data"
    assert re.search(r"waits 10(\.0)? ms longer per step for its batches", f.action), f.action


def test_a_rank_arriving_late_is_named_only_against_ranks_on_its_own_host() -> None:
    (f,) = straggler(_ranks_job(4, slow=1, extra=0.008, signal="arrival"))
    assert f.evidence["rank"] == 1 and f.evidence["signal"] == "arrival"
    # One rank per host: a constant offset between two machines' clocks is not a straggler.
    assert straggler(_ranks_job(2, slow=1, extra=0.008, signal="arrival", hosts=["a", "b"])) == []


def test_cpu_spent_inside_a_checkpoint_phase_is_not_straggling() -> None:
    """Rank 0 saves a checkpoint while the others wait at a barrier: the throughput rules count that phase."""
    phase_at = T0 + 10.0 + 100 * STEP
    events = [{"timestamp": phase_at, "event_type": "phase_start", "details": {"name": "save"}, "rank": 0},
              {"timestamp": phase_at + 50 * STEP, "event_type": "phase_end", "details": {"name": "save"}, "rank": 0}]
    data = _ranks_job(4, events=events)
    # 1.5 s of CPU during the phase on rank 0 only.
    s = data.steps
    inside = (s["rank"] == 0) & (s["timestamp"] > phase_at + 10 * STEP)
    s.loc[inside, "thread_cpu_seconds"] += 1.5
    assert straggler(data) == []


def test_a_single_rank_job_gets_no_rank_findings() -> None:
    data = _ranks_job(1, status="failed")
    assert rank_pace(data) == [] and straggler(data) == [] and stopped_first(data) == []
    assert memory_imbalance(data) == []


# -- memory -----------------------------------------------------------------------------------------------

def _memory_samples(peaks: list[float], total: float = 80.0) -> pd.DataFrame:
    rows = [{"id": i * 2 + k, "timestamp": T0 + 20.0 + k, "rank": r, "host": "node-a", "cuda_reserved_gb": v * k,
             "gpu_memory_total_gb": total, "used_memory_gb": 50.0}
            for i, (r, v) in enumerate(enumerate(peaks)) for k in (0.5, 1.0)]
    return pd.DataFrame(rows)


def test_a_rank_far_above_the_others_memory_is_flagged() -> None:
    (f,) = memory_imbalance(_ranks_job(4, samples=_memory_samples([72.0, 40.0, 41.0, 40.5])))
    assert f.id == "ranks.memory_imbalance" and f.evidence["rank"] == 0 and f.severity == "warning"
    assert f.evidence["others_median_gb"] == pytest.approx(40.5)
    assert "torch.cuda.set_device(local_rank)" in f.action
    (f,) = memory_imbalance(_ranks_job(4, samples=_memory_samples([40.0, 40.0, 55.0, 40.5])))
    assert f.evidence["rank"] == 2 and f.severity == "info"   # 69% of the device: not the one that binds yet
    assert memory_imbalance(_ranks_job(4, samples=_memory_samples([40.0, 41.0, 40.2, 40.5]))) == []


def test_a_gpu_far_above_the_others_is_flagged_per_device() -> None:
    samples = pd.DataFrame({"id": [1, 2], "timestamp": [T0 + 20, T0 + 40], "host": ["node-a"] * 2})
    gpus = pd.DataFrame({"sample_id": [1, 1, 1, 1, 2, 2, 2, 2], "device_index": [0, 1, 2, 3] * 2,
                         "timestamp": [T0 + 20] * 4 + [T0 + 40] * 4,
                         "memory_used_gb": [20.0, 18.0, 18.0, 18.0, 23.5, 20.0, 20.1, 20.0],
                         "memory_total_gb": [24.0] * 8})
    data = _ranks_job(4, samples=samples)
    data.gpus = gpus
    (f,) = memory_imbalance(data)
    assert f.evidence["device"] == 0 and f.evidence["key"] == "GPU 0" and f.severity == "warning"


# -- the rank that stopped first ---------------------------------------------------------------------------

def test_when_a_job_hangs_the_rank_whose_last_step_is_earliest_is_named() -> None:
    hang = [{"timestamp": T0 + 100.0, "event_type": "hang_suspected", "details": {"seconds_since_progress": 60}}]
    data = _ranks_job(8, status="timed_out", last_steps={5: 118, **{r: 119 for r in range(8) if r != 5}},
                      events=hang, hosts=["a"] * 4 + ["b"] * 4)
    (f,) = stopped_first(data)
    assert f.evidence["rank"] == 5 and f.evidence["host"] == "b" and f.evidence["last_step"] == 118
    assert f.title == "Rank 5 (host b) stopped first, after step 118; the other ranks reached step 119"
    assert stopped_first(_ranks_job(8, status="succeeded")) == []
    assert stopped_first(_ranks_job(8, status="failed")) == []   # all ranks at the same step: nobody first


# -- goodput and monitoring cost per rank ------------------------------------------------------------------

def _costs(ranks: int, *, start: float = 0.5, step: float = 0.01, user: dict[int, float] | None = None) -> pd.DataFrame:
    rows = []
    for r in range(ranks):
        rows += [{"operation": "start", "calls": 1, "total_seconds": start, "on_training_thread": True, "rank": r,
                  "host": "node-a"},
                 {"operation": "step", "calls": 300, "total_seconds": step, "on_training_thread": True, "rank": r,
                  "host": "node-a"},
                 {"operation": "thread:runlens-writer", "calls": 0, "total_seconds": 0.2,
                  "on_training_thread": False, "rank": r, "host": "node-a"}]
        if user and r in user:
            rows.append({"operation": "user:eval_samples", "calls": 10, "total_seconds": user[r],
                         "on_training_thread": True, "rank": r, "host": "node-a"})
    rows.append({"operation": "thread:runlens-collect-sampler", "calls": 5, "total_seconds": 0.1,
                 "on_training_thread": False, "rank": None, "host": None})
    return pd.DataFrame(rows)


def test_goodput_is_per_rank_the_typical_rank_reported_and_the_worst_named() -> None:
    one = _ranks_job(1, costs=_costs(1))
    many = _ranks_job(160, steps=40, costs=_costs(160))
    many_steps = many.steps
    slow = many_steps["rank"] == 7
    many_steps.loc[slow, "data_time_seconds"] = 0.02   # rank 7 waits for data: it has the worst goodput
    g1, g = goodput(one), goodput(many)
    assert "ranks" not in g1 and "rank" not in g1
    # Each rank's 0.5 s start-up happened side by side: 0.51 s of monitoring, not 160 x 0.51 = 82 s.
    assert g["lost_seconds"]["monitoring"] == pytest.approx(0.51)
    assert g["ratio"] == pytest.approx(goodput(_ranks_job(1, steps=40, costs=_costs(1)))["ratio"], rel=0.05)
    assert g["ranks"]["count"] == 160 and g["ranks"]["worst_rank"] == 7
    assert g["ranks"]["worst_ratio"] < g["ratio"]
    assert len(g["ranks"]["by_rank"]) == 160
    assert g["productive_seconds"] + sum(g["lost_seconds"].values()) == pytest.approx(g["wall_seconds"])


def test_monitoring_time_is_the_typical_ranks_and_the_budget_is_judged_per_rank() -> None:
    steps = 3000   # 90 s of steps: long enough for a verdict on the budget
    many = _ranks_job(160, steps=steps, costs=_costs(160, user={r: 1.0 for r in range(160)}))
    assert monitoring_seconds(many) == pytest.approx(1.51)
    assert monitoring_seconds(many, include_one_off=False) == pytest.approx(1.01)
    assert budget_rule(many) == []   # 1.2% per rank; the old sum over 160 ranks read 180%
    wall = 10.0 + steps * STEP + 5.0
    rows = {r["operation"]: r for r in monitoring_cost(many, wall)}
    assert rows["start"]["processes"] == 160 and rows["start"]["share_of_wall"] == pytest.approx(0.5 / wall)
    hot = _ranks_job(8, steps=steps, costs=_costs(8, user={3: 9.0}))
    (f,) = budget_rule(hot)
    assert f.evidence["rank"] == 3 and "on rank 3" in f.title and f.evidence["ranks_over_budget"] == 1
    assert f.evidence["monitoring_seconds"] == pytest.approx(9.21)


def test_the_analysis_counts_steps_once_and_names_the_ranks() -> None:
    doc = build_analysis(_ranks_job(4, slow=1, extra=0.01, costs=_costs(4)))
    s = doc["summary"]
    assert s["steps_completed"] == 300 and s["ranks"] == 4
    assert s["goodput"]["ranks"]["count"] == 4
    assert any(r["id"] == "ranks.straggler" and r["evidence"]["rank"] == 1 for r in doc["recommendations"])


# -- steps per rank in the store and the terminal -----------------------------------------------------------

def test_jobs_count_steps_per_rank(store: Store) -> None:
    single = store.create_job(name="one", created_at=T0)
    ddp = store.create_job(name="ddp", created_at=T0 + 1)
    with store.begin() as conn:
        store.insert_steps(conn, single, [{"step": i, "timestamp": T0 + i} for i in range(50)])
        store.insert_steps(conn, ddp, [{"step": i, "timestamp": T0 + i, "rank": r} for r in range(2)
                                       for i in range(200)])
    jobs = {j["name"]: j for j in store.list_jobs()}
    assert (jobs["ddp"]["steps"], jobs["ddp"]["ranks"], jobs["ddp"]["max_step"]) == (200, 2, 199)
    assert (jobs["one"]["steps"], jobs["one"]["ranks"]) == (50, 1)
    table = jobs_table(store.list_jobs())
    assert "200 x 2 ranks" in table and " 50 " in table
    assert [j["name"] for j in store.list_jobs(limit=1)] == ["ddp"]
    progress = store.rank_progress(ddp)
    assert [(p["rank"], p["steps"], p["last_step"]) for p in progress] == [(0, 200, 199), (1, 200, 199)]


def test_status_names_the_ranks_behind() -> None:
    ranks = [{"rank": r, "last_step": 119, "last_at": T0} for r in range(64)]
    assert ranks_text(ranks) == "64, all at step 119"
    ranks[3]["last_step"] = 118
    assert ranks_text(ranks) == "64: rank 3 at step 118 (stopped first), the other 63 at 119"
