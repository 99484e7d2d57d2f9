"""Zero-code steps in ``runlens collect``: the progress lines the child prints, recorded as the job's steps.

The tee hands every line and redraw to ``OutputSteps`` on its own thread; the progress parser
(``runlens.collect.progress_lines``) turns them into steps and evaluation results, and this module turns those
into rows:

* a step becomes a ``step_metrics`` row with ``source = "output"``: step, loss, learning rate, gradient norm,
  step time (as printed, else from arrival times: the time since the rank's previous progress line over the steps
  between), tokens where a rate and a step time were printed, and in ``extras`` the epoch, the printed rates,
  ``interval_steps`` (how many steps the row stands for: a loop that prints every 10 iterations writes one row per
  10 steps, and goodput counts the row's time 10 times) and the other numbers of the line. Non-finite values are
  kept as the Monitor keeps them (the float in its column and ``extras["nonfinite"]``), so a printed
  ``loss nan`` reaches the divergence rules.
* an evaluation result becomes a ``phase_end`` event of phase ``eval`` (its metrics, and its duration where
  printed), which goodput counts as evaluation time.

**A Monitor inside wins.** When the child calls runlens itself (an attached ``Monitor``, the Hugging Face or
Lightning callbacks), its steps are the better record and the printed ones would count each step twice. Rows
wait ``HOLD_SECONDS`` before they go to the writer; once the stall guard (or a Monitor's stacks file) shows a
Monitor, the held rows are dropped and nothing more is recorded from the output.

The stall guard reads this object directly (``steps``, ``last_at``, ``last_step``, ``phase``,
``take_intervals``), so output progress counts as progress at once, and the guard calibrates its timeout on the
intervals between progress lines, as it does on a Monitor's steps.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from runlens.collect.progress_lines import CANDIDATE_WORDS, PrintedEval, PrintedStep, ProgressParser, Record

logger = logging.getLogger(__name__)

HOLD_SECONDS = 3.0        # a row waits this long for a Monitor to show itself before it is written
MONITOR_CHECK_SECONDS = 0.5
_NONFINITE_TEXT = {math.inf: "inf", -math.inf: "-inf"}


def _nonfinite(value: float) -> str:
    return "nan" if value != value else _NONFINITE_TEXT.get(value, str(value))


def _json_number(value: float | None) -> Any:
    """A metric for an event's JSON details: non-finite values as their text (JSON has no NaN)."""
    if value is None or math.isfinite(value):
        return value
    return _nonfinite(value)


def step_row(s: PrintedStep, step_time: float | None, interval: int | None) -> dict[str, Any]:
    """A ``step_metrics`` row (``source = "output"``) from a printed step."""
    extras: dict[str, Any] = {}
    nonfinite: dict[str, str] = {}
    for key, value in (("epoch", s.epoch), ("tokens_per_sec", s.tokens_per_sec),
                       ("samples_per_sec", s.samples_per_sec), *s.extras.items()):
        if value is None:
            continue
        if math.isfinite(value):
            extras[key] = value
        else:
            extras[key] = None
            nonfinite[key] = _nonfinite(value)
    if interval is not None and interval > 1:
        extras["interval_steps"] = interval
    tokens = s.tokens_per_sec * step_time if s.tokens_per_sec is not None and step_time else None
    for column, value in (("loss", s.loss), ("learning_rate", s.lr), ("gradient_norm", s.grad_norm),
                          ("tokens", tokens)):
        if value is not None and not math.isfinite(value):
            nonfinite[column] = _nonfinite(value)
    if nonfinite:
        extras["nonfinite"] = nonfinite
    return {"step": int(s.step or 0), "timestamp": s.at, "loss": s.loss, "learning_rate": s.lr,
            "gradient_norm": s.grad_norm, "tokens": tokens, "step_time_seconds": step_time,
            "data_time_seconds": s.data_time, "rank": s.rank, "extras": extras or None, "source": "output"}


def eval_event(e: PrintedEval) -> dict[str, Any]:
    """A ``phase_end`` event of phase ``eval`` from a printed evaluation result."""
    details: dict[str, Any] = {"name": "eval", "source": "output", "format": e.fmt,
                               "metrics": {k: _json_number(v) for k, v in e.metrics.items()}}
    if e.duration is not None and math.isfinite(e.duration):
        details["duration_seconds"] = e.duration
    if e.step is not None:
        details["step"] = e.step
    if e.rank is not None:
        details["rank"] = e.rank
    return {"timestamp": e.at, "event_type": "phase_end", "details": details}


class StepTimes:
    """Step times from arrival times where a line prints none: the time since the rank's previous progress line
    over the steps between. Lines read in one batch share one arrival time, so the steps of a batch share its time
    over the steps it covers."""

    def __init__(self) -> None:
        self._prev: dict[int | None, tuple[float, int]] = {}

    def assign(self, steps: list[PrintedStep]) -> list[tuple[PrintedStep, float | None, int | None]]:
        out: list[tuple[PrintedStep, float | None, int | None]] = []
        by_round: dict[tuple[int | None, float], list[PrintedStep]] = collections.defaultdict(list)
        for s in steps:
            by_round[(s.rank, s.at)].append(s)
        for (rank, at), group in by_round.items():
            prev = self._prev.get(rank)
            last = group[-1]
            per_step = None
            if prev is not None and last.step is not None and last.step > prev[1] and at > prev[0]:
                per_step = (at - prev[0]) / (last.step - prev[1])
            before = prev[1] if prev is not None else None
            for s in group:
                interval = s.step - before if before is not None and s.step is not None and s.step > before else None
                out.append((s, s.step_time if s.step_time is not None else per_step, interval))
                before = s.step
            if last.step is not None:
                self._prev[rank] = (at, last.step)
        return out


