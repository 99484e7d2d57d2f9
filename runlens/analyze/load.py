"""Loading one job for analysis: frames from the store, the config snapshot, settings, and the log's findings.

This is the only analyzer module that touches the store (through ``runlens.store.frames``); everything after it
works on the ``JobData`` it returns.

The log parse and the database read are independent and both CPU-bound, so for a big log the parse runs in a
forked child process while this one reads the frames. On bench/bench_analyze.py's job (1M steps, 200 MB log) the
serial load costs ~6.2 CPU-seconds in one process; split, ~4.2 s here and ~2.4 s in the child, so on two idle
cores the wall time is about that of the slower half.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from runlens.analyze.jobdata import JobData
from runlens.analyze.logparse import parse_log
from runlens.core.dialects import DIALECTS, detect_dialect
from runlens.core.errors import ConfigError, LogUnreadable
from runlens.core.settings import Settings, settings_from_monitoring_section
from runlens.store.frames import load_frames
from runlens.store.store import Store

log = logging.getLogger(__name__)

__all__ = ["PARALLEL_LOG_BYTES", "job_settings", "load_job"]

PARALLEL_LOG_BYTES = 32 * 1024 * 1024   # below this, forking costs more than it saves
_NOT_FROM_JOB = {"db", "disabled"}       # the collector's store URL and kill switch say nothing about the run


def load_job(store: Store, job_id: str, *, log_path: str | os.PathLike[str] | None = None,
             now: float | None = None) -> JobData:
    """Everything recorded about ``job_id`` as a ``JobData``.

    Args:
        store: an open store.
        job_id: the job.
        log_path: a log file to parse instead of the one ``runlens collect`` recorded with the job.
        now: the analysis time (for a job still running); defaults to the clock.

    Raises:
        JobNotFound, StoreUnavailable: from the store.
        LogUnreadable: ``log_path`` was given and cannot be read. (A recorded log that has gone missing is only
            a note in the analysis: the metrics are still worth analysing.)
    """
    job = store.get_job(job_id)
    notes: list[str] = []
    path, explicit = _log_to_parse(job, log_path, notes)
    parse = _start_log_parse(path, explicit, notes) if path is not None else None
    try:
        frames = load_frames(store, job_id)
    except BaseException:
        if parse is not None:
            parse.cancel()
        raise
    findings = parse.result() if parse is not None else []

    config = job.get("config") if isinstance(job.get("config"), dict) else None
    recorded = job.get("config_dialect")
    dialect = str(recorded) if recorded in DIALECTS else detect_dialect(config)
    settings = job_settings(frames.job, config, notes)
    return JobData(job=frames.job, steps=frames.steps, samples=frames.samples, events=frames.events,
                   gpus=frames.gpus, costs=frames.costs, log_findings=findings, config=config, dialect=dialect,
                   settings=settings, now=time.time() if now is None else now, notes=notes)


def job_settings(job: Mapping[str, Any], config: Mapping[str, Any] | None, notes: list[str] | None = None) -> Settings:
    """The settings the run was judged by: defaults, then the config's ``monitoring:`` section, then what the
    collectors recorded with the job (which already includes that section and any flags they were given).

    A broken ``monitoring:`` section is a note, not a failure: the run already happened.
    """
    settings = Settings()
    section = config.get("monitoring") if isinstance(config, Mapping) else None
    if section:
        try:
            settings = settings_from_monitoring_section(section, settings)
        except ConfigError as exc:
            if notes is not None:
                notes.append(f"ignored the config's monitoring section: {exc.reason}")
    stored = job.get("settings")
    if isinstance(stored, Mapping):
        settings = settings.replace(**_coerce(stored, notes))
    return settings


def _coerce(stored: Mapping[str, Any], notes: list[str] | None) -> dict[str, Any]:
    """Stored settings as Settings fields of the right type (JSON turned tuples into lists, ints into floats)."""
    out: dict[str, Any] = {}
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        if f.name in _NOT_FROM_JOB or f.name not in stored or stored[f.name] is None:
            continue
        value, default = stored[f.name], getattr(defaults, f.name)
        try:
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                value = type(default)(value)
            elif isinstance(default, dict):
                if not isinstance(value, Mapping):
                    raise TypeError("not a mapping")
                value = dict(value)
            elif f.name == "hang_timeout":
                value = float(value)
        except (TypeError, ValueError):
            if notes is not None:
                notes.append(f"ignored the stored setting {f.name}={value!r}")
            continue
        out[f.name] = value
    return out


# -- the log ------------------------------------------------------------------------------------------------

def _log_to_parse(job: Mapping[str, Any], log_path: str | os.PathLike[str] | None,
                  notes: list[str]) -> tuple[Path | None, bool]:
    if log_path is not None:
        path = Path(log_path).expanduser()
        _check_readable(path)
        return path, True
    recorded = job.get("log_path")
    if not recorded:
        return None, False
    path = Path(str(recorded)).expanduser()
    if not path.is_file():
        notes.append(f"the recorded log {path} is not there any more; log errors were not analysed "
                      f"(pass --log FILE to use a copy)")
        return None, False
    return path, False


def _check_readable(path: Path) -> None:
    """Fail fast, before the database is read, on a ``--log`` that cannot be read."""
    if path.is_dir():
        raise LogUnreadable(str(path), "it is a directory")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except FileNotFoundError:
        raise LogUnreadable(str(path), "no such file") from None
    except OSError as exc:
        raise LogUnreadable(str(path), exc.strerror or str(exc)) from None


class _Done:
    """A finished result with the interface of a Future (the in-process path)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


