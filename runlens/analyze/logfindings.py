"""The log parser's line-level state: which blocks are open, which findings were kept, and the context later
lines need.

``runlens.analyze.logparse`` reads the file and feeds the lines that matter to a ``FindingParser``, which turns
each into a ``LogFinding``:

- **Multi-line findings.** A Python traceback (chained ones included, rich/loguru boxed ones too), a
  ``Fatal Python error`` dump and a C++ ``terminate called ...`` report each become one finding, tracked per
  rank so that interleaved ranks' tracebacks are not glued together. A per-line prefix (a timestamp, a
  ``[pid 123]`` tag) printed before ``Traceback`` is recognised on the lines that follow it.
- **No crying wolf.** An error needs an anchor: a traceback, an exception name at the start of a line, an
  explicit level marker or a known category phrase. "eval_error_rate: 0.02", "0 errors", progress bars and
  warnings never become errors; a network retry is a warning, and a network error followed by a success
  message is downgraded to one; so are an OOM followed by "... skipping batch" and a traceback the program
  logged at DEBUG or WARNING level (it was caught).
- **Bounded.** A traceback's text is kept to ~8 KiB, messages to 500 characters, findings to ``max_findings``
  with identical ones folded into the first by ``count``.

Timestamps come from the line itself (``runlens.analyze.logtime``), else from the arrival-time sidecar
(``runlens.core.arrival``), else None.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from runlens.analyze import logcategories as lc
from runlens.analyze import logpatterns as lp
from runlens.analyze.logblocks import (
    DONE,
    NATIVE_START,
    REJECT,
    TAKE,
    TB_START,
    TEXT_LIMIT,
    Block,
    Native,
    PyWarning,
    Traceback,
    clean,
    prefix_pattern,
)
from runlens.analyze.logdetails import details_for
from runlens.analyze.logtime import line_time
from runlens.core.arrival import ArrivalIndex

logger = logging.getLogger(__name__)

__all__ = ["FindingParser", "LogFinding"]

MESSAGE_LIMIT = 500
STALE_BLOCK_LINES = 200  # a block that got no line for this many lines is closed (its rank died)
HEADER_GAP = 2  # an error line this close before a traceback is its header (logger.exception)
SAVE_CONTEXT_LINES = 30  # a traceback this close after "Saving checkpoint" is a failed save
OOM_SKIP_LINES = 3  # an OOM this close before "... skipping batch" was survived
MAX_CONTEXT_LINES = 10_000
OOM_CATEGORIES = ("cuda_oom", "mps_oom", "cpu_oom")


@dataclass
class LogFinding:
    """One error or warning found in the log (a traceback counts as one)."""

    level: str  # "error" | "warning"
    category: str  # see runlens.analyze.logpatterns; plus "python_exception", "error",
    # "python_warning", "warning"
    message: str  # the most informative single line, <= 500 chars
    text: str  # the whole finding (traceback included), bounded to ~8 KiB
    line_number: int  # 1-based line where the finding starts
    timestamp: float | None  # UNIX seconds
    timestamp_source: str | None  # "line" | "arrival" | None
    rank: int | None  # from a torchrun "[rank3]:" / "[default3]:" prefix
    count: int = 1  # identical findings (same level, category, normalised message) folded in
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (details copied)."""
        return asdict(self)


_NORM = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?")
_BAR_GLYPHS = re.compile(r"[\u2580-\u259f]+")  # a progress bar's blocks: two redraws of one NaN bar fold
_SPACES = re.compile(r"\s+")


def _norm(message: str) -> str:
    return _SPACES.sub(" ", _NORM.sub("#", _BAR_GLYPHS.sub("", message.lower()))).strip()[:300]


