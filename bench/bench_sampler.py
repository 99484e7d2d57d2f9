"""Benchmark one system-sampler pass with 8 live DataLoader workers (issue 2, section 4: "measure what one
sample costs with 8 workers alive"). Results are quoted in the issue note, not asserted in tests.

Method: a real torch DataLoader with ``num_workers=8`` (fork, as on Linux by default; each worker holds a
copy-on-write view of a 256 MB dataset and a little private memory) iterates in a background thread of this
process, so the sampler sees the tree a training run has: this process as the main one and 8 ``pt_data_worker``
children. Each arm calls ``SystemSampler.sample()`` ``--passes`` times on the main thread and measures the CPU
time of that thread around each call (``time.thread_time``: user + system, so the kernel's page-table walk
behind ``smaps_rollup`` counts), and reports the median and p90 in milliseconds:

  full-pss     PSS of every worker on every pass (``pss_budget=None``): the worst case.
  rss-only     workers by RSS (what over-counts; shown only as the floor of the walk without smaps).
  no-children  the main process alone (host memory, CPU, swap, PSI, GPU probe).
  budgeted     the default (full PSS at most 0.5% of one core, RSS deltas in between) at a real cadence:
               one pass every ``--interval`` s for ``--budget-seconds`` s; mean CPU per pass is what a run pays.

Also the tree walk alone: runlens's ``/proc/<pid>/task/*/children`` walk against psutil's
``children(recursive=True)`` (which reads every process on the host).

    python bench/bench_sampler.py [--passes 50] [--workers 8] [--interval 1.0] [--budget-seconds 30] [--json]

Writes bench/results/bench_sampler-<time>.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runlens.collect.gpu import GpuProbe
from runlens.collect.procs import _linux_children
from runlens.collect.sampler import SystemSampler


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def start_loader(workers: int, dataset_mb: int) -> tuple[threading.Event, threading.Thread]:
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Data(Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.x = torch.randn(dataset_mb * (1 << 20) // 4 // 256, 256)   # shared copy-on-write after fork

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.x[i] * 2

    loader = DataLoader(Data(), batch_size=64, shuffle=True, num_workers=workers, persistent_workers=True,
                        prefetch_factor=4)
    stop = threading.Event()
    started = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            for _ in loader:
                started.set()
                if stop.is_set():
                    break
                time.sleep(0.002)

    thread = threading.Thread(target=consume, name="bench-loader", daemon=True)
    thread.start()
    started.wait(120)
    time.sleep(2.0)   # every worker running and holding its prefetch
    return stop, thread


def cpu_ms_per_pass(sampler: SystemSampler, passes: int) -> list[float]:
    sampler.sample()   # warm: Process objects cached, first PSS
    out = []
    for _ in range(passes):
        t0 = time.thread_time()
        sampler.sample()
        out.append((time.thread_time() - t0) * 1000)
    return out


def budgeted(interval: float, seconds: float) -> dict[str, Any]:
    sampler = SystemSampler(gpu=GpuProbe())
    sampler.sample()
    costs = []
    full = 0
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        t0 = time.thread_time()
        sampler.sample()
        costs.append((time.thread_time() - t0) * 1000)
        full += sampler.last_tree is not None and sampler.last_tree.pss_seconds is not None
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {"passes": len(costs), "full_pss_passes": full, "mean_ms": statistics.fmean(costs),
            "median_ms": statistics.median(costs), "max_ms": max(costs),
            "share_of_one_core": statistics.fmean(costs) / 1000 / interval}


def tree_walks(passes: int) -> dict[str, float]:
    me = os.getpid()
    proc = psutil.Process(me)
    out: dict[str, float] = {}
    for name, fn in (("proc_children_walk_ms", lambda: _walk(me)),
                     ("psutil_children_recursive_ms", lambda: proc.children(recursive=True))):
        fn()
        samples = []
        for _ in range(passes):
            t0 = time.thread_time()
            fn()
            samples.append((time.thread_time() - t0) * 1000)
        out[name] = statistics.median(samples)
    out["processes_on_host"] = len(psutil.pids())
    return out


def _walk(root: int) -> list[int]:
    seen, stack = [], [root]
    while stack:
        pid = stack.pop()
        seen.append(pid)
        stack.extend(_linux_children(pid))
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", type=int, default=50)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--dataset-mb", type=int, default=256)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--budget-seconds", type=float, default=30.0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="This DataLoader will create")   # more workers than cores: on purpose

    stop, thread = start_loader(args.workers, args.dataset_mb)
    try:
        probe = SystemSampler(gpu=GpuProbe(), pss_budget=None)
        probe.sample()
        tree = probe.last_tree
        assert tree is not None and tree.worker_count == args.workers, f"expected {args.workers} workers: {tree}"
        arms: dict[str, Any] = {}
        for name, sampler in (
            ("full-pss", SystemSampler(gpu=GpuProbe(), pss_budget=None)),
            ("rss-only", SystemSampler(gpu=GpuProbe(), worker_memory="rss")),
            ("no-children", SystemSampler(gpu=GpuProbe(), include_children=False)),
        ):
            ms = cpu_ms_per_pass(sampler, args.passes)
            arms[name] = {"median_ms": statistics.median(ms), "p90_ms": _pct(ms, 0.9), "passes": len(ms)}
            if name == "full-pss":
                reading = sampler.last_tree
                assert reading is not None
                arms[name]["worker_memory_gib"] = (reading.worker_bytes or 0) / 2**30
                arms[name]["worker_rss_sum_gib"] = sum(
                    psutil.Process(pid).memory_info().rss for pid in reading.worker_pids) / 2**30
                arms[name]["main_rss_gib"] = (reading.main_rss_bytes or 0) / 2**30
        arms["budgeted"] = budgeted(args.interval, args.budget_seconds)
        walks = tree_walks(args.passes)
    finally:
        stop.set()
        thread.join(10)

    result = {"workers": args.workers, "dataset_mb": args.dataset_mb, "arms": arms, "tree_walk": walks,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()}}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_sampler-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"one sampler pass, {args.workers} live DataLoader workers, CPU ms of the sampling thread "
          f"(median of {args.passes}):")
    for name in ("full-pss", "rss-only", "no-children"):
        a = arms[name]
        print(f"  {name:12s} median {a['median_ms']:7.2f} ms   p90 {a['p90_ms']:7.2f} ms")
    fp = arms["full-pss"]
    print(f"  workers: PSS {fp['worker_memory_gib']:.2f} GiB vs summed RSS {fp['worker_rss_sum_gib']:.2f} GiB "
          f"(main RSS {fp['main_rss_gib']:.2f} GiB)")
    b = arms["budgeted"]
    print(f"  budgeted (default), one pass every {args.interval:g} s for {args.budget_seconds:g} s: "
          f"mean {b['mean_ms']:.2f} ms/pass, {b['full_pss_passes']}/{b['passes']} passes with full PSS, "
          f"{b['share_of_one_core']:.2%} of one core")
    print(f"tree walk alone: /proc children {walks['proc_children_walk_ms']:.3f} ms, psutil "
          f"children(recursive) {walks['psutil_children_recursive_ms']:.3f} ms "
          f"({walks['processes_on_host']:.0f} processes on the host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
