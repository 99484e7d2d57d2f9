"""Benchmark ``runlens analyze`` on a long synthetic run (issue 3's targets).

A job of 1,000,000 steps, 100,000 samples and 10,000 events is written straight through the Store (one
executemany per table, the writer's own fast path), plus a 200 MB log.txt of realistic progress lines with some
warnings and errors and its arrival sidecar when the log parser knows how to write one. Then
``runlens analyze <job> --db ...`` runs as a subprocess while psutil polls its RSS (children included).

Targets on the 2-core dev machine: under 10 s wall, under 2 GB peak RSS, the HTML report under 2 MB, the log
parser at 50 MB/s or more (measured separately, in-process, on the same log).

The synthetic database and log are cached in bench/results/ (gitignored) and rebuilt when the generator's
version changes or with --rebuild.

    python bench/bench_analyze.py [--rebuild] [--steps N] [--log-mb M] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GENERATOR_VERSION = 4
JOB_ID = "bench-analyze-1m"


def synthesise(db_path: Path, log_path: Path, *, steps: int, samples: int, events: int, log_mb: int) -> None:
    """Write the synthetic job and its log (the slow part, cached between runs)."""
    from runlens.store import open_store

    for p in (db_path, Path(str(db_path) + "-wal"), Path(str(db_path) + "-shm"), log_path):
        p.unlink(missing_ok=True)
    store = open_store(f"sqlite:///{db_path}")
    t0 = 1_760_000_000.0
    step_time = 0.5
    wall = steps * step_time + 600.0
    rng = random.Random(7)
    config = {"job": "extension", "config": {"name": "bench", "process": [{
        "type": "sd_trainer", "train": {"batch_size": 4, "lr": 1e-4, "gradient_checkpointing": False},
        "datasets": [{"folder_path": "/data/x", "num_workers": 4, "resolution": [512, 768, 1024]}],
        "model": {"name_or_path": "black-forest-labs/FLUX.1-dev", "quantize": False}}]}}
    store.create_job(name="bench-analyze", job_id=JOB_ID, status="failed", status_reason="exception",
                     started_at=t0, ended_at=t0 + wall, exit_code=1, config=config, config_dialect="ai-toolkit",
                     log_path=str(log_path), world_size=1,
                     environment={"host": "bench", "cpu_count": 2, "python": sys.version.split()[0]},
                     settings={"sample_interval": wall / samples}, last_step=steps - 1)

    # Samples: memory ramps up with a sawtooth and one spike near the end (the peak the report must keep).
    interval = wall / samples
    sample_rows = []
    for i in range(samples):
        ts = t0 + i * interval
        used = 40.0 + 60.0 * i / samples + 5.0 * math.sin(i / 50.0) + rng.random()
        if i == samples - 1234:
            used = 119.2
        sample_rows.append({
            "job_id": JOB_ID, "timestamp": ts, "total_memory_gb": 120.0, "used_memory_gb": used,
            "available_memory_gb": 120.0 - used, "swap_used_gb": 0.5, "main_process_memory_gb": used * 0.4,
            "worker_memory_gb": used * 0.3, "worker_count": 4, "gpu_memory_used_gb": 70.0 + rng.random(),
            "gpu_memory_total_gb": 80.0, "gpu_utilization_percent": 90.0, "cpu_utilization_percent": 60.0,
        })
    with store.begin() as conn:
        store.insert_many(conn, "metrics_samples", sample_rows)
    del sample_rows

    # Steps: ~0.5 s each, data time 0.02 s, a few stalls, loss decaying with noise, extras on every 10th step.
    batch = 100_000
    ts = t0 + 300.0
    for start in range(0, steps, batch):
        rows = []
        for s in range(start, min(steps, start + batch)):
            st = step_time * (0.9 + 0.2 * rng.random())
            if s % 50_000 == 49_999:
                st = 60.0
            ts += st
            row: dict[str, Any] = {
                "step": s, "timestamp": ts, "loss": 2.0 * math.exp(-s / 300_000) + 0.1 * rng.random(),
                "batch_size": 4, "gradient_norm": 0.5 + rng.random(), "learning_rate": 1e-4,
                "step_time_seconds": st, "data_time_seconds": 0.02, "rank": 0,
            }
            if s % 10 == 0:
                row["extras"] = {"tokens_per_s": 1000.0 + rng.random(), "grad_scale": 65536.0}
            rows.append(row)
        with store.begin() as conn:
            store.insert_steps(conn, JOB_ID, rows)

    # Events: phases (eval/save pairs), batch changes, user events, a few ooms and one exception at the end.
    event_rows = []
    for i in range(events):
        ts_e = t0 + 300.0 + (i + 0.5) * (wall - 600.0) / events
        k = i % 4
        if k == 0:
            event_rows.append({"job_id": JOB_ID, "timestamp": ts_e, "event_type": "phase_start",
                               "details": {"phase": "eval"}})
        elif k == 1:
            event_rows.append({"job_id": JOB_ID, "timestamp": ts_e, "event_type": "phase_end",
                               "details": {"phase": "eval"}})
        elif k == 2:
            event_rows.append({"job_id": JOB_ID, "timestamp": ts_e, "event_type": "checkpoint_saved",
                               "details": {"path": f"/ckpt/{i}.safetensors"}})
        else:
            event_rows.append({"job_id": JOB_ID, "timestamp": ts_e, "event_type": "user",
                               "details": {"note": "x" * 20}})
    event_rows[0:0] = [{"job_id": JOB_ID, "timestamp": t0 + 1, "event_type": "start", "details": {}}]
    event_rows.append({"job_id": JOB_ID, "timestamp": t0 + wall - 2, "event_type": "exception",
                       "details": {"type": "RuntimeError", "message": "CUDA out of memory"}})
    event_rows.append({"job_id": JOB_ID, "timestamp": t0 + wall - 1, "event_type": "end",
                       "details": {"status": "failed"}})
    with store.begin() as conn:
        store.insert_many(conn, "training_events", event_rows)
        store.insert_many(conn, "monitoring_costs", [
            {"job_id": JOB_ID, "timestamp": t0 + wall, "operation": "step", "calls": steps,
             "total_seconds": steps * 4e-6, "on_training_thread": True},
            {"job_id": JOB_ID, "timestamp": t0 + wall, "operation": "sampler", "calls": samples,
             "total_seconds": samples * 2e-3, "on_training_thread": False},
        ])
    store.close()
    write_log(log_path, log_mb, t0, wall)


_ERRORS = [
    ("Traceback (most recent call last):\n  File \"train.py\", line 10, in <module>\n    main()\n"
     "  File \"train.py\", line 8, in main\n    loss.backward()\n"
     "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
     "79.11 GiB of which 1.12 GiB is free. Of the allocated memory 74.00 GiB is allocated by PyTorch, and "
     "2.50 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting "
     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\n"),
    "RuntimeError: DataLoader worker (pid 12345) is killed by signal: Killed.\n",
    "WARNING: loss is nan, skipping step\n",
    ("/usr/lib/python3/site-packages/torch/utils/data/dataloader.py:557: UserWarning: This DataLoader will "
     "create 8 worker processes in total.\n"),
]


def write_log(path: Path, megabytes: int, t0: float, wall: float) -> None:
    """A log.txt like a real run's: tqdm progress with carriage returns, timestamped lines, some errors."""
    target = megabytes * 1_000_000
    rng = random.Random(11)
    written = 0
    step = 0
    with path.open("w", encoding="utf-8", newline="") as fh:
        while written < target:
            parts = []
            for _ in range(2000):
                step += 1
                frac = (written / target)
                ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0 + frac * wall))
                r = rng.random()
                if r < 0.0005:
                    parts.append(f"{ts} ERROR " + _ERRORS[rng.randrange(len(_ERRORS))])
                elif r < 0.01:
                    # Metric names that contain "error" must not count as errors (issue 3: no crying wolf).
                    parts.append(f"{ts} INFO eval: eval_loss=0.{rng.randrange(10**4):04d} "
                                 f"eval_error_rate=0.01, 0 errors in {rng.randrange(500)} samples\n")
                elif r < 0.25:
                    parts.append(f"{ts} INFO step {step}: loss=0.{rng.randrange(10**6):06d} lr=1.0e-04 "
                                 f"grad_norm=0.{rng.randrange(1000):03d}\n")
                else:
                    parts.append(f"bench:  {step % 100}%|\u2588\u2588\u2588      | {step}/1000000 "
                                 f"[01:23<45:67, 1.23it/s, loss=0.{rng.randrange(10**4):04d}]\r")
            chunk = "".join(parts)
            fh.write(chunk)
            written += len(chunk.encode("utf-8"))


