"""What the Hugging Face callback costs a Trainer run: the same run with and without ``RunlensCallback``.

    python bench/bench_trainer_overhead.py [--pairs 4] [--steps 200]

Two measurements:

1. **End to end.** ``examples/hf_trainer.py`` (a 2-layer GPT-2 on random tokens, CPU, one torch thread so the
   runs do not fight over cores) as a fresh subprocess, without and with the callback, interleaved A B A B ...
   so drift of a shared machine hits both arms alike. The Trainer's own ``train_runtime`` and
   ``train_samples_per_second`` are compared by their medians and by the median of the per-pair ratios. It
   includes everything the callback adds inside ``trainer.train()``: the Monitor's start and close, the writer
   and sampler threads (their CPU time is read back from the run's ``monitoring_costs``), and the hooks.
2. **On the training thread.** The same Trainer in this process with a callback subclass that times each of
   its hooks: microseconds per optimizer step spent in runlens code on the training thread, against the step
   time. This is the figure that scales to real runs (the end-to-end one is dominated by noise on a busy
   machine).

Target (DESIGN.md, overhead budget): under 1 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hf_trainer.py"


def run_once(with_runlens: bool, steps: int, workdir: Path, index: int) -> dict[str, Any]:
    out = workdir / f"run-{index}"
    cmd = [
        sys.executable,
        str(EXAMPLE),
        "--steps",
        str(steps),
        "--out",
        str(out),
        "--logging-steps",
        "10",
        "--db",
        str(workdir / f"runlens-{index}.db"),
    ]
    if not with_runlens:
        cmd.append("--no-runlens")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RUNLENS_JOB_ID", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed:\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = dict(json.loads(line))
            except ValueError:
                continue
            if with_runlens:
                result["thread_cpu_seconds"] = _thread_cpu(workdir / f"runlens-{index}.db", result["job_id"])
            return result
    raise RuntimeError("no result line")


def _thread_cpu(db: Path, job_id: str) -> float:
    """CPU seconds of runlens's own threads (writer, sampler) in that run, as the Monitor stored them."""
    from runlens.store import open_store

    store = open_store(str(db), create=False)
    try:
        latest: dict[str, float] = {}
        for row in store.rows("monitoring_costs", job_id, order_by="timestamp"):
            if row["operation"].startswith("thread:"):
                latest[row["operation"]] = row["total_seconds"]
        return sum(latest.values())
    finally:
        store.close()


def end_to_end(pairs: int, steps: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        index = 0
        for pair in range(pairs):
            for arm in ("without", "with"):
                result = run_once(arm == "with", steps, workdir, index)
                index += 1
                rows[arm].append(result)
                print(
                    f"  pair {pair + 1} {arm:>7}: train_runtime {result['train_runtime']:.2f} s, "
                    f"{result['train_samples_per_second']:.1f} samples/s",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    for arm, results in rows.items():
        summary[arm] = {
            "train_runtime_median": statistics.median(r["train_runtime"] for r in results),
            "samples_per_second_median": statistics.median(r["train_samples_per_second"] for r in results),
            "train_runtime": [r["train_runtime"] for r in results],
        }
    base, ours = summary["without"], summary["with"]
    summary["runtime_overhead"] = ours["train_runtime_median"] / base["train_runtime_median"] - 1
    summary["throughput_overhead"] = 1 - ours["samples_per_second_median"] / base["samples_per_second_median"]
    pairs = zip(rows["without"], rows["with"], strict=True)
    summary["pair_ratio_median"] = (
        statistics.median(b["train_runtime"] / a["train_runtime"] for a, b in pairs) - 1
    )
    summary["thread_cpu_share"] = statistics.median(
        r["thread_cpu_seconds"] / r["train_runtime"] for r in rows["with"]
    )
    return summary


def hook_cost(steps: int) -> dict[str, Any]:
    """Time every RunlensCallback hook inside a real Trainer run in this process."""
    sys.path.insert(0, str(EXAMPLE.parent))
    import hf_trainer  # type: ignore[import-not-found]

    from runlens.integrations.transformers import RunlensCallback

    spent: dict[str, list[float]] = {}

    class Timed(RunlensCallback):
        pass

    for name in dir(RunlensCallback):
        if name.startswith("on_"):
            original = getattr(RunlensCallback, name)

            def timed(
                self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
            ) -> Any:
                t0 = time.perf_counter()
                try:
                    return _original(self, *args, **kwargs)
                finally:
                    spent.setdefault(_name, []).append(time.perf_counter() - t0)

            setattr(Timed, name, timed)

    with tempfile.TemporaryDirectory() as tmp:
        args = hf_trainer.parse_args(["--steps", str(steps), "--out", tmp, "--logging-steps", "10"])
        cb = Timed(name="bench", db=str(Path(tmp) / "runlens.db"))
        trainer = hf_trainer.build_trainer(args, [cb])
        output = trainer.train()
    per_step_hooks = (
        "on_step_begin",
        "on_substep_end",
        "on_optimizer_step",
        "on_step_end",
        "on_log",
        "on_epoch_begin",
        "on_epoch_end",
        "on_pre_optimizer_step",
    )
    hot = sum(sum(spent.get(h, [])) for h in per_step_hooks)
    lifecycle = {h: sum(v) for h, v in spent.items() if h not in per_step_hooks}
    step_seconds = output.metrics["train_runtime"] / steps
    return {
        "steps": steps,
        "per_step_hook_us": hot / steps * 1e6,
        "step_time_ms": step_seconds * 1e3,
        "per_step_share": hot / steps / step_seconds,
        "on_step_end_median_us": statistics.median(spent["on_step_end"]) * 1e6,
        "lifecycle_seconds": lifecycle,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4, help="A/B pairs (>= 3)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    print(f"Trainer with and without RunlensCallback, {args.pairs} interleaved pairs of {args.steps} steps:")
    e2e = end_to_end(max(3, args.pairs), args.steps)
    print("Training-thread cost of the callback's hooks:")
    hooks = hook_cost(args.steps)
    if args.json:
        print(json.dumps({"end_to_end": e2e, "hooks": hooks}, indent=2))
        return
    w, o = e2e["without"], e2e["with"]
    print(
        f"  train_runtime median: without {w['train_runtime_median']:.2f} s, "
        f"with {o['train_runtime_median']:.2f} s -> {e2e['runtime_overhead']:+.2%}"
    )
    print(
        f"  samples/s median:     without {w['samples_per_second_median']:.1f}, "
        f"with {o['samples_per_second_median']:.1f} -> {e2e['throughput_overhead']:+.2%} throughput cost"
    )
    print(
        f"  per-pair runtime ratio, median: {e2e['pair_ratio_median']:+.2%}; runlens threads' CPU: "
        f"{e2e['thread_cpu_share']:.2%} of train_runtime"
    )
    print(
        f"  hooks: {hooks['per_step_hook_us']:.1f} us per optimizer step (on_step_end median "
        f"{hooks['on_step_end_median_us']:.1f} us) against a {hooks['step_time_ms']:.1f} ms step "
        f"= {hooks['per_step_share']:.3%}"
    )
    print(
        "  one-off hooks (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in sorted(hooks["lifecycle_seconds"].items()))
    )


if __name__ == "__main__":
    main()
