"""Closed loop: a fault is run under ``runlens collect``, analysed, the top recommendation applied with
``runlens recommend JOB --apply CONFIG -o tuned.yaml``, and the same workload rerun with the tuned config. The
fault must be gone and the measured change within 25 % of the ``expected_effect`` the first analysis predicted.

Each workload is a real CPU training loop that reads its settings from the YAML config the test writes (as a
user's script reads its own), with a Monitor inside that attaches to ``runlens collect``'s job. They live in this
file and run as ``python tests/analyze/test_closed_loop.py WORKLOAD CONFIG``. Each closed loop costs well under
30 s of CPU on a 2-core machine.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

TOLERANCE = 0.25
HERE = Path(__file__).resolve()

pytestmark = [pytest.mark.slow, pytest.mark.needs_torch]


# -- workloads (run under runlens collect) -------------------------------------------------------------------

class _SlowDataset:
    """Items that take ``delay`` seconds each to read, waiting (a slow disk or network store), not computing."""

    def __init__(self, n: int, delay: float) -> None:
        self.n, self.delay = n, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        import torch

        time.sleep(self.delay)
        g = torch.Generator().manual_seed(i)
        return torch.randn(64, generator=g), torch.randn(1, generator=g)


def workload_slow_data(cfg: dict[str, Any]) -> None:
    """A slow dataset read in ``num_workers`` workers; each step trains for ``compute_seconds`` of wall time
    (real forward/backward passes, as long as a device step would take whatever else runs on the machine)."""
    import torch
    from torch.utils.data import DataLoader

    import runlens

    torch.manual_seed(0)
    torch.set_num_threads(1)
    workers = int(cfg["num_workers"])
    loader = DataLoader(_SlowDataset(100_000, cfg["item_seconds"]), batch_size=int(cfg["batch_size"]),
                        num_workers=workers, persistent_workers=workers > 0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=cfg["learning_rate"])
    with runlens.Monitor(config=cfg) as mon:
        for step, (x, y) in enumerate(mon.loader(loader)):
            until = time.perf_counter() + cfg["compute_seconds"]
            while True:
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if time.perf_counter() >= until:
                    break
            mon.step(step, loss=loss.detach(), lr=cfg["learning_rate"], batch_size=int(cfg["batch_size"]))
            if step + 1 >= cfg["steps"]:
                break


def workload_regression(cfg: dict[str, Any]) -> None:
    """Linear regression by SGD at ``learning_rate``, gradient clipping when ``max_grad_norm`` > 0. Too high a
    rate makes the loss overflow; the loop goes on to ``steps`` as a training script does."""
    import torch

    import runlens

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(2048, 16)
    y = x @ torch.randn(16, 1) + 0.1 * torch.randn(2048, 1)
    model = torch.nn.Linear(16, 1)
    lr, clip, bs = float(cfg["learning_rate"]), float(cfg.get("max_grad_norm") or 0), int(cfg["batch_size"])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with runlens.Monitor(config=cfg) as mon:
        for step in range(int(cfg["steps"])):
            i = torch.randint(0, x.shape[0], (bs,))
            loss = torch.nn.functional.mse_loss(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
            opt.step()
            mon.step(step, loss=loss.item(), lr=lr, grad_norm=norm.item(), batch_size=bs)
            time.sleep(cfg["step_sleep"])


def workload_compute_bound(cfg: dict[str, Any]) -> None:
    """Nothing wrong: data in memory, a learnable task, ~20 ms of compute a step, clipping on."""
    import torch

    import runlens

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(4096, 32)
    y = torch.sin(x[:, :1]) + 0.05 * torch.randn(4096, 1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1))
    opt = torch.optim.SGD(model.parameters(), lr=cfg["learning_rate"])
    bs = int(cfg["batch_size"])
    with runlens.Monitor(config=cfg) as mon:
        for step in range(int(cfg["steps"])):
            i = torch.randint(0, x.shape[0], (bs,))
            for _ in range(cfg["inner_steps"]):
                loss = torch.nn.functional.mse_loss(model(x[i]), y[i])
                opt.zero_grad()
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            opt.step()
            mon.step(step, loss=loss.item(), lr=cfg["learning_rate"], grad_norm=norm.item(), batch_size=bs)


WORKLOADS = {"slow_data": workload_slow_data, "regression": workload_regression,
             "compute_bound": workload_compute_bound}


# -- the loop ----------------------------------------------------------------------------------------------

class Loop:
    """One workload's runs in one folder and one store."""

    def __init__(self, tmp_path: Path, env: dict[str, str], workload: str) -> None:
        self.dir, self.env, self.workload = tmp_path, env, workload
        self.db = f"sqlite:///{tmp_path / 'runlens.db'}"

    def runlens(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "runlens", *args], cwd=self.dir, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def run(self, config: Path, name: str) -> str:
        """Run the workload with ``config`` under runlens collect; its job id."""
        self.runlens("collect", "--db", self.db, "--name", name, "--config", str(config), "--",
                     sys.executable, str(HERE), self.workload, str(config))
        from runlens.store import open_store

        store = open_store(self.db, create=False)
        try:
            jobs = [j for j in store.list_jobs() if j["name"] == name]
        finally:
            store.close()
        assert len(jobs) == 1, jobs
        return str(jobs[0]["job_id"])

    def analysis(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.runlens("analyze", job_id, "--db", self.db, "--json").stdout)  # type: ignore[no-any-return]

    def apply(self, job_id: str, config: Path) -> Path:
        tuned = self.dir / "tuned.yaml"
        self.runlens("recommend", job_id, "--db", self.db, "--apply", str(config), "-o", str(tuned))
        return tuned

    def data(self, job_id: str) -> Any:
        from runlens.analyze.load import load_job
        from runlens.store import open_store

        store = open_store(self.db, create=False)
        try:
            return load_job(store, job_id)
        finally:
            store.close()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def within(measured: float, predicted: float, tol: float = TOLERANCE) -> bool:
    return abs(measured - predicted) <= tol * abs(predicted)