def poll_rss(proc: psutil.Popen) -> tuple[int, str]:
    """Run ``proc`` to the end, sampling the RSS of it and its children every 20 ms; returns (peak, output)."""
    peak = 0
    while proc.poll() is None:
        try:
            rss = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else b""
    return peak, out.decode("utf-8", "replace")


def bench_log_parser(log_path: Path) -> dict[str, Any]:
    from runlens.analyze.logparse import parse_log

    size = log_path.stat().st_size
    t0, c0 = time.perf_counter(), time.process_time()
    findings = parse_log(log_path)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"log_parse_seconds": round(dt, 2), "log_parse_mb_per_s": round(size / 1e6 / dt, 1),
            "log_parse_mb_per_cpu_s": round(size / 1e6 / cpu, 1), "log_findings": len(findings),
            "log_errors": sum(f.count for f in findings if f.level == "error")}


def bench_stages(db_path: Path) -> dict[str, Any]:
    """In-process wall and CPU seconds of each stage (the log is left out: it is timed on its own)."""
    from runlens.analyze.analysis import build_analysis
    from runlens.analyze.jobdata import JobData
    from runlens.analyze.load import job_settings
    from runlens.analyze.registry import all_rules
    from runlens.store import open_store
    from runlens.store.frames import load_frames

    out: dict[str, Any] = {}
    store = open_store(f"sqlite:///{db_path}", create=False)

    def timed(name: str, fn: Any) -> Any:
        w, c = time.perf_counter(), time.process_time()
        value = fn()
        out[name] = {"wall": round(time.perf_counter() - w, 2), "cpu": round(time.process_time() - c, 2)}
        return value

    frames = timed("load_frames", lambda: load_frames(store, JOB_ID))
    out["load_frames_tables"] = {k: round(v, 2) for k, v in frames.timings.items()}
    config = frames.job["config"]
    data = JobData(job=frames.job, steps=frames.steps, samples=frames.samples, events=frames.events,
                   gpus=frames.gpus, costs=frames.costs, config=config, dialect="ai-toolkit",
                   settings=job_settings(frames.job, config), now=time.time())
    slowest = []
    for r in all_rules():
        w = time.perf_counter()
        try:
            list(r.fn(data))
        except Exception:
            pass
        slowest.append((round(time.perf_counter() - w, 2), r.id))
    out["slowest_rules"] = sorted(slowest, reverse=True)[:5]
    timed("build_analysis", lambda: build_analysis(data))
    store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rebuild", action="store_true", help="regenerate the cached synthetic job and log")
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--log-mb", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--skip-parts", action="store_true", help="only the end-to-end analyze run")
    args = ap.parse_args(argv)

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"v{GENERATOR_VERSION}-{args.steps}-{args.samples}-{args.events}-{args.log_mb}"
    db_path = RESULTS / f"analyze-{tag}.db"
    log_path = RESULTS / f"analyze-{tag}.log.txt"
    html_path = RESULTS / f"analyze-{tag}.html"
    if args.rebuild or not db_path.exists() or not log_path.exists():
        t0 = time.perf_counter()
        synthesise(db_path, log_path, steps=args.steps, samples=args.samples, events=args.events,
                   log_mb=args.log_mb)
        print(f"synthesised in {time.perf_counter() - t0:.1f} s: {db_path.name} "
              f"({db_path.stat().st_size / 1e6:.0f} MB), {log_path.name} ({log_path.stat().st_size / 1e6:.0f} MB)",
              file=sys.stderr)

    figures: dict[str, Any] = {"steps": args.steps, "samples": args.samples, "events": args.events,
                               "log_mb": round(log_path.stat().st_size / 1e6, 1), "cpus": os.cpu_count()}
    if not args.skip_parts:
        figures.update(bench_stages(db_path))
        figures.update(bench_log_parser(log_path))

    html_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "runlens", "analyze", JOB_ID, "--db", f"sqlite:///{db_path}",
           "--log", str(log_path), "--html", str(html_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak, output = poll_rss(proc)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    figures.update({
        "analyze_wall_seconds": round(wall, 2), "analyze_cpu_seconds": round(cpu, 2),
        "analyze_peak_rss_mb": round(peak / 2**20),
        "analyze_exit_code": proc.returncode,
        "html_bytes": html_path.stat().st_size if html_path.exists() else None,
    })
    figures["targets"] = {
        "wall_under_10s": wall < 10, "rss_under_2gb": peak < 2 * 2**30,
        "html_under_2mb": figures["html_bytes"] is not None and figures["html_bytes"] < 2_000_000,
        "log_parser_50mb_s": (figures.get("log_parse_mb_per_s") or 0) >= 50,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(output.rstrip()[-3000:])
        print()
        for k, v in figures.items():
            print(f"{k:24} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
