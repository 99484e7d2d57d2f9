"""``runlens import LOG``: a job made from the log of a run nobody recorded, so last night's log can be analysed.

The log is read with the same progress parser as ``runlens collect``'s live output
(``runlens.collect.progress_lines``), and what it finds is stored as ``runlens collect`` stores it: steps with
``source = "output"``, evaluation results as ``phase_end`` events. Times come from the lines that state one (the
caller passes the analyzer's ``line_time``, collect may not import it); a line without one takes the time of the
line before. A log without any time gets one from its printed step times, ending at the file's modification
time, or else one second per line (and says so in the ``log_imported`` event). The job's end status is read from
the log's tail: a traceback or an out-of-memory error there means it failed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runlens.collect.config import load_config, resolve_settings
from runlens.collect.output_steps import StepTimes, eval_event, logging_steps_of, step_row
from runlens.collect.progress_lines import PrintedEval, PrintedStep, ProgressParser, Record, compile_pattern
from runlens.core.dialects import detect_dialect
from runlens.core.errors import LogUnreadable
from runlens.core.oom import is_oom_text
from runlens.store import new_job_id, open_store

TAIL_LINES = 200
_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):|^\w*(?:Error|Exception): ", re.M)

LineTime = Callable[[str], "float | None"]


@dataclass(frozen=True)
class ImportResult:
    job_id: str
    db_url: str
    steps: int
    evaluations: int
    times: str          # "lines" (the lines state them), "step_times" (printed step times), "lines_counted"
    formats: dict[str, int]


def _read(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise LogUnreadable(str(path), "is a directory") from None
    except OSError as exc:
        raise LogUnreadable(str(path), exc.strerror or str(exc)) from None
    return data.decode("utf-8", "replace").split("\n")


def _parse(lines: list[str], parser: ProgressParser) -> list[Record]:
    """Every record of the log, with ``at`` the index of the line it came from."""
    for i, line in enumerate(lines):
        if "\r" in line:
            *redraws, line = line.split("\r")
            for seg in redraws:
                parser.feed(seg, float(i), redraw=True)
        if line:
            parser.feed(line, float(i))
        parser.end_round(float(i))
    parser.finish()
    return parser.drain()


def _line_times(lines: list[str], line_time: LineTime | None) -> list[float] | None:
    """Each line's time: its own, else the last one before it (the first one for the lines before any); None
    when no line states a time."""
    if line_time is None:
        return None
    times: list[float | None] = [line_time(line) if line else None for line in lines]
    first = next((t for t in times if t is not None), None)
    if first is None:
        return None
    out: list[float] = []
    last = first
    for t in times:
        last = t if t is not None else last
        out.append(last)
    return out


def _times_from_steps(records: list[Record], n_lines: int, end: float) -> tuple[list[float], str]:
    """Line times for a log that states none: the printed step times added up, ending at ``end`` (the file's
    modification time); one second per line when the steps print no time."""
    steps = [r for r in records if isinstance(r, PrintedStep)]
    if steps and all(s.step_time is not None for s in steps):
        clock = [0.0] * n_lines
        t, prev_step, prev_line = 0.0, None, 0
        for s in steps:
            line = int(s.at)
            for i in range(prev_line, line):
                clock[i] = t
            t += float(s.step_time or 0.0) * max(1, (s.step or 0) - prev_step if prev_step is not None else 1)
            prev_step, prev_line = s.step, line
        for i in range(prev_line, n_lines):
            clock[i] = t
        return [end - t + c for c in clock], "step_times"
    return [end - (n_lines - i) for i in range(n_lines)], "lines_counted"


def _end_status(lines: list[str]) -> tuple[str, str]:
    tail = "\n".join(lines[-TAIL_LINES:])
    if is_oom_text(tail):
        return "failed", "the log ends with an out-of-memory error"
    if _TRACEBACK.search(tail):
        return "failed", "the log ends with a traceback"
    return "succeeded", "imported from a log; no error at its end"


def import_log(path: str | os.PathLike[str], *, name: str | None = None, config: str | None = None,
               db: str | None = None, line_time: LineTime | None = None,
               progress_pattern: str | None = None) -> ImportResult:
    """Make a job from a saved log (see the module docstring).

    Args:
        path: the log file.
        name: the job's name (default: the file's name without its suffix).
        config: the run's config file, stored with the job (secrets redacted); its ``logging_steps`` numbers
            Hugging Face log dicts and its ``monitoring: progress_pattern`` is used unless ``progress_pattern``.
        db: the store URL or SQLite path.
        line_time: the time a line states (``runlens.analyze.logtime.line_time`` with the log's mtime), or None.
        progress_pattern: a regular expression for the run's own progress lines.

    Raises:
        LogUnreadable: the log cannot be read. ConfigError: the config cannot. BadParameter: a bad pattern.
        StoreUnavailable, SchemaTooNew: the store cannot be used.
    """
    log = Path(path).expanduser().resolve()
    lines = _read(log)
    snapshot, config_path = load_config(config)
    settings = resolve_settings(snapshot, overrides={"db": db} if db else None)
    pattern_text = progress_pattern or settings.progress_pattern
    pattern = compile_pattern(pattern_text) if pattern_text else None
    parser = ProgressParser(pattern=pattern, logging_steps=logging_steps_of([], snapshot), live=False)
    records = _parse(lines, parser)
    times = _line_times(lines, line_time)
    how = "lines"
    if times is None:
        times, how = _times_from_steps(records, len(lines), log.stat().st_mtime)
    for r in records:
        r.at = times[min(int(r.at), len(times) - 1)]
    steps = [r for r in records if isinstance(r, PrintedStep)]
    evals = [r for r in records if isinstance(r, PrintedEval)]
    rows = [step_row(s, t, iv) for s, t, iv in StepTimes().assign(steps)]
    status, reason = _end_status(lines)
    started, ended = times[0], times[-1]

    store = open_store(settings.db)
    try:
        job_id = new_job_id(name or log.stem)
        store.create_job(job_id=job_id, name=name or log.stem, config=snapshot, config_path=config_path,
                         config_dialect=detect_dialect(snapshot) if snapshot is not None else None,
                         log_path=str(log), settings=settings.as_dict())
        details: dict[str, Any] = {"log_path": str(log), "lines": len(lines), "times": how,
                                   "formats": dict(parser.counts), "steps": len(rows), "evaluations": len(evals)}
        events = [{"job_id": job_id, "timestamp": started, "event_type": "log_imported", "details": details}]
        events += [{**eval_event(e), "job_id": job_id} for e in evals]
        with store.begin() as conn:
            if rows:
                store.insert_steps(conn, job_id, rows)
            store.insert_many(conn, "training_events", events)
            store.update_job(job_id, conn=conn, status=status, status_reason=reason, started_at=started,
                             ended_at=ended, last_step=rows[-1]["step"] if rows else None,
                             progress_at=rows[-1]["timestamp"] if rows else None, pid=None)
        return ImportResult(job_id=job_id, db_url=store.url, steps=len(rows), evaluations=len(evals), times=how,
                            formats=dict(parser.counts))
    finally:
        store.close()
