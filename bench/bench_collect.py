"""Benchmark the collect path (issue 2's targets; results are quoted, not asserted in tests).

1. Training-thread cost of ``mon.step()`` with 4 scalars (loss, lr, grad_norm, batch_size), next to the floor:
   a bare ``list.append`` of a tuple. Targets: median <= 2 µs, p99 <= 20 µs.
   Method: a real, started Monitor (writer flushing to SQLite and the sampler running in the background, as in a
   run). Every call is timed on its own with ``perf_counter_ns``; the median cost of an empty timing pair (the
   timer's own overhead) is subtracted. Because one call is close to the clock's resolution, a second figure
   times blocks of 1,000 calls and divides (a mean per block, no timer overhead). Rounds of the monitor and of
   the baseline are interleaved; per-call medians and p99 are over all calls of all rounds. The loop calls
   step() back to back, which is harsher than a real loop: the writer thread converts and inserts the same
   rows at the same time and competes for the GIL.

2. Sustained writer throughput to SQLite (rows/s), next to raw ``sqlite3.executemany`` into the same schema
   (the same table and indexes, made by ``open_store``; the same pragmas: WAL, synchronous=NORMAL). Target:
   >= 50% of raw. Method: a producer thread appends raw step tuples (as ``mon.step`` does) as fast as it can;
   the BatchWriter converts them with the Monitor's converter and writes them with its normal wake-ups and
   batching; the clock stops when ``close()`` returns (everything committed). Raw inserts ready-made tuples in
   transactions of 2,000 rows (the writer's ``flush_rows``). Runs are interleaved; medians are reported.

    python bench/bench_collect.py [--calls 200000] [--rows 200000] [--rounds 5] [--json]

Writes bench/results/bench_collect-<time>.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BLOCK = 1000


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def _timer_overhead_ns(n: int = 200_000) -> float:
    ns = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = ns()
        t1 = ns()
        samples.append(t1 - t0)
    return statistics.median(samples)


def _per_call(fn: Callable[[int], None], n: int, overhead_ns: float) -> list[float]:
    """Per-call cost in µs with the timer's own overhead removed."""
    ns = time.perf_counter_ns
    out = [0.0] * n
    for i in range(n):
        t0 = ns()
        fn(i)
        t1 = ns()
        out[i] = max(0.0, (t1 - t0 - overhead_ns) / 1000.0)
    return out


def _per_block(fn: Callable[[int], None], n: int) -> list[float]:
    """Mean cost per call (µs) of each block of BLOCK calls."""
    pc = time.perf_counter
    out = []
    for start in range(0, n - BLOCK + 1, BLOCK):
        t0 = pc()
        for i in range(start, start + BLOCK):
            fn(i)
        out.append((pc() - t0) / BLOCK * 1e6)
    return out


