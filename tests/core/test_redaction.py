"""Secrets never reach the store, the reports, the pages or the API: redaction in one place
(runlens.core.redact, applied by the store to every job row and event it writes).

The end-to-end test plants a secret in every input a run has: config keys (top level and nested), a URL's
password in the config, environment variables, and the command line in each form (``--token X``,
``--token=X``, ``key=X``), for a run under ``runlens collect`` and one recorded by a bare Monitor; then searches
the database files, the static reports, and every page and API response of ``runlens ui`` for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from runlens.core.redact import REDACTED, redact, redact_argv, redact_job_fields, redact_text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "ui"))

from ui_helpers import RUN_JOB, StartUi, UiServers, clean_env, runlens_cli  # type: ignore[import-not-found]  # noqa: E402



@pytest.fixture
def start_ui(wait_until: Callable[..., Any]) -> Iterator[StartUi]:
    servers = UiServers(wait_until)
    try:
        yield servers.start
    finally:
        servers.close()


SECRETS = {
    "config key": "CFGSECRET0001",
    "nested config key": "NESTEDSECRET0002",
    "config URL password": "URLSECRET0003",
    "environment variable": "ENVSECRET0004",
    "secret-named env var (NCCL_)": "ENVSECRET0005",
    "argv --api-key X": "ARGVSECRET0006",
    "argv --token=X": "ARGVSECRET0007",
    "argv key=X": "ARGVSECRET0008",
}


def test_argv_forms_are_redacted() -> None:
    argv = ["train.py", "--api-key", "A1", "--token=A2", "hf_token=A3", "--lr", "3", "--tokenizer", "gpt2",
            "--db", "postgresql://u:A4@h/db", "--max-tokens", "5"]
    assert redact_argv(argv) == ["train.py", "--api-key", REDACTED, f"--token={REDACTED}", f"hf_token={REDACTED}",
                                 "--lr", "3", "--tokenizer", "gpt2", "--db", f"postgresql://u:{REDACTED}@h/db",
                                 "--max-tokens", "5"]
    assert redact_argv(redact_argv(argv)) == redact_argv(argv)   # idempotent: the store may see it twice


def test_text_keeps_what_is_not_secret() -> None:
    line = "python train.py --api-key A1 --token=A2 key=A3 --lr 3 max_tokens=7 see https://u:A4@h/x?token=A5"
    shown = redact_text(line)
    assert not any(s in shown for s in ("A1", "A2", "A3", "A4", "A5"))
    assert "--lr 3" in shown and "max_tokens=7" in shown and "https://u:" in shown
    assert redact_text("tokens per second 12000; key frames 3") == "tokens per second 12000; key frames 3"


def test_nested_values_lists_and_job_fields() -> None:
    doc = {"model": {"hf_token": "S1", "layers": 4}, "cmd": ["--password", "S2"], "note": "ran with secret=S3"}
    assert redact(doc) == {"model": {"hf_token": REDACTED, "layers": 4}, "cmd": ["--password", REDACTED],
                           "note": f"ran with secret={REDACTED}"}
    fields = redact_job_fields({"argv": ["x", "--auth", "S4"], "config": {"password": "S5"},
                                "environment": {"WANDB_API_KEY": "S6"}, "status_reason": "exit: token=S7",
                                "pid": 3})
    assert "S4" not in str(fields) and "S5" not in str(fields) and "S6" not in str(fields)
    assert "S7" not in str(fields) and fields["pid"] == 3


def _plant(folder: Path) -> tuple[Path, list[str], dict[str, str]]:
    config = folder / "train.yaml"
    config.write_text(
        "learning_rate: 0.001\n"
        f"api_key: {SECRETS['config key']}\n"
        "logging:\n"
        f"  wandb:\n    token: {SECRETS['nested config key']}\n"
        f"dataset_url: https://reader:{SECRETS['config URL password']}@data.example/set\n"
        "batch_size: 8\n"
    )
    argv = ["--api-key", SECRETS["argv --api-key X"], f"--token={SECRETS['argv --token=X']}",
            f"hf_token={SECRETS['argv key=X']}"]
    env = clean_env(HF_TOKEN=SECRETS["environment variable"],
                    NCCL_SOCKET_PASSWORD=SECRETS["secret-named env var (NCCL_)"])
    return config, argv, env


def _leaks(text: str) -> list[str]:
    return [what for what, secret in SECRETS.items() if secret in text]


@pytest.mark.slow
def test_planted_secrets_appear_nowhere(tmp_path: Path, start_ui: StartUi) -> None:
    db_file = tmp_path / "runlens.db"
    db = f"sqlite:///{db_file}"
    config, argv, env = _plant(tmp_path)
    # A run under runlens collect (the wrapper's argv, the Monitor attached inside) ...
    out = subprocess.run([sys.executable, "-m", "runlens", "collect", "--db", db, "--name", "wrapped", "--config",
                          str(config), "--", sys.executable, str(RUN_JOB), "--name", "wrapped", "--steps", "30",
                          "--config", str(config), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # ... and one recorded by a bare Monitor, whose job row and start event stored sys.argv as given.
    out = subprocess.run([sys.executable, str(RUN_JOB), "--name", "bare", "--steps", "30", "--db", db,
                          "--config", str(config), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    ids = [line.split()[0] for line in runlens_cli("jobs", "--db", db, cwd=tmp_path).splitlines()
           if line.split() and ("wrapped" in line or "bare" in line)]
    assert len(ids) == 2, ids
    for job_id in ids:
        runlens_cli("analyze", job_id, "--db", db, "--html", str(tmp_path / f"{job_id}.html"), cwd=tmp_path)

    found: dict[str, list[str]] = {}
    for path in [db_file, *tmp_path.glob("runlens.db-*"), *tmp_path.glob("*.html")]:
        found[path.name] = _leaks(path.read_bytes().decode("utf-8", "replace"))
    server = start_ui(db)
    a, b = ids
    paths = ["/", f"/jobs/{a}", f"/jobs/{b}", f"/compare?jobs={a},{b}", f"/jobs/{a}/tuned-config",
             f"/jobs/{b}/tuned-config", "/api/jobs", f"/api/compare?jobs={a},{b}"]
    for job_id in ids:
        paths += [f"/api/jobs/{job_id}{tail}" for tail in ("", "/analysis", "/steps", "/samples", "/events")]
    for path in paths:
        status, _, body = server.get(path)
        assert status == 200, (path, body[:300])
        found[path] = _leaks(body.decode("utf-8", "replace"))
    leaks = {where: what for where, what in found.items() if what}
    assert leaks == {}, f"secrets found: {leaks}"
    # The check can see a secret: the config file itself still has them, and the job remembered the argv form.
    assert _leaks(config.read_text())
    for job_id in ids:
        job = server.json(f"/api/jobs/{job_id}")
        assert job["argv"][-4:] == ["--api-key", REDACTED, f"--token={REDACTED}", f"hf_token={REDACTED}"]
        assert job["config"]["logging"]["wandb"]["token"] == REDACTED
        starts = [e for e in server.json(f"/api/jobs/{job_id}/events")["events"]
                  if e["event_type"] in ("start", "monitor_attached")]
        assert starts and all((e["details"].get("argv") or e["details"]["cmd"])[-3] == REDACTED for e in starts)
