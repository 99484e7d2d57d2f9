"""``runlens demo``: a real training job on this machine's CPU, recorded and analysed end to end.

What a newcomer's first command has to show is the point of runlens: a run with real problems, and
recommendations that come from measuring them. So the demo does what a user would do:

1. writes the scenario's ``config.yaml`` into the output folder;
2. runs ``runlens collect --config config.yaml -- python -m runlens.demo.train ...`` as a child process, so
   the wrapper samples the process tree (DataLoader workers included) and the Monitor inside records every
   step;
3. analyses the job (``runlens.report.job.analyze_job``), writes the HTML report and prints the summary.

Scenarios (``runlens.demo.train`` says how each problem really happens):

* ``troubled`` (the default): four DataLoader workers that each build their own cache of decoded samples, a
  slow per-sample decode, and a learning-rate warm-up past the point where SGD is stable. Expected findings:
  the run diverged (with the learning rate to use instead), it is input-bound (its measured share of step
  time), and the workers' measured memory (what fewer workers would save).
* ``healthy``: the same job well configured; the report should be good, at most informational notes.

The workers' cache is sized from this machine's memory (a quarter of what is in use now, between 1 and 4 GB in
all, never more than a quarter of what is free), so the workers stand out in the memory measurements on a busy
laptop as on an idle CI runner, without ever pressing the machine.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runlens.core.units import GIB

log = logging.getLogger(__name__)

SCENARIOS = ("troubled", "healthy")
DEFAULT_OUT = "runlens-demo"
DEFAULT_STEPS = {"troubled": 400, "healthy": 600}
TROUBLED_WORKERS = 4

__all__ = ["DEFAULT_OUT", "SCENARIOS", "DemoResult", "next_steps", "run_demo", "scenario_config",
           "worker_cache_mb"]


@dataclass
class DemoResult:
    """What the demo produced: the job, its analysis document, the report, and the training's exit code."""

    job_id: str
    analysis: dict[str, Any]
    html_path: Path | None
    db_url: str
    config_path: Path
    exit_code: int


def worker_cache_mb(workers: int = TROUBLED_WORKERS, vm: Any = None) -> int:
    """Per-worker cache size for the troubled scenario, from the memory in use and free right now.

    The analyzer's workers rule calls workers a memory lever when they hold at least 15 % of the memory in
    use; a quarter of the current use in all clears that on any machine, and the caps keep the demo harmless
    (at most 4 GB, at most a quarter of what is available).
    """
    if vm is None:
        import psutil

        vm = psutil.virtual_memory()
    used_gb = (vm.total - vm.available) / GIB
    available_gb = vm.available / GIB
    total_gb = min(max(0.25 * used_gb, 1.0), 4.0, 0.25 * available_gb)
    return max(16, int(total_gb * 1024 / workers))


