"""Benchmark what runlens costs a real training loop (issue 2: "a real CPU torch training loop with every
collector on (sampler at 1 s to stress it) against the same loop without runlens ... throughput cost < 1%").

The loop is ``tests/scripts/train_tiny.py``: a CPU torch MLP with a DataLoader of 2 worker processes, printing
one line per step (so the output tee has traffic), run for ``--seconds`` after ``--warmup`` steps; it reports
its own steps/s over the timed part. Three arms, each a fresh process, interleaved A B C A B C ... so drift in
the machine's speed hits every arm alike:

  bare      the loop without runlens
  monitor   ``runlens.Monitor`` inside (step + loader timing, writer thread, periodic sampler at 1 s with the
            process-tree walk and PSS)
  collect   the loop under ``runlens collect`` with the Monitor attached inside: the wrapper's sampler at 1 s
            over the whole tree, the output tee, two writers (wrapper and Monitor), event samples

Reported: the median steps/s of each arm over ``--pairs`` rounds and each arm's cost against bare
(1 - median_arm / median_bare), plus the per-round ratios (each round's arm against the same round's bare run).

    python bench/bench_overhead.py [--pairs 3] [--seconds 30] [--warmup 50] [--json]

Writes bench/results/bench_overhead-<time>.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "scripts" / "train_tiny.py"
DONE = re.compile(rb"done (\d+) steps in ([\d.]+) s \(([\d.]+) steps/s, training-thread CPU ([\d.]+) s\)")
ARMS = ("bare", "monitor", "collect")


def run_arm(arm: str, seconds: float, warmup: int, workdir: Path) -> dict[str, Any]:
    db = workdir / f"{arm}-{time.monotonic_ns()}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLENS_")}
    # One intra-op thread: on a small, shared machine torch's OpenMP threads spin-wait at every barrier and any
    # other runnable thread (another job's, or runlens's) costs them whole time slices; the numbers would
    # measure the scheduler, not runlens. DataLoader workers use one thread anyway.
    env.update(RUNLENS_SAMPLE_INTERVAL="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
               RUNLENS_ANALYZE_ON_COMPLETE="0")   # no analysis running beside the next arm
    loop = [sys.executable, str(TINY), "--seconds", str(seconds), "--warmup", str(warmup), "--workers", "2",
            "--name", f"overhead-{arm}"]
    if arm == "bare":
        cmd = loop
    elif arm == "monitor":
        env["RUNLENS_DB"] = f"sqlite:///{db}"
        cmd = [*loop, "--monitor"]
    else:
        cmd = [sys.executable, "-m", "runlens", "collect", "--db", str(db), "--log", str(workdir / f"{arm}.log"),
               "--", *loop, "--monitor"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=seconds * 4 + 300)
    wall = time.perf_counter() - t0
    match = DONE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{arm} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    steps = int(match.group(1))
    out: dict[str, Any] = {"arm": arm, "steps": steps, "seconds": float(match.group(2)),
                           "steps_per_s": float(match.group(3)), "wall_s": wall,
                           "thread_cpu_ms_per_step": float(match.group(4)) * 1000 / max(1, steps)}
    if arm != "bare":
        out.update(_recorded(db))
    return out


def _recorded(db: Path) -> dict[str, Any]:
    """What the run stored, as a sanity check that the collectors really ran (and their own CPU)."""
    from runlens.store import open_store

    store = open_store(str(db), create=False)
    try:
        job = store.list_jobs()[0]
        costs = {c["operation"]: c["total_seconds"] for c in store.rows("monitoring_costs", job["job_id"])}
        samples = store.rows("metrics_samples", job["job_id"], columns=["worker_count"])
        return {"stored_steps": store.count("step_metrics", job["job_id"]), "samples": len(samples),
                "samples_with_workers": sum(1 for s in samples if s["worker_count"]),
                "costs_s": {k: round(v, 4) for k, v in sorted(costs.items())}}
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="rounds of A B C")
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds per run")
    p.add_argument("--warmup", type=int, default=50, help="steps before the clock starts")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="runlens-overhead-") as tmp:
        for round_no in range(args.pairs):
            for arm in arms:
                r = run_arm(arm, args.seconds, args.warmup, Path(tmp))
                r["round"] = round_no
                runs.append(r)
                if not args.json:
                    print(f"round {round_no} {arm:8s} {r['steps_per_s']:8.2f} steps/s", flush=True)

    medians = {a: statistics.median(r["steps_per_s"] for r in runs if r["arm"] == a) for a in arms}
    cpu_per_step = {a: statistics.median(r["thread_cpu_ms_per_step"] for r in runs if r["arm"] == a) for a in arms}
    bare_rates = [r["steps_per_s"] for r in runs if r["arm"] == arms[0]]
    result: dict[str, Any] = {"pairs": args.pairs, "seconds": args.seconds, "warmup": args.warmup,
                              "median_steps_per_s": medians, "median_thread_cpu_ms_per_step": cpu_per_step,
                              "spread_of_first_arm": (max(bare_rates) - min(bare_rates)) / statistics.median(bare_rates),
                              "runs": runs,
                              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                          "platform": platform.platform()}}
    if "bare" in medians:
        result["cost_vs_bare"] = {a: 1 - medians[a] / medians["bare"] for a in arms if a != "bare"}
        per_round: dict[str, list[float]] = {}
        for round_no in range(args.pairs):
            bare = next(r for r in runs if r["round"] == round_no and r["arm"] == "bare")["steps_per_s"]
            for r in runs:
                if r["round"] == round_no and r["arm"] != "bare":
                    per_round.setdefault(r["arm"], []).append(1 - r["steps_per_s"] / bare)
        result["cost_per_round"] = per_round
        result["median_cost_per_round"] = {a: statistics.median(v) for a, v in per_round.items()}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"median steps/s over {args.pairs} interleaved rounds of {args.seconds:g} s:")
    for a in arms:
        cost = result.get("cost_vs_bare", {}).get(a)
        extra = (f"   cost {cost:+.2%} of medians; per round " + ", ".join(
            f"{c:+.2%}" for c in result["cost_per_round"][a])
            + f" (median {result['median_cost_per_round'][a]:+.2%})") if cost is not None else ""
        print(f"  {a:8s} {medians[a]:8.2f}  ({cpu_per_step[a]:.3f} ms training-thread CPU/step){extra}")
    print(f"  spread of the {arms[0]} runs (max-min)/median: {result['spread_of_first_arm']:.1%}")
    for r in runs:
        if r["arm"] != "bare" and r["round"] == args.pairs - 1:
            print(f"  {r['arm']}: stored {r['stored_steps']} steps, {r['samples']} samples "
                  f"({r['samples_with_workers']} with workers); own cost {r['costs_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