def bench_step(calls: int, rounds: int, workdir: Path) -> dict[str, Any]:
    import runlens

    overhead = _timer_overhead_ns()
    per_round = max(BLOCK, calls // rounds)
    results: dict[str, dict[str, list[float]]] = {
        name: {"per_call": [], "per_block": [], "round_medians": []} for name in ("list.append", "mon.step")}
    mon = runlens.Monitor(name="bench-step", db=str(workdir / "step.db"), analyze_on_complete=False).start()
    floor: list[tuple[Any, ...]] = []
    append = floor.append
    step = mon.step

    def baseline(i: int) -> None:
        append((i, 0.5, 1e-4, 1.0, 8))

    def monitor(i: int) -> None:
        step(i, loss=0.5, lr=1e-4, grad_norm=1.0, batch_size=8)

    try:
        for _ in range(rounds):
            for name, fn in (("list.append", baseline), ("mon.step", monitor)):
                per_call = _per_call(fn, per_round, overhead)
                results[name]["per_call"].extend(per_call)
                results[name]["round_medians"].append(statistics.median(per_call))
                results[name]["per_block"].extend(_per_block(fn, per_round))
                floor.clear()
    finally:
        mon.close()
    out: dict[str, Any] = {"timer_overhead_ns": overhead, "timed_calls_per_variant": per_round * rounds,
                           "block_calls_per_variant": len(results["mon.step"]["per_block"]) * BLOCK}
    for name, r in results.items():
        values = sorted(r["per_call"])
        out[name] = {
            "median_us": statistics.median(values),
            "p90_us": _percentile(values, 90),
            "p99_us": _percentile(values, 99),
            "p999_us": _percentile(values, 99.9),
            "max_us": values[-1],
            "round_medians_us": r["round_medians"],
            "block_mean_median_us": statistics.median(r["per_block"]),
            "block_mean_p99_us": _percentile(sorted(r["per_block"]), 99),
        }
    out["ratio_median"] = out["mon.step"]["median_us"] / max(out["list.append"]["median_us"], 1e-9)
    out["ratio_block_mean"] = out["mon.step"]["block_mean_median_us"] / out["list.append"]["block_mean_median_us"]
    return out


_STEP_SQL = ("INSERT INTO step_metrics (job_id, step, timestamp, loss, batch_size, gradient_norm, learning_rate, "
             "step_time_seconds, data_time_seconds, rank, tokens, extras) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


def _fresh_store(path: Path) -> tuple[Any, str]:
    from runlens.store import open_store

    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = open_store(f"sqlite:///{path}")
    return store, store.create_job(name="bench-writer")


def run_raw(path: Path, rows: int, batch: int = 2000) -> float:
    store, job_id = _fresh_store(path)
    store.close()
    now = time.time()
    params = [(job_id, i, now + i * 1e-3, 0.5, 8, 1.0, 1e-4, 0.1, 0.01, None, None, None) for i in range(rows)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        conn.execute("BEGIN")
        conn.executemany(_STEP_SQL, params[start:start + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    count = conn.execute("SELECT count(*) FROM step_metrics").fetchone()[0]
    conn.close()
    assert count == rows, count
    return rows / elapsed


def run_writer(path: Path, rows: int) -> float:
    import runlens
    from runlens.store.writer import BatchWriter

    store, job_id = _fresh_store(path)
    converter = runlens.Monitor(name="bench-converter")._convert_step  # never started: only its converter
    writer = BatchWriter(store, job_id, step_converter=converter)
    pc = time.perf_counter
    raw = [(i, pc(), 0.5, 1e-4, 1.0, 8, None, 0.1, 0.01, None) for i in range(rows)]

    def produce() -> None:
        put = writer.put_step
        for item in raw:
            put(item)

    t0 = pc()
    writer.start()
    producer = threading.Thread(target=produce, name="bench-producer")
    producer.start()
    producer.join()
    writer.close(timeout=300)
    elapsed = pc() - t0
    assert writer.stats.steps_written == rows, writer.stats
    assert store.count("step_metrics", job_id) == rows
    store.close()
    return rows / elapsed


def bench_writer(rows: int, rounds: int, workdir: Path) -> dict[str, Any]:
    raw, ours = [], []
    for _ in range(rounds):
        raw.append(run_raw(workdir / "raw.db", rows))
        ours.append(run_writer(workdir / "writer.db", rows))
    out = {"rows_per_run": rows, "raw_rows_per_s": raw, "writer_rows_per_s": ours,
           "raw_median": statistics.median(raw), "writer_median": statistics.median(ours)}
    out["ratio"] = out["writer_median"] / out["raw_median"]
    return out


def _machine() -> dict[str, Any]:
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "platform": platform.platform(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="mon.step() calls per variant (all rounds)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows per writer / raw run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    args = parser.parse_args(argv)

    machine = _machine()  # before the runs: the load average is other work, not ours
    with tempfile.TemporaryDirectory(prefix="runlens-bench-") as tmp:
        workdir = Path(tmp)
        step = bench_step(args.calls, args.rounds, workdir)
        writer = bench_writer(args.rows, args.rounds, workdir)
    result = {"machine": machine, "when": time.time(), "args": vars(args), "step": step, "writer": writer}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"bench_collect-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0

    m = result["machine"]
    print(f"machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}, SQLite {m['sqlite']}, "
          f"load average at start {m['load_average_1m']:.1f} (other work on the machine widens the spread)")
    print(f"\n1. training-thread cost per call, µs ({step['timed_calls_per_variant']:,} calls timed one by one "
          f"per variant, timer overhead {step['timer_overhead_ns']:.0f} ns subtracted; block mean: "
          f"{step['block_calls_per_variant']:,} more calls in blocks of {BLOCK:,})")
    print(f"{'':14}{'median':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>10}{'block mean':>12}")
    for name in ("list.append", "mon.step"):
        r = step[name]
        print(f"{name:14}{r['median_us']:9.3f}{r['p90_us']:9.3f}{r['p99_us']:9.3f}{r['p999_us']:9.2f}"
              f"{r['max_us']:10.1f}{r['block_mean_median_us']:12.3f}")
    s = step["mon.step"]
    print(f"mon.step / list.append: {step['ratio_median']:.1f}x (per-call medians), "
          f"{step['ratio_block_mean']:.1f}x (block means)")
    print(f"targets: median <= 2 µs: {'met' if s['median_us'] <= 2 else 'MISSED'}; "
          f"p99 <= 20 µs: {'met' if s['p99_us'] <= 20 else 'MISSED'}")
    print(f"\n2. sustained step-row throughput to SQLite, rows/s (median of {args.rounds} interleaved runs of "
          f"{args.rows:,} rows)")
    print(f"raw sqlite3.executemany: {writer['raw_median']:>12,.0f}   runs: "
          + ", ".join(f"{v:,.0f}" for v in writer["raw_rows_per_s"]))
    print(f"runlens BatchWriter:     {writer['writer_median']:>12,.0f}   runs: "
          + ", ".join(f"{v:,.0f}" for v in writer["writer_rows_per_s"]))
    print(f"writer / raw: {writer['ratio']:.0%} (target >= 50%: {'met' if writer['ratio'] >= 0.5 else 'MISSED'})")
    print(f"\nwritten to {out_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
