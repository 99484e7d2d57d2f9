"""The framework integrations, run for real: each example in ``examples/`` trains on the CPU as a subprocess,
and what runlens stored is compared with what the framework itself reports (its step count, its logged loss
and learning rate), plus phases, the config snapshot's dialect, and failure capture.

Each example prints a JSON line last (job id, the framework's global_step, its log); the store is a real
SQLite file in ``tmp_path``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runlens.report.job import analyze_job
from runlens.core.configpath import HF_PREFIX, get_path, is_config_path
from runlens.analyze.configpaths import resolve_config
from runlens.core.dialects import GENERIC, HUGGINGFACE, LIGHTNING, detect_dialect
from runlens.store import Store, open_store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_torch = pytest.mark.needs_torch
needs_transformers = pytest.mark.skipif(
    not (_has("transformers") and _has("accelerate")),
    reason="needs transformers and accelerate (pip install 'runlens[transformers]')",
)
needs_lightning = pytest.mark.skipif(
    not (_has("lightning") or _has("pytorch_lightning")),
    reason="needs Lightning (pip install 'runlens[lightning]')",
)


def run_example(
    script: str, tmp_path: Path, env: dict[str, str], *args: str, expect_rc: int = 0
) -> tuple[dict[str, Any] | None, str]:
    """Run ``examples/<script>`` with ``--db``/``--out`` in ``tmp_path``; returns (last-line JSON, output)."""
    db = tmp_path / "runlens.db"
    cmd = [sys.executable, str(EXAMPLES / script), "--db", str(db), "--out", str(tmp_path / "out"), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    assert proc.returncode == expect_rc, output[-4000:]
    return _last_json(proc.stdout), output


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return dict(json.loads(line))
            except ValueError:  # the Trainer prints its log dicts with repr()
                continue
    return None


def only_job(store: Store) -> dict[str, Any]:
    jobs = store.list_jobs()
    assert len(jobs) == 1, [j["job_id"] for j in jobs]
    return store.get_job(jobs[0]["job_id"])


def events(store: Store, job_id: str, *types: str) -> list[dict[str, Any]]:
    return [
        e
        for e in store.rows("training_events", job_id, order_by="timestamp")
        if not types or e["event_type"] in types
    ]


def phase_names(store: Store, job_id: str, kind: str) -> list[str]:
    return [e["details"]["name"] for e in events(store, job_id, kind)]


def assert_phases_paired(store: Store, job_id: str, *names: str) -> None:
    starts, ends = phase_names(store, job_id, "phase_start"), phase_names(store, job_id, "phase_end")
    assert sorted(starts) == sorted(ends), (starts, ends)
    for name in names:
        assert name in starts, (name, starts)


def assert_recommendations_resolve(store: Store, job: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """Analyse the job; every recommendation's config path exists in the snapshot (or is marked as a
    default)."""
    result = analyze_job(store, job["job_id"], html_path=tmp_path / "report.html")
    recs = result.analysis["recommendations"]
    config = job["config"]
    with_path = [r for r in recs if is_config_path(r.get("config_path"))]
    for rec in with_path:
        path = str(rec["config_path"])
        if job["config_dialect"] == HUGGINGFACE and path.startswith(HF_PREFIX + "."):
            path = path[len(HF_PREFIX) + 1 :]  # TrainingArguments snapshots are flat
        found, value = get_path(config, path)
        if rec.get("current_value_source") == "config":
            assert found and value == rec["current_value"], (rec, value)
        else:
            assert rec.get("current_value_source") in ("default", "measured", "unknown"), rec
    assert result.html_path is not None and result.html_path.exists()
    return with_path


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


# -- plain PyTorch -------------------------------------------------------------------------------------------


@needs_torch
def test_plain_pytorch_loop_records_steps_phases_data_wait_and_loss_scale(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """The Monitor pattern in a real loop: one row per optimizer step with loss, lr, the clip_grad_norm_ norm,
    data wait from mon.loader, the GradScaler scale; eval and save phases; workers sampled."""
    result, _ = run_example("plain_pytorch.py", tmp_path, child_env, "--steps", "30")
    assert result is not None
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["job_id"] == result["job_id"] and job["status"] == "succeeded"
    steps = store.rows("step_metrics", job["job_id"], order_by="step")
    assert [s["step"] for s in steps] == list(range(1, result["global_step"] + 1))
    assert close(steps[-1]["loss"], result["final_loss"])
    assert all(s["gradient_norm"] and s["gradient_norm"] > 0 for s in steps)
    assert all(s["learning_rate"] == pytest.approx(1e-2) for s in steps)
    assert all(s["data_time_seconds"] is not None for s in steps)
    assert all(s["extras"]["loss_scale"] > 0 for s in steps)
    assert_phases_paired(store, job["job_id"], "eval", "save")
    saved = events(store, job["job_id"], "checkpoint_saved")
    assert saved and all(Path(e["details"]["path"]).exists() for e in saved)
    assert detect_dialect(job["config"]) == job["config_dialect"] == GENERIC
    ref = resolve_config(job["config"], GENERIC, "num_workers")
    assert (ref.path, ref.current_value, ref.source) == ("data.num_workers", 2, "config")
    assert_recommendations_resolve(store, job, tmp_path)


@needs_torch
def test_plain_pytorch_failure_is_failed_with_traceback(tmp_path: Path, child_env: dict[str, str]) -> None:
    """An exception at step 5 inside `with Monitor` ends the job failed, the traceback naming the raise
    site."""
    _, output = run_example(
        "plain_pytorch.py", tmp_path, child_env, "--steps", "30", "--fail-at-step", "5", expect_rc=1
    )
    assert "injected failure at step 5" in output
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["status"] == "failed"
    exc = events(store, job["job_id"], "exception")
    assert len(exc) == 1
    tb = exc[0]["details"]["traceback"]
    assert "plain_pytorch.py" in tb and 'raise RuntimeError(f"injected failure at step {step}")' in tb
    assert max(s["step"] for s in store.rows("step_metrics", job["job_id"])) == 4


# -- Hugging Face Trainer ----------------------------------------------------------------------------------


@needs_transformers
def test_hf_trainer_callback_matches_the_trainers_own_log(tmp_path: Path, child_env: dict[str, str]) -> None:
    """Every optimizer step is stored with exactly the loss, learning rate and grad norm the Trainer logged
    (gradient accumulation 2, so micro-batch losses are summed; clipping at 0.5, so the norm is the pre-clip
    one), the batch sizes, eval and save phases, and the TrainingArguments as a Hugging Face config whose
    paths resolve."""
    result, _ = run_example(
        "hf_trainer.py",
        tmp_path,
        child_env,
        "--steps",
        "20",
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-grad-norm",
        "0.5",
    )
    assert result is not None and result["global_step"] == 20
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["status"] == "succeeded"
    steps = {s["step"]: s for s in store.rows("step_metrics", job["job_id"], order_by="step")}
    assert sorted(steps) == list(range(1, result["global_step"] + 1))
    logged = [h for h in result["log_history"] if "loss" in h]
    assert len(logged) == result["global_step"]  # logging_steps=1
    for h in logged:
        s = steps[h["step"]]
        assert close(s["loss"], h["loss"]), (h, s)
        assert close(s["learning_rate"], h["learning_rate"]), (h, s)
        assert close(s["gradient_norm"], h["grad_norm"]), (h, s)
        assert s["batch_size"] == 4 and s["extras"]["effective_batch_size"] == 8
    assert all(s["data_time_seconds"] is not None for s in steps.values())
    assert_phases_paired(store, job["job_id"], "eval", "save")
    saved = events(store, job["job_id"], "checkpoint_saved")
    assert [e["details"]["step"] for e in saved] == [10, 20]
    assert Path(saved[-1]["details"]["path"]).is_dir()  # save_total_limit=1 removed the earlier one
    assert events(store, job["job_id"], "eval_metrics")[0]["details"]["eval_loss"] > 0
    assert detect_dialect(job["config"]) == job["config_dialect"] == HUGGINGFACE
    ref = resolve_config(job["config"], HUGGINGFACE, "batch_size")
    assert (ref.path, ref.current_value, ref.source) == (
        "TrainingArguments.per_device_train_batch_size",
        4,
        "config",
    )
    ref = resolve_config(job["config"], HUGGINGFACE, "gradient_accumulation")
    assert (ref.current_value, ref.source) == (2, "config")
    # max_grad_norm=0.5 against norms of ~1-1.6: a lower learning rate only if the loss rose (clipping while it
    # falls is information without a change); whatever the cards set resolves to the snapshot's keys.
    assert_recommendations_resolve(store, job, tmp_path)


@needs_transformers
def test_hf_trainer_failure_is_failed_with_traceback(tmp_path: Path, child_env: dict[str, str]) -> None:
    """TrainerCallback has no exception hook: an exception that ends the program is still recorded (the
    Monitor's atexit hook) with the raise site, and the job is failed."""
    _, output = run_example(
        "hf_trainer.py", tmp_path, child_env, "--steps", "12", "--fail-at-step", "5", expect_rc=1
    )
    assert "injected failure at step 5" in output
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["status"] == "failed" and job["status_reason"] == "exception: RuntimeError"
    exc = events(store, job["job_id"], "exception")
    assert len(exc) == 1
    tb = exc[0]["details"]["traceback"]
    assert (
        "hf_trainer.py" in tb and 'raise RuntimeError(f"injected failure at step {state.global_step}")' in tb
    )
    assert max(s["step"] for s in store.rows("step_metrics", job["job_id"])) == 5


@needs_transformers
def test_hf_train_helper_records_an_exception_the_caller_catches(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """runlens.integrations.transformers.train(): a caught exception is recorded and the job failed, even
    though the program goes on and exits 0."""
    script = tmp_path / "caught.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(EXAMPLES)!r})
import hf_trainer
from runlens.integrations.transformers import train
args = hf_trainer.parse_args(["--steps", "8", "--out", {str(tmp_path / "out")!r}])
trainer = hf_trainer.build_trainer(args, [hf_trainer.FailAtStep(3)])
try:
    train(trainer, runlens_options={{"db": {str(tmp_path / "runlens.db")!r}, "name": "caught"}})
except RuntimeError as exc:
    print("caught:", exc)
""")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "caught: injected failure at step 3" in proc.stdout
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["name"] == "caught" and job["status"] == "failed"
    assert "FailAtStep" not in job["status_reason"] and "RuntimeError" in job["status_reason"]
    assert "on_step_end" in events(store, job["job_id"], "exception")[0]["details"]["traceback"]


# -- Lightning -------------------------------------------------------------------------------------------


def _lightning_logged(metrics_csv: str) -> dict[int, float]:
    """train_loss per step from the CSVLogger; Lightning logs step N-1 for the N-th optimizer step."""
    out: dict[int, float] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("train_loss"):
                out[int(row["step"]) + 1] = float(row["train_loss"])
    return out


@needs_lightning
def test_lightning_callback_matches_logged_metrics(tmp_path: Path, child_env: dict[str, str]) -> None:
    """Every optimizer step with the loss Lightning logged, the scheduler's lr, a pre-clip gradient norm;
    sanity-check, eval and save phases; the Trainer/DataModule/model snapshot as a Lightning config."""
    result, _ = run_example("lightning_example.py", tmp_path, child_env, "--steps", "24")
    assert result is not None and result["global_step"] == 24
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["status"] == "succeeded"
    steps = {s["step"]: s for s in store.rows("step_metrics", job["job_id"], order_by="step")}
    assert sorted(steps) == list(range(1, result["global_step"] + 1))
    logged = _lightning_logged(result["metrics_csv"])
    assert sorted(logged) == sorted(steps)
    for step, loss in logged.items():
        assert close(steps[step]["loss"], loss), (step, loss, steps[step])
    # StepLR(step_size=10, gamma=0.5) stepped every optimizer step: the lr each step used.
    for step, s in steps.items():
        assert close(s["learning_rate"], 1e-2 * 0.5 ** ((step - 1) // 10)), (step, s)
        assert s["batch_size"] == 32 and s["gradient_norm"] > 0
    assert any(s["gradient_norm"] > 1.0 for s in steps.values())  # measured before gradient_clip_val=1.0
    assert_phases_paired(store, job["job_id"], "sanity_check", "eval", "save")
    saved = events(store, job["job_id"], "checkpoint_saved")
    assert [e["details"]["step"] for e in saved] == [12, 24]
    assert all(e["details"]["path"] and Path(e["details"]["path"]).exists() for e in saved)
    loader = events(store, job["job_id"], "dataloader")[0]["details"]
    assert loader["num_workers"] == 2 and loader["batch_size"] == 32
    config = job["config"]
    assert detect_dialect(config) == job["config_dialect"] == LIGHTNING
    assert config["trainer"]["max_steps"] == 24 and config["model"]["lr"] == 1e-2
    for concept, path, value in (
        ("num_workers", "data.num_workers", 2),
        ("batch_size", "data.batch_size", 32),
        ("learning_rate", "model.lr", 1e-2),
        ("max_grad_norm", "trainer.gradient_clip_val", 1.0),
    ):
        ref = resolve_config(config, LIGHTNING, concept)
        assert (ref.path, ref.current_value, ref.source) == (path, value, "config"), ref
    # gradient_clip_val=1.0 against norms of ~2-20: the clipping rule names model.lr.
    assert assert_recommendations_resolve(store, job, tmp_path)


@needs_lightning
def test_lightning_failure_is_failed_with_traceback(tmp_path: Path, child_env: dict[str, str]) -> None:
    """An exception in training_step at step 5 reaches on_exception: the job is failed with the traceback."""
    _, output = run_example(
        "lightning_example.py", tmp_path, child_env, "--steps", "24", "--fail-at-step", "5", expect_rc=1
    )
    assert "injected failure at step 5" in output
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    job = only_job(store)
    assert job["status"] == "failed"
    exc = events(store, job["job_id"], "exception")
    assert len(exc) == 1
    tb = exc[0]["details"]["traceback"]
    assert "lightning_example.py" in tb and "in training_step" in tb
    assert max(s["step"] for s in store.rows("step_metrics", job["job_id"])) == 4


# -- without the frameworks ----------------------------------------------------------------------------------


def test_runlens_imports_no_framework(child_env: dict[str, str]) -> None:
    """`import runlens` and the CLI never import transformers or Lightning (the integrations are opt-in)."""
    code = (
        "import sys, runlens, runlens.cli, runlens.integrations, runlens.demo.run\n"
        "print(sorted(m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
