"""Loading a job for analysis: the settings it ran with, and its log's errors placed against the memory recorded
at that moment (the log parsed in-process, or in a forked child for a big log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sample_jobs import T0, make_job

from runlens.analyze import load, registry
from runlens.analyze.analysis import build_analysis
from runlens.analyze.load import job_settings, load_job
from runlens.core.settings import Settings
from runlens.store import Store
from runlens.store.frames import load_frames


# -- settings -------------------------------------------------------------------------------------------

def test_settings_come_from_defaults_monitoring_section_then_the_job() -> None:
    config = {"monitoring": {"sample_interval": 2, "memory_warning_threshold": 0.8}}
    job = {"settings": {"sample_interval": 1, "db": "sqlite:///elsewhere.db", "phase_budgets": {"eval": 60}}}
    s = job_settings(job, config)
    assert s.sample_interval == 1.0 and s.memory_warning_threshold == 0.8
    assert s.db == Settings().db and s.phase_budgets == {"eval": 60}
    notes: list[str] = []
    assert job_settings({}, {"monitoring": {"sample_interval": "fast"}}, notes) == Settings() and notes


# -- log errors against memory --------------------------------------------------------------------------

def _write_log(path: Path) -> Path:
    """A log with a progress bar, a metric named like an error, and a CUDA OOM traceback at T0 + 100 s."""
    from datetime import datetime, timezone

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join([
        f"{iso(T0 + 20)} INFO step 10 loss=0.5 eval_error_rate=0.01 (0 errors)\n",
        " 40%|####      | 40/100 [00:40<01:00, 1.00it/s]\r 50%|#####     | 50/100 [00:50<00:50, 1.00it/s]\n",
        f"{iso(T0 + 100)} ERROR training step failed\n",
        "Traceback (most recent call last):\n",
        '  File "train.py", line 3, in <module>\n',
        "    loss.backward()\n",
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
         "79.11 GiB of which 1.12 GiB is free.\n"),
    ]))
    return path


@pytest.mark.parametrize("in_child", [False, True], ids=["in_process", "forked_child"])
def test_log_errors_carry_the_memory_at_that_moment(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    only_test_rules: dict[str, registry.Rule],
                                                    in_child: bool) -> None:
    if in_child:
        monkeypatch.setattr(load, "PARALLEL_LOG_BYTES", 0)   # take the big-log path: parse in a forked child
    log = _write_log(tmp_path / "runs" / "log.txt")
    # 60 samples over 220 s: one every ~3.7 s, so T0 + 100 is between two of them
    jid = make_job(store, n_steps=200, n_samples=60, log_path=str(log))
    doc = build_analysis(load_job(store, jid))
    errors = doc["log_errors"]
    assert [e["category"] for e in errors] == ["cuda_oom"]
    assert errors[0]["timestamp"] == pytest.approx(T0 + 100)
    samples = load_frames(store, jid).samples
    nearest = samples.iloc[(samples["timestamp"] - (T0 + 100)).abs().argmin()]
    assert errors[0]["memory_at_time_gb"] == pytest.approx(nearest["used_memory_gb"])
    assert doc["summary"]["error_count"] == 1 and doc["summary"]["warning_count"] == 0
    json.dumps(doc, allow_nan=False)
