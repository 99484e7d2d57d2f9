"""Step numbers for log dicts that print none (the Hugging Face Trainer's).

In order of trust:

1. **The training bar's count.** The Trainer writes each dict through ``tqdm.write``, which clears the bars (a
   blank redraw), prints the dict and redraws the bar at once: the first redraw after a clear shows the step the
   dict was logged at (``on_step_end`` moved the bar to ``global_step`` just before ``on_log``). The dict goes to
   stdout and the bar to stderr, so either may be read first: dicts and cleared redraws are paired in order, each
   waiting for the other. Its evaluation dicts and its final summary are written the same way, so they take their
   redraw too (and are no step). A dict that no cleared redraw answers within ``WAIT`` seconds takes the bar's
   latest count.
2. **k x logging_steps**, from the run's config or its ``--logging_steps`` argument, when no bar is shown
   (``disable_tqdm``).
3. **Order**: 1, 2, 3, ... and the steps say so (``numbering: order``): the real step is unknown.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from runlens.collect.progress_lines.records import LOGGING_STEPS, ORDER, TQDM, PrintedStep

WAIT = 1.0      # seconds a dict waits for the redraw that answers it
KEEP = 2.0      # seconds a cleared redraw waits for its dict
MAX_WAITING = 256


@dataclass(slots=True)
class _Waiting:
    step: PrintedStep | None      # None: an evaluation or summary dict, which only takes its redraw
    at: float
    ordinal: int                  # the how-manieth train dict (for k x logging_steps)


class DictNumbering:
    """Numbers the log dicts of one rank (see the module docstring)."""

    def __init__(self, logging_steps: int | None = None) -> None:
        self.logging_steps = logging_steps if logging_steps and logging_steps > 0 else None
        self.count: int | None = None        # the training bar's latest count
        self.total: int | None = None
        self.dicts = 0
        self.last = 0
        self._held: collections.deque[_Waiting] = collections.deque()
        self._answers: collections.deque[tuple[int, float]] = collections.deque()

    def bar(self, n: int, total: int | None, at: float, cleared: bool) -> list[PrintedStep]:
        """A redraw of a bar that may be the training bar: the one with the largest total (an evaluation's bar
        counts its batches, fewer than the training's steps)."""
        if total is not None and self.total is not None and total < self.total:
            return []
        if total is not None:
            self.total = total
        self.count = n
        if not cleared:
            return []
        if self._held:
            waiting = self._held.popleft()
            return [self._number(waiting.step, n, TQDM)] if waiting.step is not None else []
        self._answers.append((n, at))
        while len(self._answers) > MAX_WAITING:
            self._answers.popleft()
        return []

    def take(self, s: PrintedStep | None, at: float) -> list[PrintedStep]:
        """A dict printed live: numbered by the cleared redraw that answers it (now, or once it comes). ``s`` None
        is an evaluation or summary dict, which takes its redraw and gives no step."""
        ordinal = self.dicts + 1 if s is not None else self.dicts
        self.dicts = ordinal
        while self._answers and at - self._answers[0][1] > KEEP:
            self._answers.popleft()
        if self._answers and not self._held:
            n = self._answers.popleft()[0]
            return [self._number(s, n, TQDM)] if s is not None else []
        self._held.append(_Waiting(s, at, ordinal))
        while len(self._held) > MAX_WAITING:
            self._expire_one()
        return []

    def take_saved(self, s: PrintedStep) -> list[PrintedStep]:
        """A dict from a saved log, whose bar redraws were collapsed (a stale count at best): k x logging_steps
        first, then the bar's latest count, then order."""
        self.dicts += 1
        if self.logging_steps:
            return [self._number(s, self.dicts * self.logging_steps, LOGGING_STEPS)]
        if self.count is not None:
            return [self._number(s, max(self.count, self.last + 1), TQDM)]
        return [self._number(s, self.last + 1, ORDER)]

    def expire(self, now: float | None) -> list[PrintedStep]:
        """Dicts that waited ``WAIT`` seconds (all of them when ``now`` is None) take the bar's latest count, or
        k x logging_steps, or their order, when no bar was seen."""
        out = []
        while self._held and (now is None or now - self._held[0].at >= WAIT):
            s = self._expire_one()
            if s is not None:
                out.append(s)
        return out

    def _expire_one(self) -> PrintedStep | None:
        waiting = self._held.popleft()
        if waiting.step is None:
            return None
        if self.count is not None:
            return self._number(waiting.step, max(self.count, self.last + 1), TQDM)
        if self.logging_steps:
            return self._number(waiting.step, waiting.ordinal * self.logging_steps, LOGGING_STEPS)
        return self._number(waiting.step, self.last + 1, ORDER)

    def _number(self, s: PrintedStep, step: int, how: str) -> PrintedStep:
        if step <= self.last and how == TQDM:
            step = self.last + (self.logging_steps or 1)   # a stale count: the dict is after the last one
        s.step, s.numbering = step, how
        self.last = step
        return s