def scenario_config(scenario: str, steps: int | None = None, cache_mb: int | None = None) -> dict[str, Any]:
    """The config the demo job trains with (generic dialect: runlens finds ``data.num_workers`` and
    ``optimizer.learning_rate`` by their conventional names)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    steps = steps or DEFAULT_STEPS[scenario]
    every = max(1, steps // 4)
    if scenario == "healthy":
        # The data are in memory and a batch is one index_select (~0.1 ms): loading in the training process is
        # the right setting here; a worker would cost more (receiving each batch from it, ~1 ms) than it
        # saves.
        return {
            "name": "demo-healthy",
            "model": {"hidden": 512},
            "data": {"num_workers": 0, "batch_size": 128, "worker_cache_mb": 0, "sample_delay_ms": 0},
            "optimizer": {
                "learning_rate": 0.03,
                "momentum": 0.9,
                "warmup_steps": max(1, steps // 10),
                "max_grad_norm": 5.0,
            },
            "train": {"steps": steps, "eval_every": every, "save_every": 2 * every},
            "monitoring": {"sample_interval": 1.0},
        }
    return {
        "name": "demo-troubled",
        "model": {"hidden": 512},
        "data": {
            "num_workers": TROUBLED_WORKERS,
            "batch_size": 64,
            "prefetch_factor": 2,
            "worker_cache_mb": cache_mb if cache_mb is not None else worker_cache_mb(),
            "sample_delay_ms": 1.0,
        },
        # Stable below ~0.09 for this model; the warm-up crosses that about two thirds of the way in.
        "optimizer": {
            "learning_rate": 0.15,
            "momentum": 0.9,
            "warmup_steps": max(1, steps * 3 // 4),
            "max_grad_norm": None,
        },
        "train": {"steps": steps, "eval_every": every, "save_every": 2 * every},
        "monitoring": {"sample_interval": 1.0},
    }


_HEADER = {
    "healthy": "# runlens demo, healthy scenario: a small regression MLP, well configured.\n",
    "troubled": (
        "# runlens demo, troubled scenario: the same job, badly configured. runlens is not told what is\n"
        "# wrong; it measures the run and says what to change (see the report).\n"
    ),
}


def write_config(path: Path, scenario: str, config: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HEADER[scenario] + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(
    scenario: str = "troubled",
    *,
    db: str | None = None,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    steps: int | None = None,
    backend: str = "auto",
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the demo job under ``runlens collect``, analyse it and write the HTML report.

    Args:
        scenario: "troubled" or "healthy".
        db: store URL or SQLite path; default ``<out>/runlens.db``.
        out: folder for the config, the job's log, checkpoints and the report.
        steps: optimizer steps (default 400 troubled, 600 healthy).
        backend: "torch", "numpy" or "auto" (torch when installed).
        echo: where progress lines go (the CLI passes its printer; default: this module's logger).

    Raises:
        ValueError: an unknown scenario. RunlensError: the store or the analysis failed.
    """
    from runlens.report.job import analyze_job
    from runlens.core.errors import RunlensError
    from runlens.core.settings import resolve_db_url
    from runlens.store import open_store

    if echo is None:
        echo = log.info
    out_dir = Path(out).expanduser().resolve()
    run_dir = out_dir / scenario
    db_url = resolve_db_url(db or str(out_dir / "runlens.db"))
    config = scenario_config(scenario, steps)
    config_path = write_config(out_dir / f"{scenario}.yaml", scenario, config)
    name = str(config["name"])
    cmd = [
        sys.executable,
        "-m",
        "runlens",
        "collect",
        "--name",
        name,
        "--config",
        str(config_path),
        "--db",
        db_url,
        "--log",
        str(run_dir / "log.txt"),
        "--no-analyze",   # the demo analyses the job itself, into its own report
        "--",
        sys.executable,
        "-m",
        "runlens.demo.train",
        "--config",
        str(config_path),
        "--out",
        str(run_dir),
        "--backend",
        backend,
    ]
    echo(f"runlens demo ({scenario}): training a small model on this machine's CPU under `runlens collect`")
    echo(f"  config: {config_path}")
    started = time.time()
    env = dict(os.environ)
    env.pop("RUNLENS_JOB_ID", None)  # a demo run inside a recorded job is its own job
    exit_code = subprocess.call(cmd, env=env)
    store = open_store(db_url, create=False)
    try:
        job_id = _newest_job(store, name, since=started)
        if job_id is None:
            raise RunlensError(f"the demo job did not start (runlens collect exited with {exit_code})")
        echo("")
        echo(f"runlens demo: analysing {job_id}")
        result = analyze_job(store, job_id, html_path=out_dir / f"report-{scenario}.html")
    finally:
        store.close()
    return DemoResult(job_id, result.analysis, result.html_path, db_url, config_path, exit_code)


def next_steps(result: DemoResult, scenario: str, *, db: str | None, out: str | os.PathLike[str]) -> list[str]:
    """The commands to try after the demo, with the demo's own store and folder filled in."""
    shown_db = db or str(Path(out) / "runlens.db")
    lines = ["Next:", f"  open {result.html_path}" if result.html_path else "  (no HTML report was written)",
             f"  runlens jobs --db {shown_db}", f"  runlens analyze {result.job_id} --db {shown_db} --json"]
    if scenario == "troubled":
        same_out = "" if str(out) == DEFAULT_OUT else f" --out {out}"
        lines.append(f"  runlens demo --scenario healthy{same_out}    # the same job, well configured")
    return lines


def _newest_job(store: Any, name: str, since: float) -> str | None:
    for job in store.list_jobs(limit=20):
        if job.get("name") == name and (job.get("created_at") or 0) >= since - 1:
            return str(job["job_id"])
    return None
