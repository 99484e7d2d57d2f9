"""The progress parser: lines of a run's output in, steps and evaluation results out.

``runlens collect`` feeds it every line and every ``\\r`` redraw of the child's output on the tee's thread, and
``runlens import`` every line of an old log; both turn what comes out into rows. It must never slow the child's
output (the tee reads the pipes on the same thread), so a line first meets one byte-level regular expression of
the words progress lines contain; the ~99% of lines that are not progress stop there (bench/bench_progress.py).

What it keeps between lines, per stream and per rank:

* **Ranks.** A ``[rank3]:`` (torchrun ``--tee``), ``[default3]:`` or ``[1,3]<stdout>:`` (mpirun) prefix names the
  rank; each rank gets its own steps. The same step printed again with the same loss (every rank printing
  rank 0's all-reduced loss, without a prefix) is one step, not several.
* **Redraws.** A bar's last redraw of each count wins (``runlens.collect.progress_lines.bars``).
* **Granularity.** A line printed once per epoch counts only while no per-step format has spoken for that rank,
  and a step without a loss (DeepSpeed's ``step=N``) only while no format with a loss has spoken at all.
* **Phase.** ``phase`` is ``"eval"`` while an evaluation bar is drawn, for the hang guard's phase budget.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field

from runlens.collect.progress_lines import bars
from runlens.collect.progress_lines.common import Context, EpochSteps
from runlens.collect.progress_lines.formats import LINE_FORMATS
from runlens.collect.progress_lines.generic import custom, plain
from runlens.collect.progress_lines.logdicts import log_dict
from runlens.collect.progress_lines.numbering import DictNumbering
from runlens.collect.progress_lines.records import EPOCH_LEVEL, PROGRESS, PrintedEval, PrintedStep, Record

# Every progress line of every recogniser holds one of these words; a line without any is not looked at further.
# (A reader of bulk output looks for each with ``bytes.find``, CANDIDATE does the same for one line.)
CANDIDATE_WORDS = (b"loss", b"Loss", b"step", b"poch", b"%|", b"it/s", b"s/it", b"{'", b"_mem", b"Class", b"  all ",
                   b"Acc@1", b"Iter(")
CANDIDATE = re.compile(b"|".join(re.escape(w) for w in CANDIDATE_WORDS))
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_RANK = re.compile(r"^\s*\[(?:rank|default)(\d+)\]:\s?|^\s*\[\d+,(\d+)\]<std(?:out|err)>:\s?")
MAX_LINE = 4096           # characters of a line looked at
PENDING_SECONDS = 2.0     # a bar's redraw not followed by another of its count within this is taken as it is
RECENT = 64               # steps remembered per rank to drop the same step printed again


@dataclass
class _Rank:
    numbering: DictNumbering
    recent: collections.deque[tuple[int, float | None]] = field(default_factory=lambda: collections.deque(maxlen=RECENT))
    per_step: bool = False        # a per-step format has spoken


class ProgressParser:
    """Feed it lines (``feed``) and bar redraws (``feed(..., redraw=True)``); take what it found with ``drain``.

    Args:
        pattern: a compiled ``--progress-pattern`` (``generic.compile_pattern``), tried before the built-in
            formats on every line.
        logging_steps: the run's ``logging_steps`` (config or argument), to number log dicts without a bar.
        live: lines arrive as printed (``runlens collect``); False for a saved log (``runlens import``), whose bar
            redraws were collapsed, so dicts are numbered from ``logging_steps`` first.
    """

    def __init__(self, *, pattern: re.Pattern[str] | None = None, logging_steps: int | None = None,
                 live: bool = True) -> None:
        self.pattern = pattern
        self.logging_steps = logging_steps
        self.live = live
        self.phase: str | None = None
        self.counts: collections.Counter[str] = collections.Counter()   # steps and evaluations per format
        self._out: list[Record] = []
        self._ctx: dict[int, Context] = {}
        self._epochs = EpochSteps()
        self._ranks: dict[int | None, _Rank] = {}
        self._pending: dict[tuple[int, str, int | None], PrintedStep] = {}
        self._cleared: dict[int, bool] = {}
        self._eval_since: float | None = None
        self._bar_evals: dict[str, dict[str, float]] = {}
        self._with_loss = False      # a format with a loss has spoken (DeepSpeed's step=N lines stop counting)

    # -- input ---------------------------------------------------------------------------------------------

    def feed_bytes(self, data: bytes, at: float, stream: int = 0, redraw: bool = False) -> None:
        """``feed`` for raw output: most lines are dropped here, before they are decoded."""
        if redraw and not data.strip():
            self._cleared[stream] = True   # tqdm cleared its bars to print a line (tqdm.write)
            return
        if self.pattern is None and CANDIDATE.search(data) is None:
            return
        self.feed(data[:MAX_LINE].decode("utf-8", "replace"), at, stream, redraw)

    def feed(self, text: str, at: float, stream: int = 0, redraw: bool = False) -> None:
        """One line (or, with ``redraw``, one ``\\r`` redraw) of output that arrived at ``at``."""
        if redraw and not text.strip():
            self._cleared[stream] = True
            return
        if "\x1b" in text:
            text = _ANSI.sub("", text)
        text = text[:MAX_LINE].rstrip()
        rank = None
        if text[:1] == "[" or text[:2] == " [":
            m = _RANK.match(text)
            if m is not None:
                rank = int(m.group(1) or m.group(2))
                text = text[m.end():]
        for rec in self._recognise(text, at, stream, rank):
            if rec.rank is None:
                rec.rank = rank
            self._accept(rec, stream, redraw)

    def end_round(self, at: float) -> None:
        """Called after each batch of output: dicts that waited long enough get their number, and bar redraws no
        newer redraw of their count followed are taken."""
        for r in self._ranks.values():
            for s in r.numbering.expire(at):
                self._commit(s)
        for key, s in list(self._pending.items()):
            if at - s.at >= PENDING_SECONDS:
                del self._pending[key]
                self._commit(s)

    def finish(self) -> None:
        """The output ended: everything held is taken."""
        for key in list(self._pending):
            self._commit(self._pending.pop(key))
        for r in self._ranks.values():
            for s in r.numbering.expire(None):
                self._commit(s)

    def drain(self) -> list[Record]:
        """The steps and evaluation results found since the last call, in order."""
        out, self._out = self._out, []
        return out

    # -- recognising ---------------------------------------------------------------------------------------

    def _context(self, stream: int) -> Context:
        ctx = self._ctx.get(stream)
        if ctx is None:
            ctx = self._ctx[stream] = Context(self._epochs)
        return ctx

    def _recognise(self, text: str, at: float, stream: int, rank: int | None) -> list[Record]:
        if self.pattern is not None:
            found = custom(self.pattern, text, at)
            if found:
                return found
        ctx = self._context(stream)
        if ctx.yolo_columns is None and "_mem" in text:
            bars.ultralytics(text, at, ctx)     # the table header
        elif ctx.yolo_columns is not None:
            found = bars.ultralytics(text, at, ctx)
            if found or ctx.yolo_columns is None:
                return found
            if text.lstrip().startswith(("Class", "all ")):
                return []
        if "%|" in text or "it/s" in text or "s/it" in text:
            bar = bars.parse_bar(text)
            if bar is not None:
                return self._bar(bar, at, stream, rank, ctx)
        for _name, quick, recognise in LINE_FORMATS:
            if any(q in text for q in quick):
                found = recognise(text, at, ctx)
                if found:
                    return found
        if "{" in text and text.endswith("}"):
            found = log_dict(text, at)
            if self.live and not any(isinstance(r, PrintedStep) and r.step is None for r in found):
                # An evaluation or summary dict took a redraw of the bar too (numbering's docstring).
                for s in self._rank(rank).numbering.take(None, at):
                    self._commit(s)
            if found:
                return found
        if "/step" in text or " - loss: " in text or text.startswith("Epoch "):
            found = bars.keras(text, at, ctx)
            if found:
                return found
        if ctx.table is not None or "train_loss" in text:
            found = bars.fastai(text, at, ctx)
            if found or ctx.table is not None and text[:1].isdigit():
                return found
        return plain(text, at, ctx)

    def _bar(self, bar: bars.Bar, at: float, stream: int, rank: int | None, ctx: Context) -> list[Record]:
        cleared = self._cleared.pop(stream, False)
        if bars.is_eval_bar(bar):
            if self.phase is None:
                self.phase, self._eval_since = "eval", at - (bar.elapsed or 0.0)
            return []
        step = bars.bar_step(bar, at, ctx)
        out: list[Record] = []
        ev = bars.bar_eval(bar, at)
        if ev is not None and self._bar_evals.get(bar.desc) != ev.metrics:
            self._bar_evals[bar.desc] = ev.metrics
            out.append(ev)
        if step is not None:
            out.insert(0, step)
        elif not bar.desc or not bar.postfix:
            for s in self._rank(rank).numbering.bar(bar.n, bar.total, at, cleared):
                self._commit(s)
        return out

    # -- accepting -----------------------------------------------------------------------------------------

    def _rank(self, rank: int | None) -> _Rank:
        r = self._ranks.get(rank)
        if r is None:
            r = self._ranks[rank] = _Rank(DictNumbering(self.logging_steps))
        return r

    def _accept(self, rec: Record, stream: int, redraw: bool) -> None:
        if isinstance(rec, PrintedEval):
            if rec.duration is None and self._eval_since is not None:
                rec.duration = max(0.0, rec.at - self._eval_since)
            self.phase = self._eval_since = None
            self.counts["eval:" + rec.fmt] += 1
            self._out.append(rec)
            return
        if rec.step is None:
            numbering = self._rank(rec.rank).numbering
            ready = numbering.take(rec, rec.at) if self.live else numbering.take_saved(rec)
            for s in ready:
                self._commit(s)
            return
        key = (stream, rec.fmt, rec.rank)
        held = self._pending.pop(key, None)
        if held is not None and held.step != rec.step:
            self._commit(held)
        if redraw or rec.fmt in bars.BAR_FORMATS:
            self._pending[key] = rec
        else:
            self._commit(rec)

    def _commit(self, s: PrintedStep) -> None:
        r = self._rank(s.rank)
        if s.level == EPOCH_LEVEL and r.per_step:
            return
        if s.level == PROGRESS and self._with_loss:
            return
        if s.step is None:
            return
        mark = (s.step, s.loss if s.loss is None or s.loss == s.loss else -1.0)
        if mark in r.recent:
            return
        r.recent.append(mark)
        if s.level != EPOCH_LEVEL:
            r.per_step = True
        if s.loss is not None:
            self._with_loss = True
        if self.phase is not None:
            self.phase = self._eval_since = None
        self.counts[s.fmt] += 1
        self._out.append(s)