def _short(s: str, at: int = 0) -> str:
    """``s`` cut to MESSAGE_LIMIT characters; around offset ``at`` (a matched phrase) when that is further."""
    s = s.strip()
    if len(s) <= MESSAGE_LIMIT:
        return s
    start = max(0, min(at - MESSAGE_LIMIT // 3, len(s) - MESSAGE_LIMIT + 2))
    head = "…" if start else ""
    body = s[start : start + MESSAGE_LIMIT - len(head) - 1]
    return head + body + ("…" if start + len(body) < len(s) else "")


def _bound(text: str) -> str:
    """A single line's text kept to TEXT_LIMIT: its head and tail."""
    if len(text) <= TEXT_LIMIT:
        return text
    half = TEXT_LIMIT // 2 - 4
    return text[:half] + " [...] " + text[-half:]


class FindingParser:
    """The line-level state: open blocks, findings folded by key, and the context later lines need."""

    def __init__(self, arrival: ArrivalIndex | None, max_findings: int, ref: datetime) -> None:
        self.arrival = arrival
        self.max_findings = max(1, max_findings)
        self.ref = ref
        self.findings: list[LogFinding] = []
        self.keys: dict[tuple[str, str, str], LogFinding] = {}
        self.blocks: list[Block] = []
        self.pending: dict[int | None, LogFinding] = {}  # error lines that may head a traceback
        self.from_traceback: set[int] = set()  # id() of findings built from a traceback
        self.last_save = -(10**9)
        self.last_success = -1
        self.oom_skips: list[int] = []  # lines that say an OOM was survived (bounded)
        self.dropped = 0

    @property
    def busy(self) -> bool:
        return bool(self.blocks)

    # lines --------------------------------------------------------------------------------------------------

    def line(self, raw: bytes, number: int, candidate: bool) -> None:
        """One log line (1-based ``number``); ``candidate``: the prefilter matched it."""
        if self.pending:
            self._flush_pending(number)
        if self.blocks:
            self._close_stale(number)
        if not candidate and not self.blocks:
            return
        cleaned = clean(raw)
        if cleaned is None:
            return
        text, rank = cleaned
        if self.blocks:
            routed = self._route(text, rank)
            if routed is not None:
                block, body = routed
                verdict = block.feed(body, number)
                if verdict in (TAKE, DONE):
                    block.last = number
                    if verdict == DONE:
                        self._close(block)
                    return
                if verdict == REJECT:
                    self._close(block)
        if candidate:
            self._single(text, rank, number)

    def _route(self, text: str, rank: int | None) -> tuple[Block, str] | None:
        fallback = None
        for block in reversed(self.blocks):
            if block.rank != rank:
                continue
            if block.prefix is None:
                fallback = fallback or (block, text)
                continue
            m = block.prefix.match(text)
            if m:
                return block, text[m.end() :]
            if block.lines == 1:
                # "ERROR:root:Traceback ..." with the frames printed bare: the prefix was the header's only
                block.prefix = None
                fallback = fallback or (block, text)
        return fallback

    def _single(self, text: str, rank: int | None, number: int) -> None:
        """A candidate line outside any block: maybe a block's start, maybe a finding, maybe context."""
        i = text.find(TB_START)
        if i >= 0:
            self._open(Traceback, text, i, rank, number)
            return
        m = NATIVE_START.search(text)
        if m:
            self._open(Native, text, m.start(), rank, number)
            return
        stripped = text.strip()
        if not stripped or lp.SOURCE_LINE.match(text):
            return
        if lp.SAVE_CONTEXT.search(stripped):
            self.last_save = number
        if len(self.oom_skips) < MAX_CONTEXT_LINES and lp.OOM_SKIP.search(stripped):
            self.oom_skips.append(number)
        if lp.SUCCESS.search(stripped):
            self.last_success = number
        marker = lp.level_marker(stripped)
        if lp.PY_WARNING.search(stripped) and not lp.EXC_START.match(stripped):
            block = PyWarning(rank, None, text, number)
            block.add(text)
            self.blocks.append(block)
            return
        hit = lc.categorize(stripped)
        if hit is not None:
            cat, match = hit
            if marker == "info" and not cat.strong:
                return
            # an exception line on its own ("requests.exceptions.ConnectionError: ...") is what the run
            # died of, even without a traceback above it
            is_exception = lp.EXC_START.match(stripped) is not None
            level = lc.category_level(cat, stripped, marker, in_traceback=is_exception)
            self._finding(
                level,
                cat.id,
                stripped,
                text,
                number,
                rank,
                details_for(cat.id, stripped, stripped),
                header_ok=level == "error",
                at=match.start(),
            )
        elif lp.EXC_START.match(stripped):
            self._finding("error", "python_exception", stripped, text, number, rank, {}, header_ok=True)
        elif marker in ("error", "warning") and lp.marker_says_something(stripped):
            self._finding(marker, marker, stripped, text, number, rank, {}, header_ok=marker == "error")

    def _open(self, cls: type[Block], text: str, at: int, rank: int | None, number: int) -> None:
        prefix = prefix_pattern(text[:at])
        block = cls(rank, prefix, text, number)
        if at:
            block.marker = lp.level_marker(text[:at] + "Traceback")
        block.add(text[at:] if prefix is not None else text)
        header = self.pending.pop(rank, None)
        if header is not None:
            if cls is Traceback and number - header.line_number <= HEADER_GAP:
                block.header = header
            else:
                self._emit(header)  # a native crash report has no header: the line above is its own finding
        self.blocks.append(block)

    def _close_stale(self, number: int) -> None:
        for block in [b for b in self.blocks if number - b.last > STALE_BLOCK_LINES]:
            self._close(block)

    def _flush_pending(self, number: int) -> None:
        for rank, f in list(self.pending.items()):
            if number - f.line_number > HEADER_GAP:
                del self.pending[rank]
                self._emit(f)

    # findings -----------------------------------------------------------------------------------------------

    def _finding(
        self,
        level: str,
        category: str,
        message: str,
        text: str,
        number: int,
        rank: int | None,
        details: dict[str, Any],
        header_ok: bool,
        at: int = 0,
    ) -> None:
        t, source = self._time(text, message, number)
        f = LogFinding(
            level, category, _short(message, at), _bound(text.strip()), number, t, source, rank, 1, details
        )
        if header_ok:
            old = self.pending.pop(rank, None)
            if old is not None:
                self._emit(old)
            self.pending[rank] = f
        else:
            self._emit(f)

    def _time(self, first: str, other: str, number: int) -> tuple[float | None, str | None]:
        t = line_time(first, self.ref)
        if t is None and other and other is not first:
            t = line_time(other, self.ref)
        if t is not None:
            return t, "line"
        if self.arrival is not None:
            t = self.arrival.time_of(number)
            if t is not None:
                return t, "arrival"
        return None, None

    def _close(self, block: Block) -> None:
        self.blocks.remove(block)
        if isinstance(block, Traceback):
            self._close_traceback(block)
        elif isinstance(block, Native):
            self._close_native(block)
        else:
            message = block.first.strip()
            t, source = self._time(block.first, "", block.start)
            self._emit(
                LogFinding(
                    "warning",
                    "python_warning",
                    _short(message),
                    block.text.render(),
                    block.start,
                    t,
                    source,
                    block.rank,
                    1,
                    {},
                )
            )

    def _close_traceback(self, block: Traceback) -> None:
        header = block.header
        final = block.exc[-1] if block.exc else None
        candidates = block.exc[::-1] + block.trailers + ([header.message] if header else [])
        best = lc.best_category(candidates)
        details: dict[str, Any] = {}
        if best is not None:
            cat, _, source_line = best
            category = cat.id
            marker = "warning" if block.marker == "warning" else None
            level = lc.category_level(cat, source_line, marker, in_traceback=True)
            if source_line in block.trailers and final and len(final.split(":", 1)[-1].strip()) < 20:
                message = f"{final} {source_line}"  # e.g. "ChildFailedError:" + its root-cause line
            else:
                message = source_line
        else:
            # a traceback the program logged as a warning (``logger.warning(traceback.format_exc())``) was
            # caught and survived
            level = "warning" if block.marker in ("warning", "info") else "error"
            category = "python_exception"
            message = final or (header.message if header else "") or block.last_frame or block.first.strip()
            if final and lp.CONFIG_EXC.match(final) and lp.CONFIG_FRAME.search(block.last_frame):
                category = "config_error"
                details["source"] = "python"
            elif block.save_frames or 0 <= block.start - self.last_save <= SAVE_CONTEXT_LINES:
                category = "checkpoint_save_failed"
        text = block.text.render()
        if header is not None:
            text = _bound(header.text + "\n" + text)
        details = {**details_for(category, text, message), **details}
        if category == "disk_full" and (
            block.save_frames or 0 <= block.start - self.last_save <= SAVE_CONTEXT_LINES
        ):
            details["during_checkpoint_save"] = True
        if final:
            details.setdefault("exception", final.split(":", 1)[0][:200])
        start = header.line_number if header else block.start
        first = header.text if header else block.first
        t, source = self._time(first, message, start)
        f = LogFinding(level, category, _short(message), text, start, t, source, block.rank, 1, details)
        self.from_traceback.add(id(f))
        self._emit(f)

    def _close_native(self, block: Native) -> None:
        lines = [block.first.strip()] + block.info
        best = lc.best_category(lines)
        if best is not None:
            cat, _, source_line = best
            category, message = cat.id, source_line
        else:
            category, message = "segfault", block.first.strip()
        text = block.text.render()
        details = details_for(category, text, message)
        if category == "segfault" and "signal" not in details and "terminate called" in text:
            details["signal"] = "SIGABRT"
        t, source = self._time(block.first, message, block.start)
        f = LogFinding(
            "error", category, _short(message), text, block.start, t, source, block.rank, 1, details
        )
        self.from_traceback.add(id(f))
        self._emit(f)

    def _emit(self, f: LogFinding) -> None:
        """Fold ``f`` into an identical earlier finding, or keep it. When ``max_findings`` are kept already, a
        warning makes room for an error, then a middle error does: the errors near the end explain a log."""
        key = (f.level, f.category, _norm(f.message))
        old = self.keys.get(key)
        if old is not None:
            self._fold(old, f)
            return
        if len(self.findings) >= self.max_findings:
            if f.level != "error":
                self.dropped += 1
                return
            victim = next((x for x in reversed(self.findings) if x.level != "error"), None)
            if victim is None:
                victim = self.findings[len(self.findings) // 2]
            self.findings.remove(victim)
            self.keys.pop((victim.level, victim.category, _norm(victim.message)), None)
            self.dropped += 1
        self.keys[key] = f
        self.findings.append(f)

    @staticmethod
    def _fold(old: LogFinding, new: LogFinding) -> None:
        old.count += new.count
        ranks = set(old.details.get("ranks") or ([old.rank] if old.rank is not None else []))
        ranks.update(new.details.get("ranks") or ([new.rank] if new.rank is not None else []))
        last = max(old.details.get("last_line_number", old.line_number), new.line_number)
        if new.line_number < old.line_number:  # blocks close late: keep the earliest occurrence's fields
            keep = {k: v for k, v in old.details.items() if k in ("ranks", "last_line_number")}
            old.message, old.text, old.line_number = new.message, new.text, new.line_number
            old.timestamp, old.timestamp_source, old.rank = new.timestamp, new.timestamp_source, new.rank
            old.details = {**new.details, **keep}
        if len(ranks) > 1:
            old.details["ranks"] = sorted(ranks)[:64]
        old.details["last_line_number"] = last

    def _skipped_after(self, number: int) -> bool:
        i = bisect.bisect_right(self.oom_skips, number)
        return i < len(self.oom_skips) and self.oom_skips[i] - number <= OOM_SKIP_LINES

    def finish(self) -> list[LogFinding]:
        for block in list(self.blocks):
            self._close(block)
        for f in list(self.pending.values()):
            self._emit(f)
        self.pending.clear()
        for f in self.findings:
            if (
                f.category == "network_timeout"
                and f.level == "error"
                and id(f) not in self.from_traceback
                and self.last_success > f.details.get("last_line_number", f.line_number)
            ):
                f.level = "warning"  # it recovered: a later line reports success
                f.details["recovered"] = True
            elif f.category in OOM_CATEGORIES and f.level == "error" and self._skipped_after(f.line_number):
                f.level = "warning"  # the program says it skipped the batch and went on
                f.details["recovered"] = True
        if self.dropped:
            logger.info(
                "log parse kept %d findings and dropped %d beyond max_findings",
                len(self.findings),
                self.dropped,
            )
        return sorted(self.findings, key=lambda f: f.line_number)
