"""Closed loops inside a real memory cgroup: a container's memory fault, recorded under ``runlens collect``,
analysed, the top recommendation applied with ``runlens recommend --apply``, and the same workload rerun with
the tuned config: the fault is gone and the measured change is within 25 % of the predicted ``expected_effect``.

(a) DataLoader workers that each hold a cache push the container past 85 % of its limit: the analysis judges
    memory against the container's limit (not the host's RAM), puts the workers first, and predicts the peak
    with fewer workers.
(b) A batch-size ramp (doubling every few steps) that the kernel OOM-kills at the container's limit: exit 137,
    health critical, the kill named, and a batch size that ran (never above it) with a ``failure`` effect;
    rerun with that value, the job completes.

The cgroup is made by the test (``tests/cgroups.py``) and ``runlens collect`` itself starts inside it, as in a
container; skipped only where the machine has no writable memory controller. The workloads live in this file
and run as ``python tests/analyze/test_closed_loop_cgroup.py WORKLOAD CONFIG``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

TOLERANCE = 0.25
MIB = 1 << 20
HERE = Path(__file__).resolve()


# -- workloads (run in a subprocess, under runlens collect, inside the cgroup) --------------------------------

def _read_config(path: str) -> dict[str, Any]:
    import yaml

    with open(path) as fh:
        return dict(yaml.safe_load(fh))


class _CachedDataset:
    """A small in-memory dataset; each worker that loads it builds a private cache of ``cache_mb`` (the way a
    dataset that decodes and keeps samples grows in every worker)."""

    def __init__(self, n: int, dim: int, cache_mb: int) -> None:
        import torch

        self.x = torch.randn(n, dim)
        self.y = torch.randn(n, 1)
        self.cache_mb = cache_mb

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Any:
        return self.x[i], self.y[i]


def _fill_cache(worker_id: int) -> None:
    import numpy as np
    import torch.utils.data as tud

    info = tud.get_worker_info()
    assert info is not None
    ds = info.dataset
    ds.cache = np.ones(ds.cache_mb * MIB // 8)          # touched: resident, private to this worker


def workload_workers(config_path: str) -> None:
    """(a) ``data.num_workers`` persistent DataLoader workers, each holding ``data.worker_cache_mb``."""
    import torch
    from torch.utils.data import DataLoader

    import runlens

    cfg = _read_config(config_path)
    workers, cache_mb = int(cfg["data"]["num_workers"]), int(cfg["data"]["worker_cache_mb"])
    batch, steps = int(cfg["train"]["batch_size"]), int(cfg["train"]["steps"])
    torch.set_num_threads(1)
    ds = _CachedDataset(4096, 64, cache_mb)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, worker_init_fn=_fill_cache,
                        persistent_workers=workers > 0, drop_last=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg["train"]["lr"]))
    with runlens.Monitor(config=cfg) as mon:
        step = 0
        while step < steps:
            for x, y in mon.loader(loader):
                # compute-bound: tens of ms of matrix work per step, so fewer workers cost no waiting
                for _ in range(int(cfg["train"]["inner_steps"])):
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                mon.step(step, loss=loss, batch_size=batch)
                step += 1
                if step >= steps:
                    break


def workload_ramp(config_path: str) -> None:
    """(b) batch-size warm-up: from ``train.batch_start``, doubling every ``train.ramp_every`` steps up to
    ``train.batch_size``, then ``train.steps_at_full`` steps at that size. Memory grows with the batch."""
    import torch

    import runlens

    cfg = _read_config(config_path)
    t = cfg["train"]
    target, batch, every = int(t["batch_size"]), int(t["batch_start"]), int(t["ramp_every"])
    dim, hidden = int(t["input_dim"]), int(t["hidden"])
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=float(t["lr"]))
    with runlens.Monitor(config=cfg) as mon:
        step, at_batch, at_full = 0, 0, 0
        while at_full < int(t["steps_at_full"]):
            x, y = torch.randn(batch, dim), torch.randn(batch, 1)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(step, loss=loss, batch_size=batch)
            print(f"step {step} batch {batch} loss {loss.item():.4f}", flush=True)
            step += 1
            at_batch += 1
            if batch >= target:
                at_full += 1
            elif at_batch >= every:    # the Monitor records batch_size_changed at the first step of the new size
                batch, at_batch = min(target, batch * 2), 0


if __name__ == "__main__":
    {"workers": workload_workers, "ramp": workload_ramp}[sys.argv[1]](sys.argv[2])
    sys.exit(0)


# -- the tests --------------------------------------------------------------------------------------------------

import pytest  # noqa: E402
import yaml  # noqa: E402
from cgroups import TestCgroup, memory_cgroup, writable_memory_controller  # noqa: E402

from runlens.store import open_store  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_torch,
    pytest.mark.skipif(writable_memory_controller() is not None,
                       reason=f"needs a writable memory cgroup controller: {writable_memory_controller()}"),
]


def runlens_cli(tmp_path: Path, env: dict[str, str], *args: str, cgroup: TestCgroup | None = None,
                timeout: float = 240) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "runlens", *args]
    if cgroup is not None:
        argv = cgroup.enter_argv(argv)
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def collect(tmp_path: Path, env: dict[str, str], cg: TestCgroup, workload: str, config: Path, name: str
            ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the workload under ``runlens collect`` started inside the cgroup; (the result, the job id)."""
    db = str(tmp_path / "runlens.db")
    result = runlens_cli(tmp_path, env, "collect", "--db", db, "--name", name, "--config", str(config),
                         "--no-analyze", "--", sys.executable, str(HERE), workload, str(config), cgroup=cg)
    store = open_store(db, create=False)
    try:
        job_id = next(j["job_id"] for j in store.list_jobs() if j["name"] == name)
    finally:
        store.close()
    return result, job_id


