"""Benchmark the write path under a training loop that never lets go of the GIL (results are quoted, not
asserted in tests).

Two loops, each with a real, started ``runlens.Monitor`` writing to a SQLite file:

1. **tight**: ``mon.step(i, loss=float)`` back to back, 1,000,000 times, in a pure-Python loop. Targets: steps
   reach the disk during the loop within ~2 s of being logged, the slowest ``step()`` call under 5 ms, the mean
   within 2x of the median, ``close()`` under 1 s, no rows lost.
2. **busy**: each step does ~1.9 ms of pure-Python work (the GIL held the whole time) and then calls
   ``mon.step``, for ~10 s (~500 steps/s). Target: at every moment >= 95% of the steps logged more than 2 s ago
   are on disk.

Why it is measured this way: the writer thread competes for the GIL with a training thread that never
releases it, and every hand-over waits up to ``sys.getswitchinterval()`` (5 ms). A write path that releases
and re-takes the GIL once per row (the sqlite3 module does around each row of an ``executemany``) falls
behind without bound here, while a quiet benchmark would look fine.

Method: every call is timed with ``perf_counter_ns``. The wall time of every ``MARK``-th step is kept. A
separate *process* (so it takes no GIL from the loop) polls the database every 0.1 s for the newest stored
step; from its readings come the lag from ``step()`` to commit and the share of steps older than 2 s that are
on disk. Full garbage-collector passes on the training thread are timed through ``gc.callbacks``. The training
thread's own CPU time is read around the loop and the load average before and after: on a shared machine the
loop's wall time, and the slowest calls, include time the OS gave to other processes.

    python bench/bench_tightloop.py [--steps 1000000] [--busy-seconds 10] [--work-ms 1.9] [--only tight|busy]

Writes bench/results/bench_tightloop-<time>.json (gitignored).
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
POLL_INTERVAL = 0.1
OLD_SECONDS = 2.0


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- the poller (a child process) ---------------------------------------------------------------------------

def poll(db: str, out: str, stop_file: str) -> None:
    """Child process: every POLL_INTERVAL, append ``wall_time newest_stored_step`` to ``out`` until
    ``stop_file`` exists."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    with open(out, "w") as f:
        while not os.path.exists(stop_file):
            try:
                row = conn.execute("SELECT step FROM step_metrics ORDER BY id DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:
                row = None
            f.write(f"{time.time()} {row[0] if row else -1}\n")
            f.flush()
            time.sleep(POLL_INTERVAL)


class _Poller:
    def __init__(self, db: Path, workdir: Path) -> None:
        self.out = workdir / "polls.txt"
        self.stop_file = workdir / "stop"
        self.proc = subprocess.Popen([sys.executable, __file__, "--poll", str(db), str(self.out),
                                      str(self.stop_file)])

    def stop(self) -> list[tuple[float, int]]:
        self.stop_file.touch()
        self.proc.wait(10)
        readings = []
        for line in self.out.read_text().splitlines():
            t, s = line.split()
            readings.append((float(t), int(s)))
        return readings


# -- garbage-collector pauses on the training thread ----------------------------------------------------------

class _GcTimer:
    def __init__(self) -> None:
        self.main = threading.get_ident()
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self.main:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._t0)

    def __enter__(self) -> "_GcTimer":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self)

    def summary(self) -> dict[str, Any]:
        full = self.pauses[2]
        return {"full_passes": len(full), "full_max_ms": max(full, default=0.0) * 1e3,
                "full_total_ms": sum(full) * 1e3,
                "all_total_ms": sum(sum(v) for v in self.pauses.values()) * 1e3}


# -- one loop -------------------------------------------------------------------------------------------------