class _Pending:
    """The child's parse; its errors come back as values, since LogUnreadable does not survive pickling."""

    def __init__(self, future: Future[Any], pool: ProcessPoolExecutor, path: Path, explicit: bool,
                 notes: list[str]) -> None:
        self.future, self.pool, self.path, self.explicit, self.notes = future, pool, path, explicit, notes

    def result(self) -> list[Any]:
        try:
            status, value = self.future.result()
        except Exception as exc:  # the child died (killed, out of memory): parse here instead
            log.info("log parse in a child process failed (%s); parsing in-process", exc)
            self.pool.shutdown(wait=False, cancel_futures=True)
            return _parse_here(self.path, self.explicit, self.notes)
        self.pool.shutdown(wait=True)   # the child is done: reap it now rather than leave it to a thread
        if status == "ok":
            return list(value)
        return _failed(self.path, self.explicit, self.notes, str(value))

    def cancel(self) -> bool:
        self.pool.shutdown(wait=False, cancel_futures=True)
        return True


def _start_log_parse(path: Path, explicit: bool, notes: list[str]) -> Any:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return _Done(_failed(path, explicit, notes, exc.strerror or str(exc)))
    if size >= PARALLEL_LOG_BYTES and (os.cpu_count() or 1) > 1 and sys.platform.startswith("linux"):
        try:
            # fork: the child starts in milliseconds with runlens already imported; it touches no database.
            pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
            return _Pending(pool.submit(_parse_in_child, str(path)), pool, path, explicit, notes)
        except (OSError, ValueError) as exc:
            log.info("cannot start a process for the log parse (%s); parsing in-process", exc)
    return _Done(_parse_here(path, explicit, notes))


def _parse_in_child(path: str) -> tuple[str, Any]:
    try:
        return "ok", _parse(Path(path))
    except LogUnreadable as exc:
        return "unreadable", exc.reason
    except OSError as exc:
        return "unreadable", exc.strerror or str(exc)


def _parse_here(path: Path, explicit: bool, notes: list[str]) -> list[Any]:
    try:
        return _parse(path)
    except LogUnreadable as exc:
        return _failed(path, explicit, notes, exc.reason)
    except OSError as exc:
        return _failed(path, explicit, notes, exc.strerror or str(exc))


def _parse(path: Path) -> list[Any]:
    # parse_log reads the arrival-time sidecar beside the log itself (a torn one still gives what it has).
    return list(parse_log(path))


def _failed(path: Path, explicit: bool, notes: list[str], reason: str) -> list[Any]:
    if explicit:
        raise LogUnreadable(str(path), reason)
    notes.append(f"could not read the recorded log {path}: {reason}; log errors were not analysed")
    return []
