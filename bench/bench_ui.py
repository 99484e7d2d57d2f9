"""Benchmark ``runlens ui``: the job list over a store of 10,000 jobs, the page of a 1,000,000-step run, and 200
concurrent API requests.

Targets on the 2-core dev machine: every page and API answer under 200 ms after the first request (the first
may make the analysis of a big run: seconds, reported), and 200 concurrent requests all answered.

The store (10,000 small jobs, a tenth of them analysed, plus one job of 1,000,000 steps, 20,000 samples and
2,000 events, never analysed) is written straight through the Store and cached in bench/results/ (gitignored);
it is rebuilt when the generator's version changes or with --rebuild. The server is ``python -m runlens ui``,
a real process, reached over HTTP.

    python bench/bench_ui.py [--rebuild] [--jobs N] [--steps N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GENERATOR_VERSION = 1
BIG_JOB = "bench-ui-1m"
TARGET_MS = 200.0
REPEAT = 20


def synthesise(db_path: Path, *, jobs: int, steps: int) -> None:
    """Write the store: ``jobs`` small finished jobs and the big one (the slow part, cached between runs)."""
    from runlens.store import open_store

    for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        p.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db_path}")
    rng = random.Random(12)
    t0 = 1_760_000_000.0
    job_rows, step_rows, sample_rows, reports = [], [], [], []
    for i in range(jobs):
        job_id = f"job-{i:05d}"
        start = t0 + i * 600.0
        status = "failed" if i % 17 == 0 else "succeeded"
        job_rows.append({"job_id": job_id, "name": f"sweep-{i % 40:02d}", "status": status, "created_at": start,
                         "started_at": start, "ended_at": start + 500.0, "host": "bench", "last_step": 19,
                         "config": {"lr": 10 ** -(2 + i % 3), "batch_size": 2 ** (i % 5)}})
        for s in range(20):
            step_rows.append({"job_id": job_id, "step": s, "timestamp": start + 20 + s * 20.0,
                              "loss": 2.0 / (1 + s), "step_time_seconds": 20.0, "batch_size": 8})
        for k in range(3):
            used = 10.0 + rng.random() * 20
            sample_rows.append({"job_id": job_id, "timestamp": start + k * 200.0, "used_memory_gb": used,
                                "total_memory_gb": 64.0, "available_memory_gb": 64.0 - used})
        if i % 10 == 0:
            health = ("good", "warning", "critical")[i % 3]
            reports.append({"job_id": job_id, "created_at": start + 600.0, "summary": {"health_score": health},
                            "recommendations": [], "log_errors": [], "health_score": health,
                            "analysis": {"summary": {"health_score": health}}})
    with store.begin() as conn:
        store.insert_many(conn, "jobs", job_rows)
        store.insert_many(conn, "step_metrics", step_rows)
        store.insert_many(conn, "metrics_samples", sample_rows)
        store.insert_many(conn, "analysis_reports", reports)
    del job_rows, step_rows, sample_rows, reports

    big_start = t0 + jobs * 600.0
    wall = steps * 0.5 + 600.0
    store.create_job(name="big-run", job_id=BIG_JOB, status="succeeded", started_at=big_start,
                     ended_at=big_start + wall, config={"lr": 1e-4, "batch_size": 4}, last_step=steps - 1,
                     environment={"host": "bench", "cpu_count": 2})
    ts = big_start + 300.0
    batch = 100_000
    for first in range(0, steps, batch):
        rows = []
        for s in range(first, min(steps, first + batch)):
            st = 0.5 * (0.9 + 0.2 * rng.random()) if s % 50_000 != 49_999 else 60.0
            ts += st
            rows.append({"step": s, "timestamp": ts, "loss": 2.0 * math.exp(-s / 300_000) + 0.1 * rng.random(),
                         "batch_size": 4, "gradient_norm": 0.5 + rng.random(), "learning_rate": 1e-4,
                         "step_time_seconds": st, "data_time_seconds": 0.02, "rank": 0})
        with store.begin() as conn:
            store.insert_steps(conn, BIG_JOB, rows)
    samples = []
    for i in range(20_000):
        used = 40.0 + 60.0 * i / 20_000 + 5.0 * math.sin(i / 50.0)
        samples.append({"job_id": BIG_JOB, "timestamp": big_start + i * wall / 20_000, "used_memory_gb": used,
                        "total_memory_gb": 120.0, "available_memory_gb": 120.0 - used})
    events = [{"job_id": BIG_JOB, "timestamp": big_start + 300 + i * wall / 2000,
               "event_type": "phase_start" if i % 2 == 0 else "phase_end", "details": {"phase": "eval"}}
              for i in range(2000)]
    with store.begin() as conn:
        store.insert_many(conn, "metrics_samples", samples)
        store.insert_many(conn, "training_events", events)
    store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, float, int]:
    """(status, milliseconds, bytes) of one GET."""
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=300) as r:
            body = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read(), e.code
    return status, (time.perf_counter() - t0) * 1000.0, len(body)


def measure(base: str, path: str) -> dict[str, Any]:
    status, first, size = _get(base + path)
    assert status == 200, (path, status)
    times = [_get(base + path)[1] for _ in range(REPEAT)]
    return {"path": path, "first_ms": round(first, 1), "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1), "bytes": size,
            "ok": statistics.median(times) < TARGET_MS}


def concurrent(base: str, paths: list[str], n: int = 200) -> dict[str, Any]:
    urls = [base + paths[i % len(paths)] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(_get, urls))
    wall = time.perf_counter() - t0
    answered = sum(1 for status, _, _ in results if status == 200)
    return {"requests": n, "answered_200": answered, "wall_s": round(wall, 2),
            "slowest_ms": round(max(ms for _, ms, _ in results), 1), "ok": answered == n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = p.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    db_path = RESULTS / f"bench_ui-{args.jobs}-{args.steps}.db"
    stamp = Path(f"{db_path}.version")
    if args.rebuild or not db_path.exists() or not stamp.exists() or stamp.read_text() != str(GENERATOR_VERSION):
        t0 = time.perf_counter()
        synthesise(db_path, jobs=args.jobs, steps=args.steps)
        stamp.write_text(str(GENERATOR_VERSION))
        if not args.json:
            print(f"built {db_path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "runlens", "ui", "--db", f"sqlite:///{db_path}",
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"runlens ui did not start: {server.stderr.read() if server.stderr else ''}") from None
                time.sleep(0.05)
        middle = f"job-{args.jobs // 2:05d}"
        figures = {"list": [measure(base, path) for path in (
            "/", "/api/jobs", "/api/jobs?limit=200", "/api/jobs?name=sweep-07&status=succeeded",
            f"/api/jobs?before={middle}", f"/?before={middle}&name=sweep")]}
        figures["big_job"] = [measure(base, path) for path in (
            f"/jobs/{BIG_JOB}", f"/api/jobs/{BIG_JOB}", f"/api/jobs/{BIG_JOB}/analysis",
            f"/api/jobs/{BIG_JOB}/steps", f"/api/jobs/{BIG_JOB}/samples",
            f"/api/jobs/{BIG_JOB}/events?limit=100")]
        figures["concurrent"] = concurrent(base, ["/api/jobs", f"/api/jobs/{middle}", f"/api/jobs/{BIG_JOB}",
                                                  f"/api/jobs/{BIG_JOB}/steps?max_points=500",
                                                  f"/api/jobs/{middle}/analysis"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    figures["target_ms"] = TARGET_MS
    figures["ok"] = all(m["ok"] for part in ("list", "big_job") for m in figures[part]) and figures["concurrent"]["ok"]
    (RESULTS / "bench_ui.json").write_text(json.dumps(figures, indent=2))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for part in ("list", "big_job"):
            for m in figures[part]:
                print(f"{'ok  ' if m['ok'] else 'SLOW'} {m['path']:<48} first {m['first_ms']:>8.1f} ms   "
                      f"then median {m['median_ms']:>6.1f} ms, max {m['max_ms']:>6.1f} ms   {m['bytes']:>9,} B")
        c = figures["concurrent"]
        print(f"{'ok  ' if c['ok'] else 'FAIL'} {c['requests']} concurrent requests: {c['answered_200']} answered "
              f"200 in {c['wall_s']} s (slowest {c['slowest_ms']} ms)")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
