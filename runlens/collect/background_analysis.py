"""Analyse a Monitor's own job after it closes, in a detached process, so the training process exits at once.

A job that ``runlens collect`` wraps is analysed by the wrapper, which outlives the child; a job the Monitor made
itself has no such process, and analysing in the training process would hold it (and its GPU) for the seconds
the analysis takes. So the Monitor starts ``python -m runlens analyze JOB`` in a session of its own
(``start_new_session``: the terminal's Ctrl-C and the job's process group do not reach it), with stdin closed and
stdout/stderr going to ``analysis.log`` in the job's folder, so nothing lands in the user's terminal after the
prompt has returned. The report goes to ``report.html`` in the same folder (``runlens-runs/<job_id>/`` next to a
SQLite store, else in the working directory), a path the Monitor can announce before the analysis has run.

The store URL travels in ``RUNLENS_DB`` rather than on the command line, where ``ps`` would show a password.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from runlens.store import absolute_db_url, sqlite_path

log = logging.getLogger(__name__)

ANALYSIS_LOG = "analysis.log"
REPORT_NAME = "report.html"

# Started analyses, kept so that a process that goes on after its Monitor closed (a sweep running one job after
# another) reaps them, and so that no Popen is collected while its process still runs (a ResourceWarning).
_started: list[subprocess.Popen[bytes]] = []


def job_folder(job_id: str, db_url: str, cwd: Path | None = None) -> Path:
    """``runlens-runs/<job_id>/`` next to a SQLite store file, else in the working directory: the folder where
    ``runlens collect`` keeps a job's log and report, and the Monitor its stacks dumps."""
    root = cwd or Path.cwd()
    with contextlib.suppress(Exception):
        database = sqlite_path(db_url)
        if database is not None and not str(database).startswith("file:"):
            root = database.expanduser().resolve().parent
    return root / "runlens-runs" / job_id


def analysis_command(job_id: str, report: Path) -> list[str]:
    """The command the detached process runs: the CLI's own ``analyze``, by this interpreter."""
    return [sys.executable, "-m", "runlens", "analyze", job_id, "--html", str(report)]


def analysis_environment(db_url: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The training process's environment, with the store handed over and this runlens importable even when the
    training script put it on ``sys.path`` itself; the job handed over by a wrapper is not the analyser's."""
    env = dict(os.environ if environ is None else environ)
    env.pop("RUNLENS_JOB_ID", None)
    env["RUNLENS_DB"] = absolute_db_url(db_url)   # the analyser runs in the job's folder
    package_root = str(Path(__file__).resolve().parents[2])   # the folder holding this runlens package
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([package_root, *[p for p in paths if p != package_root]])
    return env


def start_background_analysis(job_id: str, db_url: str, *, folder: Path | None = None) -> Path:
    """Start the detached analysis of ``job_id`` and return where its report will be; does not wait for it.

    Raises:
        OSError: the job's folder cannot be created or the process cannot be started.
    """
    _reap()
    folder = folder or job_folder(job_id, db_url)
    folder.mkdir(parents=True, exist_ok=True)
    report = folder / REPORT_NAME
    with open(folder / ANALYSIS_LOG, "ab") as out:
        proc = subprocess.Popen(analysis_command(job_id, report), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=analysis_environment(db_url), cwd=str(folder),
                                start_new_session=True, close_fds=True)
    _started.append(proc)
    log.debug("analysis of %s started in the background (pid %d)", job_id, proc.pid)
    return report


def _reap() -> None:
    """Collect the exit status of analyses that have finished, so none stays a zombie while we run."""
    for proc in list(_started):
        if proc.poll() is not None:
            _started.remove(proc)
