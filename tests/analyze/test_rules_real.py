"""Rules on REAL recorded runs (issue 3, "What must be shown").

Each test runs a small workload in a subprocess that really causes the condition on this CPU machine, recorded
through the real ``runlens.Monitor`` into a SQLite file, then loads the job with the analyzer's loader and runs
the rules. The workload measures the same quantity independently (worker PSS with psutil, time spent inside
``__getitem__``, the first non-finite loss, the process's RSS when the allocation failed) and the test asserts the
finding, its severity, its config path, and that its quantified impact is within 25 % of what was measured.

The workloads live in this file and run as ``python tests/analyze/test_rules_real.py WORKLOAD DB OUT.json``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TOLERANCE = 0.25
SAMPLE_INTERVAL = 0.2
HERE = Path(__file__).resolve()


# -- workloads (run in a subprocess) -------------------------------------------------------------------------

def _write(out: str, payload: dict[str, Any]) -> None:
    Path(out).write_text(json.dumps(payload))


def _children_pss_gb() -> tuple[float, int]:
    """Σ PSS of this process's children (the DataLoader workers), measured independently of runlens."""
    import psutil

    total, n = 0, 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_full_info().pss
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**30, n


WORKER_MB = 250


def _hold_memory(worker_id: int) -> None:
    """worker_init_fn: each worker keeps ~250 MB of its own, touched, private memory (like a dataset copy)."""
    import numpy as np

    global _HELD
    _HELD = np.ones(WORKER_MB * 2**20 // 8)


def workload_workers(db: str, out: str) -> None:
    """(a) three DataLoader workers that each hold ~250 MB: the worker-memory lever."""
    import threading

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import runlens

    torch.set_num_threads(1)
    config = {"job": "extension", "config": {"name": "workers", "process": [{
        "type": "sd_trainer", "train": {"batch_size": 16, "lr": 0.01},
        "datasets": [{"folder_path": "/data", "num_workers": 3}]}]}}
    ds = TensorDataset(torch.randn(4096, 32), torch.randn(4096, 1))
    loader = DataLoader(ds, batch_size=16, num_workers=3, worker_init_fn=_hold_memory, persistent_workers=True)
    model = torch.nn.Linear(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    peak = [0.0, 0]
    stop = threading.Event()

    def measure() -> None:   # off the training thread, so measuring does not slow the steps
        while not stop.wait(0.3):
            pss, n = _children_pss_gb()
            if pss > peak[0]:
                peak[:] = [pss, n]

    with runlens.Monitor(name="workers", config=config, db=db, sample_interval=SAMPLE_INTERVAL) as mon:
        threading.Thread(target=measure, daemon=True).start()
        step = 0
        while step < 50:
            for x, y in mon.loader(loader):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.step(step, loss=loss.detach(), batch_size=16)
                step += 1
                # ~80 ms a step: the workers keep up, so the run is mostly not input-bound (a batch still
                # costs ~1-2 ms of inter-process transfer in next(), more when the machine is busy).
                time.sleep(0.08)
                if step >= 50:
                    break
        stop.set()
        job_id = mon.job_id
    _write(out, {"job_id": job_id, "worker_pss_gb": peak[0], "workers": peak[1]})


class _SlowDataset:
    """(b) a dataset that sleeps in __getitem__ and records how long it really spent there."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay, self.spent = n, delay, 0.0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        import torch

        t0 = time.perf_counter()
        time.sleep(self.delay)
        item = (torch.randn(64), torch.randn(1))
        self.spent += time.perf_counter() - t0
        return item


def workload_slow_data(db: str, out: str) -> None:
    """(b) num_workers=0 and a slow __getitem__: the run is input-bound."""
    import torch
    from torch.utils.data import DataLoader

    import runlens

    torch.set_num_threads(1)
    ds = _SlowDataset(10_000, 0.01)
    loader = DataLoader(ds, batch_size=4, num_workers=0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {"batch_size": 4, "num_workers": 0, "learning_rate": 0.01}
    spent_at: list[tuple[float, float]] = []   # (data seconds so far, perf_counter) at each step
    with runlens.Monitor(name="slow-data", config=config, db=db, sample_interval=SAMPLE_INTERVAL) as mon:
        for step, (x, y) in enumerate(mon.loader(loader)):
            for _ in range(40):   # ~20-30 ms of real compute per step
                loss = torch.nn.functional.mse_loss(model(x.repeat(16, 1)), y.repeat(16, 1))
                opt.zero_grad()
                loss.backward()
                opt.step()
            mon.step(step, loss=loss.detach(), batch_size=4)
            spent_at.append((ds.spent, time.perf_counter()))
            if step >= 60:
                break
        job_id = mon.job_id
    # The same window the rule uses: steps after the first five (warm-up).
    (d0, t0), (d1, t1) = spent_at[5], spent_at[-1]
    _write(out, {"job_id": job_id, "data_share": (d1 - d0) / (t1 - t0), "cpu_count": os.cpu_count()})


def workload_diverge(db: str, out: str) -> None:
    """(c) a real model trained with SGD: lr 0.05 converges, then lr 10 makes the loss explode to inf/NaN."""
    import math

    import torch

    import runlens

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(256, 16)
    y = x @ torch.randn(16, 1) + 0.1 * torch.randn(256, 1)
    model = torch.nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    jump_step, first_bad = 40, None
    config = {"learning_rate": 10.0, "warmup_lr": 0.05, "warmup_steps": jump_step, "batch_size": 256}
    with runlens.Monitor(name="diverge", config=config, db=db, sample_interval=SAMPLE_INTERVAL) as mon:
        for step in range(200):
            if step == jump_step:
                for g in opt.param_groups:
                    g["lr"] = 10.0
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            opt.step()
            value = loss.item()
            mon.step(step, loss=value, lr=opt.param_groups[0]["lr"], grad_norm=gn.item(), batch_size=256)
            if first_bad is None and not math.isfinite(value):
                first_bad = step
            if first_bad is not None and step >= first_bad + 10:
                break
            time.sleep(0.005)
        job_id = mon.job_id
    _write(out, {"job_id": job_id, "first_nonfinite_step": first_bad, "jump_step": jump_step})


def workload_rlimit(db: str, out: str) -> None:
    """(d) an address-space limit (RLIMIT_AS) the run really exceeds: torch's CPU allocator fails."""
    import resource

    import psutil
    import torch

    import runlens

    chunk = 256 * 2**20
    held: list[Any] = []
    proc = psutil.Process()
    with runlens.Monitor(name="rlimit", config={"batch_size": 1}, db=db, sample_interval=SAMPLE_INTERVAL) as mon:
        vms = proc.memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + 1536 * 2**20, resource.RLIM_INFINITY))
        try:
            for step in range(100):
                rss = proc.memory_info().rss
                _write(out, {"job_id": mon.job_id, "rss_before_failure_gb": rss / 2**30,
                             "chunk_gb": chunk / 2**30, "step": step - 1})
                held.append(torch.ones(chunk // 4))   # float32, touched: resident, not just reserved
                mon.step(step, loss=float(len(held)), batch_size=1)
                time.sleep(0.05)
        finally:
            pass   # the exception leaves the with-block: the Monitor records it, the process exits 1


def workload_healthy(db: str, out: str) -> None:
    """(e) nothing wrong: a learnable task, data ready in memory, a steady pace."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    import runlens

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(4096, 32)
    y = torch.sin(x[:, :1]) + 0.05 * torch.randn(4096, 1)
    ds = TensorDataset(x, y)
    # Whole batches by fancy indexing: loading costs microseconds, as with data already in memory.
    loader = DataLoader(ds, sampler=BatchSampler(RandomSampler(ds), batch_size=64, drop_last=True), batch_size=None)
    model = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {"learning_rate": 0.01, "batch_size": 64, "num_workers": 0, "max_grad_norm": 1.0}
    with runlens.Monitor(name="healthy", config=config, db=db, sample_interval=SAMPLE_INTERVAL) as mon:
        step = 0
        for _epoch in range(10):
            for xb, yb in mon.loader(loader):
                for _ in range(12):   # ~20 ms of compute a step, a realistic step next to a DataLoader's
                    loss = torch.nn.functional.mse_loss(model(xb), yb)
                    opt.zero_grad()
                    loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                mon.step(step, loss=loss.detach(), lr=0.01, grad_norm=gn, batch_size=64)
                step += 1
            if step >= 250:
                break
        job_id = mon.job_id
    _write(out, {"job_id": job_id, "steps": step})


WORKLOADS: dict[str, Callable[[str, str], None]] = {
    "workers": workload_workers, "slow_data": workload_slow_data, "diverge": workload_diverge,
    "rlimit": workload_rlimit, "healthy": workload_healthy,
}


# -- running and loading -------------------------------------------------------------------------------------

def run_workload(name: str, tmp_path: Path, env: dict[str, str], expect_rc: int = 0) -> tuple[str, dict[str, Any]]:
    db = f"sqlite:///{tmp_path / 'runlens.db'}"
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(HERE), name, db, str(out)], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == expect_rc, proc.stdout + proc.stderr
    return db, json.loads(out.read_text())


def load(db: str, job_id: str) -> Any:
    """The job as the analyzer loads it."""
    from runlens.analyze.load import load_job
    from runlens.store import open_store

    store = open_store(db, create=False)
    try:
        return load_job(store, job_id)
    finally:
        store.close()


def analyse(data: Any) -> list[Any]:
    from runlens.analyze.registry import run_rules

    findings, notes = run_rules(data)
    assert notes == [], notes
    return findings


def one(findings: list[Any], rid: str) -> Any:
    hits = [f for f in findings if f.id == rid]
    assert len(hits) == 1, [(f.id, f.severity, f.impact) for f in findings]
    return hits[0]


def within(value: float, measured: float, tol: float = TOLERANCE) -> bool:
    return abs(value - measured) <= tol * abs(measured)


pytestmark = [pytest.mark.slow, pytest.mark.needs_torch]   # every workload trains a small torch model


# -- the tests -----------------------------------------------------------------------------------------------

def test_workers_holding_memory(tmp_path: Path, child_env: dict[str, str]) -> None:
    """(a) 3 workers × ~250 MB: memory.workers says "Saves ~X GB" within 25 % of the workers' measured PSS,
    at the ai-toolkit path of the config the run passed (and at each other dialect's path)."""
    from runlens.analyze import measures as m_

    db, m = run_workload("workers", tmp_path, child_env)
    assert m["workers"] == 3 and m["worker_pss_gb"] > 0.6, m
    data = load(db, m["job_id"])
    assert data.dialect == "ai-toolkit"
    findings = analyse(data)
    dw = m_.data_wait(data)
    if dw is not None and dw.share >= 0.05:
        # A busy machine made the steps wait for data: with memory not short, fewer workers would only slow
        # the run, so no card asks for them.
        assert [f.id for f in findings if f.id == "memory.workers"] == []
        return
    f = one(findings, "memory.workers")
    # No memory pressure on this machine, so this is advice, not an alarm.
    assert f.severity == "info" and f.memory_lever
    assert f.config_path == "config.process[0].datasets[0].num_workers"
    rec = 0
    assert (f.current_value, f.current_value_source, f.recommended_value) == (3, "config", rec)
    measured = m["worker_pss_gb"] * (3 - rec) / 3
    assert within(f.impact_value, measured), (f.impact, m)
    assert f.impact.startswith("Saves ~") and "GiB/worker" in f.impact
    assert f.evidence["worker_count"] == 3
    # The same measured run under the other dialects' configs names their own keys.
    from runlens.analyze.rules import memory

    for dialect, config, path in (
            ("huggingface", {"dataloader_num_workers": 3, "per_device_train_batch_size": 16},
             "TrainingArguments.dataloader_num_workers"),
            ("lightning", {"trainer": {"max_epochs": 1}, "data": {"num_workers": 3}}, "data.num_workers")):
        data.config, data.dialect = config, dialect
        g = one(memory.workers(data), "memory.workers")
        assert (g.config_path, g.current_value, g.recommended_value) == (path, 3, rec)
        assert within(g.impact_value, measured)
    print(f"\nworkers: measured PSS {m['worker_pss_gb']:.3f} GB of 3 workers, data wait "
          f"{f.evidence['data_wait_share']:.1%}; finding: {f.title}: {f.impact} (value {f.impact_value:.3f} "
          f"vs measured {measured:.3f})")


def test_slow_dataset_is_input_bound(tmp_path: Path, child_env: dict[str, str]) -> None:
    """(b) __getitem__ sleeps, num_workers=0: throughput.input_bound with the data-wait share within 25 %."""
    db, m = run_workload("slow_data", tmp_path, child_env)
    data = load(db, m["job_id"])
    f = one(analyse(data), "throughput.input_bound")
    assert f.severity == "warning"
    share = f.evidence["data_wait_share"]
    assert within(share, m["data_share"]), (share, m)
    assert f.impact_value == pytest.approx(share * 100)
    assert (f.config_path, f.current_value, f.current_value_source) == ("num_workers", 0, "config")
    # The items sleep: loading waits, it does not compute, so the cores do not cap the workers, and enough of
    # them to produce a batch within a step's own work, plus one, are recommended.
    ev = f.evidence
    assert ev["loading"] == "io", ev
    assert f.recommended_value == math.ceil(ev["batch_seconds"] / ev["compute_seconds"]) + 1
    assert f.expected_effect["metric"] == "step_time_seconds"
    assert f.expected_effect["predicted"] == pytest.approx(ev["compute_seconds"])
    print(f"\nslow data: measured share {m['data_share']:.3f}; finding {share:.3f}: {f.title}")


def test_too_high_learning_rate_diverges(tmp_path: Path, child_env: dict[str, str]) -> None:
    """(c) SGD at lr 10 makes the loss overflow: training.nonfinite is critical at the step the run measured."""
    db, m = run_workload("diverge", tmp_path, child_env)
    assert m["first_nonfinite_step"] is not None, m
    data = load(db, m["job_id"])
    findings = analyse(data)
    f = one(findings, "training.nonfinite")
    assert f.severity == "critical"
    assert f.evidence["step"] == m["first_nonfinite_step"]
    assert f.evidence["diverging_since_step"] == pytest.approx(m["jump_step"], abs=3)
    assert (f.config_path, f.current_value, f.current_value_source) == ("learning_rate", 10.0, "config")
    assert 0 < f.recommended_value < 10.0
    assert [x.id for x in findings if x.id == "training.loss_spikes"] == []   # one divergence, reported once
    print(f"\ndiverge: measured first non-finite step {m['first_nonfinite_step']}, lr jump at {m['jump_step']}; "
          f"finding: {f.title}; {f.impact}")


def test_rlimit_as_out_of_memory(tmp_path: Path, child_env: dict[str, str]) -> None:
    """(d) RLIMIT_AS exceeded: memory.oom from the exception event, with the step, the failed allocation and
    the memory the process held within 25 % of its own RSS reading."""
    db, m = run_workload("rlimit", tmp_path, child_env, expect_rc=1)
    data = load(db, m["job_id"])
    assert data.job["status"] == "failed"
    f = one(analyse(data), "memory.oom")
    assert f.severity == "critical" and f.evidence["kind"] == "cpu" and f.evidence["phase"] == "train"
    assert f.evidence["step"] == m["step"]
    assert f.evidence["tried_to_allocate_gb"] == pytest.approx(m["chunk_gb"])
    assert within(f.evidence["process_memory_gb"], m["rss_before_failure_gb"]), (f.evidence, m)
    assert "DefaultCPUAllocator" in f.evidence["message"]
    assert "RLIMIT_AS" in f.evidence["likely_cause"] and "ulimit -v" in f.action
    print(f"\nrlimit: measured RSS {m['rss_before_failure_gb']:.3f} GB before the failing "
          f"{m['chunk_gb']:.2f} GB allocation; finding: {f.title}; {f.impact}")


def test_healthy_run_has_no_warning_or_critical(tmp_path: Path, child_env: dict[str, str]) -> None:
    """(e) a healthy short run: no warning or critical finding (no crying wolf)."""
    db, m = run_workload("healthy", tmp_path, child_env)
    data = load(db, m["job_id"])
    assert len(data.steps) == m["steps"] and len(data.samples) > 3
    findings = analyse(data)
    assert [(f.id, f.severity, f.impact) for f in findings if f.severity in ("warning", "critical")] == []


if __name__ == "__main__":
    WORKLOADS[sys.argv[1]](sys.argv[2], sys.argv[3])
