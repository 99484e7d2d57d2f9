"""Where the first ``Monitor.start()`` of a process spends its time, on the training thread and after it.

    python bench/monitor_start.py [--db sqlite:///path.db] [--runs 3]

Each run is a fresh process (torch imported and CUDA initialised first when there is a GPU, as in a training
script; that is not runlens's time). It times, on the training thread: the imports ``start()`` pulls in (the
store's SQLAlchemy, psutil), opening the store (a new file is created and migrated), the environment record,
starting the sampler, and the rest; then the first and a second ``start()``, and, on the sampler thread, how
long after ``start()`` NVML is up and the environment record is complete. A bare ``nvmlInit`` is timed in the
same process first. Prints one JSON document per run and the medians.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _child(db: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")   # CUDA up first, as in a training script
            out["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import pynvml

        t0 = time.perf_counter()
        pynvml.nvmlInit()
        out["bare_nvml_init_s"] = time.perf_counter() - t0
        pynvml.nvmlShutdown()
    except Exception as exc:
        out["bare_nvml_init_s"] = f"no NVML ({type(exc).__name__})"

    main = threading.current_thread()
    spent: dict[str, float] = {}
    marks: dict[str, float] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not main:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)

    def marked(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                marks.setdefault(label, time.perf_counter())

        setattr(owner, name, wrapper)

    import runlens

    t0 = time.perf_counter()
    import runlens.store
    import runlens.store.writer

    out["import_store_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import runlens.collect.sampler

    out["import_sampler_s"] = time.perf_counter() - t0
    import runlens.collect.environment as environment
    import runlens.collect.gpu as gpu
    import runlens.collect.lifecycle as lifecycle

    timed(runlens.store, "open_store", "open_store")
    timed(environment, "describe_environment", "describe_environment")
    timed(lifecycle.JobLifecycle, "_start_sampler", "start_sampler")
    marked(gpu.GpuProbe, "_init_nvml", "nvml_up")
    marked(lifecycle.JobLifecycle, "_complete_environment", "environment_complete")

    work = tempfile.mkdtemp()
    url = db or f"sqlite:///{work}/start.db"
    for which in ("first", "second"):
        spent.clear()
        marks.clear()
        mon = runlens.Monitor(name=f"start-{which}", db=url)
        t0 = time.perf_counter()
        mon.start()
        start = time.perf_counter() - t0
        mon._environment_done.wait(30)
        row = {"start_s": start, **{f"{k}_s": v for k, v in spent.items()}}
        row["other_s"] = start - sum(spent.values())
        row.update({f"{k}_after_start_s": v - t0 for k, v in marks.items()})
        t0 = time.perf_counter()
        mon.close()
        row["close_s"] = time.perf_counter() - t0
        out[which] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="store URL (default: a new SQLite file per run)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args.db)), flush=True)
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLENS_")}
    env["RUNLENS_ANALYZE_ON_COMPLETE"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    results = []
    for _ in range(args.runs):
        cmd = [sys.executable, __file__, "--child", *(["--db", args.db] if args.db else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            sys.exit(f"child failed:\n{proc.stderr[-3000:]}")
        doc = json.loads(lines[-1][len("RESULT "):])
        print(json.dumps(doc))
        results.append(doc)
    medians = {f"{which}.{key}": statistics.median(r[which][key] for r in results if key in r[which])
               for which in ("first", "second") for key in results[0][which]}
    medians.update({k: statistics.median(r[k] for r in results) for k in ("import_store_s", "import_sampler_s")})
    # What bench/gpu_check.py reports as the first start: the imports start() pulls in, and start() itself.
    medians["first_start_with_imports_s"] = statistics.median(
        r["import_store_s"] + r["import_sampler_s"] + r["first"]["start_s"] for r in results)
    print(json.dumps({"median": {k: round(v, 4) for k, v in medians.items()}}, indent=1))


if __name__ == "__main__":
    main()