class OutputSteps:
    """The progress parser behind the tee, and what it found on its way to the store (see the module docstring).

    Args:
        writer: the job's BatchWriter (``put_step`` takes a row dict, ``put_event`` an event).
        pattern: a compiled ``--progress-pattern``, tried first on every line.
        logging_steps: the run's ``logging_steps`` (for Hugging Face dicts printed without a bar).
        stacks_dir: where an attached Monitor writes its stacks file (a Monitor is there when one appears).
        hold: seconds a row waits before it is written.
        clock: wall-clock seconds (tests).
    """

    def __init__(self, writer: Any, *, pattern: re.Pattern[str] | None = None, logging_steps: int | None = None,
                 stacks_dir: Path | None = None, hold: float = HOLD_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.parser = ProgressParser(pattern=pattern, logging_steps=logging_steps)
        # The tee hands over only lines with a match (a user's pattern may match anything: then every line).
        self.prefilter = CANDIDATE_WORDS if pattern is None else None
        self.monitor_seen: Callable[[], bool] = lambda: False
        self.enabled = True
        self.steps = 0                    # steps read so far (held ones included)
        self.evals = 0
        self.written = 0                  # steps handed to the writer
        self.last_at: float | None = None
        self.last_step: int | None = None
        self.last_loss: float | None = None
        self.announced = False
        self._hold = hold
        self._clock = clock
        self._stacks_dir = stacks_dir
        self._checked_at = float("-inf")
        self._times = StepTimes()
        self._held: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque()
        self._intervals: list[float] = []
        self._lock = threading.Lock()

    @property
    def phase(self) -> str | None:
        return self.parser.phase

    # -- the tee's side ----------------------------------------------------------------------------------

    def segment(self, data: bytes, t: float, stream: int, redraw: bool) -> None:
        if self.enabled:
            self.parser.feed_bytes(data, t, stream, redraw)

    def end_round(self, t: float) -> None:
        if not self.enabled:
            return
        self.parser.end_round(t)
        self._take(self.parser.drain())
        self.release(t)

    def finish(self) -> None:
        """The output ended: what the parser held is taken and everything held is written (unless a Monitor
        showed up)."""
        if self.enabled:
            self.parser.finish()
            self._take(self.parser.drain())
        self.release(None)

    def _take(self, records: Iterable[Record]) -> None:
        steps = [r for r in records if isinstance(r, PrintedStep)]
        evals = [r for r in records if isinstance(r, PrintedEval)]
        rows: list[tuple[float, str, dict[str, Any]]] = []
        for s, step_time, interval in self._times.assign(steps):
            rows.append((s.at, "step", step_row(s, step_time, interval)))
            if self.last_at is not None and s.at > self.last_at:
                with self._lock:
                    self._intervals.append(s.at - self.last_at)
            self.last_at = max(self.last_at or s.at, s.at)
            self.last_step, self.last_loss = s.step, s.loss
            self.steps += 1
            if not self.announced:
                self.announced = True
                rows.append((s.at, "event", {"timestamp": s.at, "event_type": "output_steps", "details": {
                    "format": s.fmt, "numbering": s.numbering,
                    "note": "steps read from the progress lines the command printed"}}))
        for e in evals:
            rows.append((e.at, "event", eval_event(e)))
            self.evals += 1
        if rows:
            with self._lock:
                self._held.extend(rows)

    # -- to the writer -----------------------------------------------------------------------------------

    def _monitor_inside(self, now: float) -> bool:
        if self.monitor_seen():
            return True
        if self._stacks_dir is None or now - self._checked_at < MONITOR_CHECK_SECONDS:
            return False
        self._checked_at = now
        try:
            return any(self._stacks_dir.glob("stacks-*.txt"))
        except OSError:
            return False

    def release(self, now: float | None) -> None:
        """Hand the rows that waited ``hold`` seconds (all of them when ``now`` is None) to the writer, or drop
        them all for good once a Monitor records the steps itself."""
        with self._lock:
            if not self._held:
                return
            if self._monitor_inside(self._clock() if now is None else now):
                if self.enabled:
                    logger.info("a Monitor inside the run records its steps; steps read from its output are not "
                                "recorded")
                self.enabled = False
                self._held.clear()
                return
            while self._held and (now is None or now - self._held[0][0] >= self._hold):
                _, kind, row = self._held.popleft()
                if kind == "step":
                    self.writer.put_step(row)
                    self.written += 1
                else:
                    self.writer.put_event(row)

    def take_intervals(self) -> list[float]:
        """Seconds between progress lines seen since the last call (the stall guard's calibration input)."""
        with self._lock:
            out, self._intervals = self._intervals, []
        return out

    def summary(self) -> dict[str, Any]:
        """What was read, per format (for the end of the run)."""
        return {"steps": self.written, "evaluations": self.evals,
                "formats": dict(self.parser.counts), "monitor_inside": not self.enabled}


_LOGGING_STEPS_ARG = re.compile(r"^--logging[_-]steps(?:=(\d+))?$")


def logging_steps_of(argv: list[str], config: Any) -> int | None:
    """The run's ``logging_steps``: a ``--logging_steps N`` argument, else a ``logging_steps`` key anywhere in
    its config; None when neither says (or it is a fraction of the run, which only the Trainer knows)."""
    for i, arg in enumerate(argv):
        m = _LOGGING_STEPS_ARG.match(arg)
        if m:
            value = m.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() and int(value) > 0 else None
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            value = node.get("logging_steps")
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
    return None