def ids(analysis: dict[str, Any], *severities: str) -> list[str]:
    return [r["id"] for r in analysis["recommendations"] if not severities or r["severity"] in severities]


@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    return {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.5", "RUNLENS_FLUSH_INTERVAL": "0.2"}


# -- the tests ---------------------------------------------------------------------------------------------

def test_slow_dataset_gets_the_workers_that_hide_its_wait(tmp_path: Path, env: dict[str, str]) -> None:
    """0 workers, 20 ms an item, batch 4 (~80 ms of waiting against ~15 ms of work a step): the top card sets
    the worker count that hides the wait, and the rerun's step time is the predicted one within 25 %."""
    from runlens.analyze import measures as m

    loop = Loop(tmp_path, env, "slow_data")
    config = write_config(tmp_path / "train.yaml", {
        "batch_size": 4, "num_workers": 0, "learning_rate": 0.01, "item_seconds": 0.02, "compute_seconds": 0.015,
        "steps": 60})
    first = loop.analysis(loop.run(config, "slow"))
    top = first["recommendations"][0]
    assert top["id"] == "throughput.input_bound" and top["severity"] == "warning", ids(first)
    effect = top["expected_effect"]
    assert effect["metric"] == "step_time_seconds" and effect["predicted"] < effect["current"] / 3, effect
    workers = top["recommended_value"]
    # t_b ≈ 80+ ms against c ≈ 15 ms: ceil(t_b / c) + 1 workers, 6 or 7; the items wait (sleep), so the two
    # cores do not cap them.
    assert top["evidence"]["loading"] == "io" and 6 <= workers <= 8, top["evidence"]
    tuned = loop.apply(first["job"]["job_id"], config)
    assert yaml.safe_load(tuned.read_text())["num_workers"] == workers

    second_id = loop.run(tuned, "slow-tuned")
    second = loop.analysis(second_id)
    assert "throughput.input_bound" not in ids(second, "warning", "critical"), second["recommendations"]
    dw = m.data_wait(loop.data(second_id))
    assert dw is not None
    measured = dw.step_seconds / dw.steps
    print(f"\nslow data: step time {effect['current'] * 1000:.1f} ms with 0 workers; predicted "
          f"{effect['predicted'] * 1000:.1f} ms with {workers}, measured {measured * 1000:.1f} ms "
          f"(data wait {dw.share:.1%})")
    assert within(measured, effect["predicted"]), (measured, effect)


def test_diverging_learning_rate_is_sized_from_the_measured_growth(tmp_path: Path, env: dict[str, str]) -> None:
    """SGD at lr 5.0 without clipping overflows within a few steps: the learning rate the card recommends comes
    from the measured growth, clipping is offered beside it, and the rerun with both does not diverge."""
    loop = Loop(tmp_path, env, "regression")
    config = write_config(tmp_path / "train.yaml", {
        "learning_rate": 5.0, "max_grad_norm": 0.0, "batch_size": 64, "steps": 80, "step_sleep": 0.01})
    first_id = loop.run(config, "diverge")
    first = loop.analysis(first_id)
    top = first["recommendations"][0]
    assert top["id"] == "training.nonfinite" and top["severity"] == "critical", ids(first)
    assert top["expected_effect"] == {"metric": "failure", "current": True, "predicted": False, "unit": "bool"}
    lr = top["recommended_value"]
    assert 0 < lr < 5.0 / 2 and top["evidence"]["growth_per_step"] > 1, top["evidence"]
    clipping = next(r for r in first["recommendations"] if r["id"] == "training.clipping")
    # (a flat config with learning_rate and max_grad_norm reads as TrainingArguments; --apply writes it flat)
    assert clipping["config_path"].endswith("max_grad_norm") and clipping["recommended_value"] == 1.0
    tuned = loop.apply(first_id, config)
    assert yaml.safe_load(tuned.read_text()) | {} == {**yaml.safe_load(config.read_text()), "learning_rate": lr,
                                                       "max_grad_norm": 1.0}

    second_id = loop.run(tuned, "diverge-tuned")
    second = loop.analysis(second_id)
    assert not {"training.nonfinite", "training.loss_spikes"} & set(ids(second)), second["recommendations"]
    assert second["summary"]["health_score"] != "critical"
    loss = loop.data(second_id).steps["loss"].to_numpy(dtype=float)
    assert all(math.isfinite(v) for v in loss) and loss[-10:].mean() < loss[:10].mean() / 10
    print(f"\ndiverge: lr 5.0 overflowed at step {top['evidence']['step']} (growth ×"
          f"{top['evidence']['growth_per_step']:.3g} a step); predicted no failure at lr {lr:g} with clipping; "
          f"measured: no failure, loss {loss[:10].mean():.3g} -> {loss[-10:].mean():.3g}")


def test_healthy_compute_bound_run_is_good_with_no_warning(tmp_path: Path, env: dict[str, str]) -> None:
    """A compute-bound run with nothing wrong: GOOD, no warning or critical card, nothing for --apply to change,
    and the same on its rerun."""
    loop = Loop(tmp_path, env, "compute_bound")
    config = write_config(tmp_path / "train.yaml", {
        "learning_rate": 0.01, "max_grad_norm": 1.0, "batch_size": 64, "inner_steps": 12, "steps": 150})
    first_id = loop.run(config, "healthy")
    first = loop.analysis(first_id)
    assert first["summary"]["health_score"] == "good", first["recommendations"]
    assert ids(first, "warning", "critical") == []
    assert all(r.get("recommended_value") is None for r in first["recommendations"]), first["recommendations"]
    tuned = loop.apply(first_id, config)
    assert yaml.safe_load(tuned.read_text()) == yaml.safe_load(config.read_text())
    second = loop.analysis(loop.run(tuned, "healthy-again"))
    assert second["summary"]["health_score"] == "good" and ids(second, "warning", "critical") == []


if __name__ == "__main__":
    WORKLOADS[sys.argv[1]](yaml.safe_load(Path(sys.argv[2]).read_text()))