def _lag_figures(readings: list[tuple[float, int]], marks: list[float], mark_every: int, loop_end: float,
                 ) -> dict[str, Any]:
    """From the poller's readings (wall time, newest stored step) during the loop: the lag of the newest stored
    step behind now, and the share of steps logged more than OLD_SECONDS ago that are stored."""
    lags: list[float] = []
    shares: list[float] = []
    behind: list[int] = []
    for t, newest in readings:
        if t > loop_end or not marks or t < marks[0]:
            continue
        logged = bisect.bisect_right(marks, t) * mark_every          # steps logged by t (to MARK)
        old = bisect.bisect_right(marks, t - OLD_SECONDS) * mark_every  # steps logged by t - 2 s
        stored = newest + 1
        if newest >= 0:
            k = min(len(marks) - 1, newest // mark_every)
            lags.append(max(0.0, t - marks[k]))
        else:
            lags.append(t - marks[0])
        if old > 0:
            shares.append(min(1.0, stored / old))
            behind.append(max(0, logged - stored))
    lags.sort()
    during = [newest + 1 for t, newest in readings if t <= loop_end]
    return {
        "stored_at_loop_end": during[-1] if during else 0,
        "polls": len(lags),
        "lag_median_s": statistics.median(lags) if lags else None,
        "lag_p99_s": _percentile(lags, 99) if lags else None,
        "lag_max_s": lags[-1] if lags else None,
        "old_share_min": min(shares) if shares else None,
        "old_share_mean": statistics.fmean(shares) if shares else None,
        "polls_with_old_share_ge_95": (sum(s >= 0.95 for s in shares) / len(shares)) if shares else None,
        "steps_in_memory_max": max(behind) if behind else None,
    }


class _StatementRuns:
    """Counts the statements SQLite runs (its trace hook fires once per run: once per row under executemany).
    Each run releases the GIL and takes it back. Costs a Python call per run, so it is off by default."""

    def __init__(self) -> None:
        self.runs = 0

    def __enter__(self) -> "_StatementRuns":
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", self._on_connect)
        return self

    def __exit__(self, *exc: Any) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.set_trace_callback(self._trace)

    def _trace(self, _sql: str) -> None:
        self.runs += 1


def run_loop(kind: str, steps: int, workdir: Path, body: Callable[[], None] | None,
             mark_every: int, sample_interval: float, count_statements: bool = False) -> dict[str, Any]:
    import runlens

    db = workdir / f"{kind}.db"
    counter = _StatementRuns().__enter__() if count_statements else None
    mon = runlens.Monitor(name=f"bench-{kind}", db=str(db), sample_interval=sample_interval,
                          analyze_on_complete=False).start()
    writer = mon._writer
    poller = _Poller(db, workdir)
    ns = time.perf_counter_ns
    wall = time.time
    step = mon.step
    durations = [0] * steps
    marks: list[float] = []
    mark = marks.append
    mask = mark_every - 1
    assert mark_every & mask == 0, "mark_every must be a power of two"
    load_before = os.getloadavg()
    with _GcTimer() as gct:
        cpu_start = time.thread_time()
        t_start = time.perf_counter()
        if body is None:
            for i in range(steps):
                t0 = ns()
                step(i, loss=0.5)
                durations[i] = ns() - t0
                if i & mask == 0:
                    mark(wall())
        else:
            for i in range(steps):
                body()
                t0 = ns()
                step(i, loss=0.5)
                durations[i] = ns() - t0
                if i & mask == 0:
                    mark(wall())
        loop_end = wall()
        loop_seconds = time.perf_counter() - t_start
        loop_cpu = time.thread_time() - cpu_start
        t_close = time.perf_counter()
        mon.close()
        close_seconds = time.perf_counter() - t_close
    if counter is not None:
        counter.__exit__()
    readings = poller.stop()
    conn = sqlite3.connect(str(db))
    stored = conn.execute("SELECT count(*) FROM step_metrics").fetchone()[0]
    overflow = conn.execute("SELECT count(*) FROM training_events WHERE event_type = 'buffer_overflow'"
                            ).fetchone()[0]
    conn.close()
    us = sorted(d / 1000.0 for d in durations)
    out: dict[str, Any] = {
        "steps": steps, "loop_seconds": loop_seconds, "steps_per_second": steps / loop_seconds,
        "loop_cpu_seconds": loop_cpu, "load_average": [load_before[0], os.getloadavg()[0]],
        "close_seconds": close_seconds, "run_seconds": loop_seconds + close_seconds,
        "rows_stored": stored, "rows_lost": steps - stored, "buffer_overflow_events": overflow,
        "step_us": {"median": statistics.median(us), "mean": statistics.fmean(us), "p99": _percentile(us, 99),
                    "p999": _percentile(us, 99.9), "max": us[-1],
                    "calls_over_1ms": len(us) - bisect.bisect_right(us, 1000.0),
                    "calls_over_5ms": len(us) - bisect.bisect_right(us, 5000.0)},
        "gc_training_thread": gct.summary(),
        "writer": {"flushes": writer.stats.flushes, "flush_seconds": writer.stats.flush_seconds,
                   "cpu_seconds": writer.stats.cpu_seconds, "steps_dropped": writer.stats.steps_dropped,
                   "statement_runs": counter.runs if counter is not None else None,
                   "cpu_us_per_stored_row": writer.stats.cpu_seconds / max(stored, 1) * 1e6},
        **_lag_figures(readings, marks, mark_every, loop_end),
    }
    out["mean_over_median"] = out["step_us"]["mean"] / max(out["step_us"]["median"], 1e-9)
    return out


def _calibrated_work(ms: float) -> Callable[[], None]:
    """A pure-Python body that holds the GIL for about ``ms`` milliseconds of CPU. Calibrated on the thread's
    CPU clock (the median of several tries), so a busy machine that preempts the process does not skew it."""
    def spin(n: int) -> int:
        s = 0
        for j in range(n):
            s += j
        return s

    n = 200_000
    tries = []
    for _ in range(7):
        t0 = time.thread_time()
        spin(n)
        tries.append(time.thread_time() - t0)
    per_ms = n / (statistics.median(tries) * 1e3)
    k = max(1, int(per_ms * ms))
    return lambda: spin(k) and None


def _show(name: str, r: dict[str, Any]) -> None:
    s = r["step_us"]
    lag = r["lag_max_s"]
    share = r["old_share_min"]
    load = r["load_average"]
    print(f"{name}: {r['steps']} steps in {r['loop_seconds']:.1f}s ({r['steps_per_second']:.0f}/s; the training "
          f"thread's CPU {r['loop_cpu_seconds']:.2f}s; load average {load[0]:.1f} -> {load[1]:.1f}), "
          f"close {r['close_seconds']:.2f}s, rows lost {r['rows_lost']}, overflow events "
          f"{r['buffer_overflow_events']}")
    print(f"  step() us: median {s['median']:.2f}  mean {s['mean']:.2f} ({r['mean_over_median']:.1f}x)  "
          f"p99 {s['p99']:.1f}  p99.9 {s['p999']:.1f}  max {s['max']:.0f}; calls over 1 ms {s['calls_over_1ms']}, "
          f"over 5 ms {s['calls_over_5ms']}")
    print(f"  stored when the loop ended: {r['stored_at_loop_end']} of {r['steps']}")
    print(f"  commit lag during the loop: median {r['lag_median_s']}s, max {lag}s; steps older than "
          f"{OLD_SECONDS:.0f}s on disk: min {share}, mean {r['old_share_mean']}, polls >= 95%: "
          f"{r['polls_with_old_share_ge_95']}; most steps in memory {r['steps_in_memory_max']}")
    w = r["writer"]
    runs = "" if w["statement_runs"] is None else f", {w['statement_runs']} SQLite statement runs"
    print(f"  writer: {w['flushes']} transactions, {w['flush_seconds']:.2f}s in them, {w['cpu_seconds']:.2f}s CPU, "
          f"({w['cpu_us_per_stored_row']:.1f} us a stored row), {w['steps_dropped']} steps dropped{runs}")
    g = r["gc_training_thread"]
    print(f"  full GC passes on the training thread: {g['full_passes']}, max {g['full_max_ms']:.0f} ms, "
          f"total {g['full_total_ms']:.0f} ms")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--poll":
        poll(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--busy-seconds", type=float, default=10.0)
    parser.add_argument("--work-ms", type=float, default=1.9)
    parser.add_argument("--sample-interval", type=float, default=5.0)
    parser.add_argument("--only", choices=("tight", "busy"))
    parser.add_argument("--count-statements", action="store_true",
                        help="count the statements SQLite runs (slows the writer where it runs one per row)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results: dict[str, Any] = {
        "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
        "cpus": os.cpu_count(), "switch_interval_s": sys.getswitchinterval(),
    }
    with tempfile.TemporaryDirectory(prefix="runlens-bench-tight-") as tmp:
        if args.only in (None, "tight"):
            workdir = Path(tmp, "tight")
            workdir.mkdir()
            results["tight"] = run_loop("tight", args.steps, workdir, None, 1024, args.sample_interval,
                                        args.count_statements)
            _show("tight loop", results["tight"])
        if args.only in (None, "busy"):
            workdir = Path(tmp, "busy")
            workdir.mkdir()
            work = _calibrated_work(args.work_ms)
            t0 = time.thread_time()
            for _ in range(50):
                work()
            per_step = (time.thread_time() - t0) / 50
            n = max(100, int(args.busy_seconds / per_step))
            results["busy"] = run_loop("busy", n, workdir, work, 1, args.sample_interval, args.count_statements)
            results["busy"]["work_ms_per_step"] = per_step * 1e3
            _show(f"busy loop ({per_step * 1e3:.2f} ms of GIL-held CPU work a step)", results["busy"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_tightloop-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    print(f"saved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
