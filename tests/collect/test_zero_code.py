"""Zero-code steps: real trainers run unmodified under ``runlens collect`` on the CPU, and the steps it reads from
their output equal what they printed (and the framework's own history); ranks, a Monitor inside, custom patterns,
and a stall of a run that only prints its progress."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from recorded_jobs import recorded_run, script

from runlens.store import open_store

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def env(child_env: dict[str, str]) -> dict[str, str]:
    return {**child_env, "RUNLENS_SAMPLE_INTERVAL": "0.5", "RUNLENS_FLUSH_INTERVAL": "0.2"}


def collect(tmp_path: Path, env: dict[str, str], *args: str, flags: tuple[str, ...] = (),
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(tmp_path / "runlens.db"), "--no-analyze",
            *flags, "--", sys.executable, *args]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_hf_trainer_steps_equal_its_log_history(tmp_path: Path, env: dict[str, str]) -> None:
    """A Hugging Face Trainer without the runlens callback: each printed log dict is a step at the step the
    Trainer logged it (numbered by its progress bar), with the loss it printed; evaluations are eval phases."""
    pytest.importorskip("transformers")
    proc = collect(tmp_path, env, str(SCRIPTS / "zero_code_hf.py"), str(tmp_path / "history.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.loads((tmp_path / "history.json").read_text())
    run = recorded_run(tmp_path)
    want = [(h["step"], float(f"{h['loss']:.4g}")) for h in history if "loss" in h]   # printed as '{v:.4g}'
    assert [(s["step"], s["loss"]) for s in run["steps"]] == want
    assert {s["source"] for s in run["steps"]} == {"output"}
    assert all(s["learning_rate"] is not None and s["gradient_norm"] is not None for s in run["steps"])
    evals = [e["details"] for e in run["events"] if e["event_type"] == "phase_end"]
    assert [e["metrics"]["eval_loss"] for e in evals] == [float(f"{h['eval_loss']:.4g}") for h in history
                                                          if "eval_loss" in h]
    assert all(e["name"] == "eval" and e["duration_seconds"] >= 0 for e in evals)
    assert run["job"]["last_step"] == want[-1][0]


@pytest.mark.slow
def test_lightning_steps_equal_its_logged_metrics(tmp_path: Path, env: dict[str, str]) -> None:
    """A Lightning run without the runlens callback: one step per batch, numbered across epochs, with the loss its
    bar showed (three significant digits) equal to what its CSVLogger recorded."""
    pytest.importorskip("lightning")
    proc = collect(tmp_path, env, str(SCRIPTS / "zero_code_lightning.py"), str(tmp_path / "logs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    logged = [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(metrics.open()) if r["train_loss"]]
    steps = recorded_run(tmp_path)["steps"]
    # The bar counts batches done (1, 2, ...); the logger's step is the global step before the batch (0, 1, ...).
    assert [s["step"] - 1 for s in steps] == [step for step, _ in logged]
    for s, (_, loss) in zip(steps, logged):
        assert s["loss"] == pytest.approx(loss, rel=5e-3), (s, loss)


@pytest.mark.slow
def test_nanogpt_loop_steps_equal_what_it_printed_and_a_nan_is_a_divergence(tmp_path: Path,
                                                                            env: dict[str, str]) -> None:
    """nanoGPT's iter lines are steps with their printed loss and step time; the NaN it prints is kept as
    non-finite and the analysis calls the run diverged."""
    proc = collect(tmp_path, env, str(SCRIPTS / "zero_code_nanogpt.py"), str(tmp_path / "printed.json"),
                   "--nan-at", "50")
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads((tmp_path / "printed.json").read_text())
    run = recorded_run(tmp_path)
    got = [(s["step"], "nan" if s["loss"] is None else s["loss"]) for s in run["steps"]]
    assert got == [tuple(p) for p in printed]
    nan_rows = [s for s in run["steps"] if s["step"] >= 50]
    assert nan_rows and all(s["extras"]["nonfinite"] == {"loss": "nan"} for s in nan_rows)
    assert all(s["step_time_seconds"] and s["step_time_seconds"] < 1 for s in run["steps"])
    evals = [e for e in run["events"] if e["event_type"] == "phase_end"]
    assert [e["details"]["step"] for e in evals] == [25, 50]

    from runlens.report.job import analyze_job

    store = open_store(str(tmp_path / "runlens.db"), create=False)
    try:
        doc = analyze_job(store, run["job"]["job_id"], save=False, write_html=False).analysis
    finally:
        store.close()
    assert doc["summary"]["step_source"] == "output"
    assert doc["summary"]["goodput"]["ratio"] is not None
    assert any(r["id"] == "training.nonfinite" and r["severity"] == "critical" for r in doc["recommendations"])


def test_ranks_get_one_step_each(tmp_path: Path, env: dict[str, str]) -> None:
    """``[rankN]:`` prefixes (torchrun --tee) give each rank its own steps; a line printed twice is one step."""
    child = script(tmp_path, """
        for step in range(1, 6):
            for rank in (0, 1):
                print(f"[rank{rank}]:step: {step}  loss:  {1.0 / step + rank:.4f}", flush=True)
            print(f"[rank1]:step: {step}  loss:  {1.0 / step + 1:.4f}", flush=True)
    """)
    proc = collect(tmp_path, env, child)
    assert proc.returncode == 0, proc.stderr
    steps = recorded_run(tmp_path)["steps"]
    assert sorted((s["rank"], s["step"]) for s in steps) == [(r, n) for r in (0, 1) for n in range(1, 6)]


def test_a_monitor_inside_wins(tmp_path: Path, env: dict[str, str]) -> None:
    """A script that calls runlens and also prints its progress: its steps are recorded once, by its Monitor."""
    child = script(tmp_path, """
        import time
        import runlens
        with runlens.Monitor(name="inside") as mon:
            for i in range(20):
                mon.step(i, loss=1.0 / (i + 1))
                print(f"iter {i}: loss {1.0 / (i + 1):.4f}, time 20.00ms", flush=True)
                time.sleep(0.02)
    """)
    proc = collect(tmp_path, env, child)
    assert proc.returncode == 0, proc.stderr
    steps = recorded_run(tmp_path)["steps"]
    assert len(steps) == 20 and {s["source"] for s in steps} == {"monitor"}


def test_progress_pattern_reads_a_format_of_ones_own(tmp_path: Path, env: dict[str, str]) -> None:
    child = script(tmp_path, """
        for i in range(1, 4):
            print(f"[{i:03d}] objective={0.5 / i:.3f} eta=0.1", flush=True)
    """)
    proc = collect(tmp_path, env, child, flags=("--progress-pattern", r"\[(?P<step>\d+)\] objective=(?P<loss>\S+)"))
    assert proc.returncode == 0, proc.stderr
    assert [(s["step"], s["loss"]) for s in recorded_run(tmp_path)["steps"]] == [(1, 0.5), (2, 0.25), (3, 0.167)]


def test_progress_pattern_from_the_config(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "run.yaml").write_text("monitoring:\n  progress_pattern: 'it=(?P<step>\\d+) L=(?P<loss>\\S+)'\n")
    child = script(tmp_path, "print('it=7 L=0.25', flush=True)\n")
    proc = collect(tmp_path, env, child, flags=("--config", str(tmp_path / "run.yaml")))
    assert proc.returncode == 0, proc.stderr
    assert [(s["step"], s["loss"]) for s in recorded_run(tmp_path)["steps"]] == [(7, 0.25)]


@pytest.mark.parametrize("pattern, why", [("(?P<step>\\d+", "does not compile"), ("x=(\\d+)", "has no")])
def test_a_bad_progress_pattern_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str], pattern: str,
                                                       why: str) -> None:
    proc = collect(tmp_path, env, "-c", "print('never run')", flags=("--progress-pattern", pattern))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and why in proc.stderr and "--progress-pattern" in proc.stderr
    assert "never run" not in proc.stdout
    assert not (tmp_path / "runlens.db").exists() or not _jobs(tmp_path)


def _jobs(tmp_path: Path) -> list[Any]:
    store = open_store(str(tmp_path / "runlens.db"), create=False)
    try:
        return store.list_jobs()
    finally:
        store.close()


@pytest.mark.slow
def test_a_stall_after_printed_progress_is_reported_with_its_step(tmp_path: Path, env: dict[str, str], spawn: Any,
                                                                  wait_until: Callable[..., Any]) -> None:
    """A child that prints its steps, then hangs: the guard's timeout is calibrated on the printed steps (not the
    startup grace, no --no-output-timeout needed), status shows the last step and loss while it hangs, and the
    stall and the kill name the step it stopped at."""
    (tmp_path / "run.yaml").write_text("monitoring:\n  calibrated_min: 1\n  calibrated_max: 2\n")
    db = tmp_path / "runlens.db"
    argv = [sys.executable, "-m", "runlens", "collect", "--db", str(db), "--no-analyze", "--config",
            str(tmp_path / "run.yaml"), "--hard-timeout", "8", "--kill-grace", "1", "--",
            sys.executable, str(SCRIPTS / "print_then_stall.py"), "--lines", "40", "--every", "0.05"]
    proc = spawn(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def stalled() -> Any:
            if not db.exists():
                return None
            store = open_store(str(db), create=False)
            try:
                jobs = store.list_jobs()
                return jobs and store.get_job(jobs[0]["job_id"])["last_step"] == 39 and jobs[0]["job_id"]
            finally:
                store.close()

        job_id = wait_until(stalled, timeout=60)
        assert proc.poll() is None
        status = subprocess.run([sys.executable, "-m", "runlens", "status", job_id, "--db", str(db), "--json"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(status.stdout)
        assert info["last_step"] == 39 and info["last_loss"] == pytest.approx(1.0 / 40, rel=1e-3)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 124, err[-2000:]
    run = recorded_run(tmp_path)
    (hang,) = [e["details"] for e in run["events"] if e["event_type"] == "hang_suspected"]
    assert hang["timeout_kind"] == "calibrated" and 1.0 <= hang["timeout"] <= 2.0
    assert hang["last_step"] == 39 and hang["output_steps"] is True and hang["progress_source"] == "output"
    assert run["job"]["status"] == "timed_out" and "last step 39" in run["job"]["status_reason"]
    assert math.isclose(run["steps"][-1]["loss"], 1.0 / 40, rel_tol=1e-3)


def test_a_run_that_prints_no_progress_has_unknown_steps(tmp_path: Path, env: dict[str, str]) -> None:
    """No Monitor and no progress line: the analysis says the steps are unknown, not 0% productive."""
    child = script(tmp_path, "import time\nprint('hello', flush=True)\ntime.sleep(0.3)\n")
    proc = collect(tmp_path, env, child)
    assert proc.returncode == 0, proc.stderr
    from runlens.report.job import analyze_job

    store = open_store(str(tmp_path / "runlens.db"), create=False)
    try:
        doc = analyze_job(store, store.list_jobs()[0]["job_id"], save=False, write_html=False).analysis
    finally:
        store.close()
    s = doc["summary"]
    assert s["step_source"] is None and s["goodput"]["ratio"] is None and s["goodput"]["unknown"]
    assert any("steps unknown" in n for n in doc["notes"])


def test_the_tee_hands_over_only_progress_lines_whole_however_the_reads_cut_them() -> None:
    """The tee looks for progress words per chunk: a line cut by a read is handed over once, whole, after its end
    arrives; lines without a progress word and bar redraws come as they should."""
    from runlens.collect.progress_lines import CANDIDATE_WORDS
    from runlens.collect.tee import _LineAssembler

    got: list[tuple[bytes, bool]] = []
    asm = _LineAssembler(lambda line, t: None, 10.0, 1 << 20, lambda d, t, r: got.append((d, r)), CANDIDATE_WORDS)
    data = b"hello\niter 1: lo" + b"ss 2.0, time 1.00ms\nplain text\r 50%|##  | 1/2 [00:01<00:01, 1.0it/s]\n"
    for i in range(0, len(data), 7):
        asm.feed(data[i:i + 7], 0.0)
    bar = b" 50%|##  | 1/2 [00:01<00:01, 1.0it/s]"
    whole = [(b"iter 1: loss 2.0, time 1.00ms", False), (b"plain text", True), (bar, False)]
    assert [g for g in got if g in whole] == whole
    # A redraw's text after its \r is handed over as it stands (a bar writes each redraw whole, so in a real pipe
    # it is whole); these reads cut one in pieces.
    assert all(bar.startswith(d) and r for d, r in got if (d, r) not in whole)