def analysis(tmp_path: Path, env: dict[str, str], job_id: str) -> dict[str, Any]:
    result = runlens_cli(tmp_path, env, "analyze", job_id, "--db", str(tmp_path / "runlens.db"), "--json")
    assert result.returncode in (0, 1), result.stderr   # 1: a critical finding, not an error
    return dict(json.loads(result.stdout))


def apply_top(tmp_path: Path, env: dict[str, str], job_id: str, config: Path) -> Path:
    tuned = tmp_path / "tuned.yaml"
    result = runlens_cli(tmp_path, env, "recommend", job_id, "--db", str(tmp_path / "runlens.db"),
                         "--apply", str(config), "-o", str(tuned))
    assert result.returncode == 0, result.stderr + result.stdout
    return tuned


@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    return {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.2", "RUNLENS_FLUSH_INTERVAL": "0.2"}


def top(doc: dict[str, Any]) -> dict[str, Any]:
    assert doc["recommendations"], doc["summary"]
    return dict(doc["recommendations"][0])


def by_id(doc: dict[str, Any], rid: str) -> dict[str, Any] | None:
    return next((r for r in doc["recommendations"] if r["id"] == rid), None)


# -- (a) DataLoader workers holding memory in a container -------------------------------------------------------

# 4 workers x 400 MiB of cache beside a ~0.35 GiB main process and runlens collect: ~1.9 GiB of a 2.125 GiB
# container (~89 %), on a host with many times that. One worker fewer frees ~0.45 GiB: ~68 %.
WORKERS_LIMIT = 2176 * MIB
WORKERS_CONFIG = {"data": {"num_workers": 4, "worker_cache_mb": 400},
                  "train": {"batch_size": 64, "steps": 60, "lr": 0.01, "inner_steps": 150}}


def test_workers_pushing_a_container_past_85_percent(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "workers.yaml"
    config.write_text(yaml.safe_dump(WORKERS_CONFIG, sort_keys=False))
    with memory_cgroup(WORKERS_LIMIT) as cg:
        first, job = collect(tmp_path, env, cg, "workers", config, "workers-4")
        assert first.returncode == 0, first.stderr
        doc = analysis(tmp_path, env, job)
        s = doc["summary"]
        # judged against the container's limit, not the host's RAM
        assert s["memory_limit_source"] == "cgroup" and s["total_memory_gb"] == pytest.approx(WORKERS_LIMIT / 2**30)
        assert s["peak_memory_ratio"] > 0.85, s
        assert s["health_score"] in ("warning", "critical")
        peak = by_id(doc, "memory.peak")
        assert peak is not None and "container limit" in peak["impact"], doc["recommendations"]
        # the workers are the top card that changes a setting, and the primary memory lever
        card = next(r for r in doc["recommendations"] if r.get("config_path"))
        assert card["id"] == "memory.workers", [(r["id"], r["title"]) for r in doc["recommendations"]]
        assert card["primary"] and card["config_path"] == "data.num_workers"
        assert card["current_value"] == 4 and 1 <= card["recommended_value"] < 4
        effect = card["expected_effect"]
        assert effect["metric"] == "peak_memory_gb" and effect["unit"] == "GiB"
        assert effect["predicted"] < 0.85 * s["total_memory_gb"]       # the change ends the pressure

        tuned = apply_top(tmp_path, env, job, config)
        assert yaml.safe_load(tuned.read_text())["data"]["num_workers"] == card["recommended_value"]
        second, job2 = collect(tmp_path, env, cg, "workers", tuned, "workers-tuned")
        assert second.returncode == 0, second.stderr
    doc2 = analysis(tmp_path, env, job2)
    s2 = doc2["summary"]
    assert s2["memory_limit_source"] == "cgroup" and s2["peak_memory_ratio"] < 0.85, s2
    pressing = [r["id"] for r in doc2["recommendations"] if r["category"] == "memory" and r["severity"] != "info"]
    assert by_id(doc2, "memory.peak") is None and not pressing, pressing   # levers left are information
    measured = s2["peak_memory_gb"]
    assert measured == pytest.approx(effect["predicted"], rel=TOLERANCE), (effect, measured)
    print(f"\nworkers: peak {effect['current']:.3f} GiB -> predicted {effect['predicted']:.3f}, "
          f"measured {measured:.3f} GiB of {s['total_memory_gb']:.3f}")


# -- (b) a batch-size ramp the kernel OOM-kills at the container's limit ----------------------------------------

# Each sample of the ramp holds ~27 KiB (the 2048-wide hidden layer, its activation and gradients) above
# ~0.2 GiB of torch and runlens: 16384 peaks near 0.65-0.7 GiB, 32768 would need ~1.1 GiB of the 0.94 GiB limit.
RAMP_LIMIT = 960 * MIB
RAMP_CONFIG = {"train": {"batch_size": 65536, "batch_start": 1024, "ramp_every": 3, "steps_at_full": 5,
                         "input_dim": 256, "hidden": 2048, "lr": 0.001}}


def test_batch_ramp_oom_killed_in_a_container(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "ramp.yaml"
    config.write_text(yaml.safe_dump(RAMP_CONFIG, sort_keys=False))
    with memory_cgroup(RAMP_LIMIT) as cg:
        first, job = collect(tmp_path, env, cg, "ramp", config, "ramp")
        assert first.returncode == 137, first.stderr
        assert cg.oom_kills() == 1
        doc = analysis(tmp_path, env, job)
        s = doc["summary"]
        assert s["health_score"] == "critical" and s["memory_limit_source"] == "cgroup"
        assert s["total_memory_gb"] == pytest.approx(RAMP_LIMIT / 2**30)
        assert "OOM killer" in (s["status_reason"] or "")
        oom = by_id(doc, "memory.oom")
        assert oom is not None and oom["severity"] == "critical", doc["recommendations"]
        assert "OOM killer" in oom["title"] and oom["evidence"]["container_oom_kills"] == 1
        ran = sorted({int(b) for b in _batches_that_ran(tmp_path, job)})
        card = by_id(doc, "memory.batch_size")
        assert card is not None, [(r["id"], r["title"]) for r in doc["recommendations"]]
        assert card["config_path"] == "train.batch_size"
        # the largest batch that ran: never above it, never a "reduce" to a larger number
        assert card["recommended_value"] == max(ran), (card, ran)
        assert card["recommended_value"] < card["current_value"]
        assert card["expected_effect"]["metric"] == "failure"
        assert card["expected_effect"]["current"] is True and card["expected_effect"]["predicted"] is False

        tuned = apply_top(tmp_path, env, job, config)
        assert yaml.safe_load(tuned.read_text())["train"]["batch_size"] == max(ran)
        second, job2 = collect(tmp_path, env, cg, "ramp", tuned, "ramp-tuned")
        assert second.returncode == 0, second.stderr
        assert cg.oom_kills() == 1          # no second kill
    doc2 = analysis(tmp_path, env, job2)
    assert doc2["summary"]["status"] == "succeeded" and doc2["summary"]["health_score"] != "critical"
    assert by_id(doc2, "memory.oom") is None
    # the failure is gone (predicted False, measured: the job succeeded); the peak at that batch as predicted
    also = {a["metric"]: a for a in card["expected_effect"].get("also", [])}
    measured = doc2["summary"]["peak_memory_gb"]
    assert measured == pytest.approx(also["peak_memory_gb"]["predicted"], rel=TOLERANCE), (also, measured)
    print(f"\nramp: killed at the limit; batch {max(ran)} predicted peak "
          f"{also['peak_memory_gb']['predicted']:.3f} GiB, measured {measured:.3f} GiB")


def _batches_that_ran(tmp_path: Path, job_id: str) -> list[int]:
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    try:
        return [s["batch_size"] for s in store.rows("step_metrics", job_id) if s["batch_size"]]
    finally:
        store.close()
