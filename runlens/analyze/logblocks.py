"""The line-level machinery of the log parser: one clean line, bounded text, and the multi-line blocks.

``runlens.analyze.logparse`` streams the file and ``runlens.analyze.logfindings`` keeps the findings; this
module turns one raw line into clean text (ANSI stripped, the last ``\\r`` segment, text glued after a progress
bar split off, the torchrun rank prefix removed and recorded) and holds the state machines of the findings that
span lines:

- ``Traceback``: a Python traceback with its chained exceptions and the exception's multi-line message
  (CUDA's hints, torchrun's ChildFailedError report), including rich/loguru boxed frames and frames printed
  without indentation;
- ``Native``: ``Fatal Python error: ...`` with its thread dumps, or a C++ ``terminate called ...`` report;
- ``PyWarning``: a Python warning and the source line ``warnings`` prints under it.

A block is fed the lines of its own stream (its rank, and the per-line prefix it started with) and answers
``TAKE`` (mine), ``DONE`` (mine, and I am complete), ``REJECT`` (not mine: I am complete, process the line
anew) or ``SKIP`` (not mine, but I may continue: another stream's line in the middle of mine).
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING

from runlens.analyze import logcategories as lc
from runlens.analyze import logpatterns as lp

if TYPE_CHECKING:
    from runlens.analyze.logfindings import LogFinding

MAX_LINE = 64 * 1024  # longer lines keep their first and last 32 KiB
TEXT_LIMIT = 8 * 1024  # a finding's text keeps its first and last 4 KiB
MAX_BLOCK_LINES = 20000  # a traceback longer than this is closed (a runaway, not a stack)

# -- one clean line ------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_RANK = re.compile(r"^\[(?:rank|default)(\d+)\]:\s?|^\[\d+,(\d+)\]<std(?:out|err)>:\s?")
_STREAM = re.compile(r"^(?:stdout|stderr): ")
# tqdm's "[elapsed<remaining, rate, postfix]" (or "[elapsed, rate]" without a total)
_TQDM = re.compile(r"\[\d+(?::\d\d){1,2}(?:<(?:\d+(?::\d\d){1,2}|\?))?,[^\]\n]*/[^\]\n]*\]")
_PCT_BAR = re.compile(r"\d{1,3}%\|")
_KERAS = re.compile(r"^\s*\d+/\d+ \[[=>.]*\]")


# What a failure writes: an earlier ``\r`` segment or a piece between two progress bars that says one of these is
# kept although the terminal overwrote it (a traceback printed while a bar redraws, an OOM another rank wrote
# into the middle of a bar). Case-sensitive: a bare "ERROR" that a bar overwrote stays unshown.
STRONG_WORDS = (
    "Traceback (most recent call last)", "out of memory", "OutOfMemory", "Error: ", "Segmentation fault",
    "Fatal Python error", "Killed", "CANCELLED AT", "death signal",
)
STRONG_SEGMENT = re.compile(lp.trie(STRONG_WORDS).encode())
_STRONG_TEXT = re.compile(STRONG_SEGMENT.pattern.decode())
# The head of the next bar at the end of a piece between two bars: "split=val:   0%|      | 0/6 ", or what is
# left of it where the glued text overwrote its start ("        | 0/6 ").
_BAR_HEAD = re.compile(
    r"\s*(?:\S*\s*\d{1,3}%)?\|[^|\n]*\|?\s*[\d.]+[kMGT]?(?:/[\d.?]+[kMGT]?)?(?:\(max\))?\s*$"
)


def clean(raw: bytes) -> tuple[str, int | None] | None:
    """A raw log line -> (text, rank), or None for a progress bar or binary junk.

    Of a line rewritten with ``\\r`` the text is what a terminal shows (the last non-empty segment), unless an
    earlier segment reports a failure. Text glued after a progress bar, or between two bars drawn on one line,
    is what counts of a bar line; a bar alone counts only when its postfix shows a non-finite loss
    (``loss=nan`` in a Lightning or kohya bar, ``- loss: nan`` in a Keras one).
    """
    raw = raw.rstrip(b"\r")
    if b"\r" in raw:
        raw = _shown_segment(raw)
    if len(raw) > MAX_LINE:
        raw = raw[: MAX_LINE // 2] + b" [...] " + raw[-MAX_LINE // 2 :]
    text = raw.decode("utf-8", "replace")
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if not text.isprintable():
        bad = len(_BAD_CHARS.findall(text))
        if bad * 3 > len(text):
            return None  # mostly non-printable: binary junk
        text = _CTRL.sub("", text)
    rank, text = _strip_rank(text, None)
    bars = list(_TQDM.finditer(text))
    if bars:
        glued = _glued_text(text, bars)
        if glued is not None:
            rank, text = _strip_rank(glued, rank)
        elif not _nonfinite_progress(text):
            return None
    elif (_PCT_BAR.search(text) or _KERAS.match(text)) and not _nonfinite_progress(text):
        return None
    return text.rstrip(), rank


def _shown_segment(raw: bytes) -> bytes:
    """Of a ``\\r``-rewritten line: the last earlier segment that reports a failure, else the last non-empty
    one (what the terminal shows)."""
    segments = [seg for seg in raw.split(b"\r") if seg.strip()]
    if not segments:
        return b""
    if not STRONG_SEGMENT.search(segments[-1]):
        for seg in reversed(segments[:-1]):
            if STRONG_SEGMENT.search(seg):
                return seg
    return segments[-1]


def _glued_text(text: str, bars: list[re.Match[str]]) -> str | None:
    """The text printed into a line of progress bars: after the last bar, or between two of them (a traceback
    that started while nested bars redrew), without the next bar's head; None when there is none."""
    pieces = []
    for i, bar in enumerate(bars):
        end = bars[i + 1].start() if i + 1 < len(bars) else len(text)
        piece = text[bar.end() : end]
        if i + 1 < len(bars):
            piece = _BAR_HEAD.sub("", piece)
        if piece.strip():
            pieces.append(piece)
    if not pieces:
        return None
    for piece in pieces:
        if TB_START in piece:
            return piece
    return next((p for p in reversed(pieces) if _STRONG_TEXT.search(p)), pieces[-1])


def _nonfinite_progress(text: str) -> bool:
    """Whether a progress bar's text shows a NaN/Inf loss or gradient norm."""
    low = text.lower()
    if "nan" not in low and "inf" not in low:
        return False
    return lc.GRAD_NORM_NAN.search(text) is not None or any(p.search(text) for p in lc.NAN_LOSS_PATTERNS)


def _strip_rank(text: str, rank: int | None) -> tuple[int | None, str]:
    m = _RANK.match(text)
    if m:
        rank = int(m.group(1) or m.group(2))
        text = text[m.end() :]
    m = _STREAM.match(text)
    if m:
        text = text[m.end() :]
    return rank, text


# -- bounded text --------------------------------------------------------------------------------------------


class Text:
    """A finding's text: the first and the last ~4 KiB of its lines, and how many were left out between."""

    def __init__(self) -> None:
        self.head: list[str] = []
        self.head_size = 0
        self.tail: deque[str] = deque()
        self.tail_size = 0
        self.omitted = 0

    def add(self, line: str) -> None:
        if len(line) > TEXT_LIMIT // 2:
            line = line[: TEXT_LIMIT // 4] + " [...] " + line[-TEXT_LIMIT // 4 :]
        if self.head_size + len(line) <= TEXT_LIMIT // 2 and not self.tail:
            self.head.append(line)
            self.head_size += len(line) + 1
            return
        self.tail.append(line)
        self.tail_size += len(line) + 1
        while self.tail_size > TEXT_LIMIT // 2 and len(self.tail) > 1:
            self.tail_size -= len(self.tail.popleft()) + 1
            self.omitted += 1

    def render(self) -> str:
        mid = [f"[... {self.omitted} lines omitted ...]"] if self.omitted else []
        return "\n".join(self.head + mid + list(self.tail)).rstrip()


# -- multi-line blocks ---------------------------------------------------------------------------------------

TB_START = "Traceback (most recent call last)"
# The lines that chain one traceback to the next in the same finding; torch.multiprocessing.spawn's
# ProcessRaisedException carries the child's traceback as its message, after "-- Process N terminated ...".
_CHAIN = re.compile(
    r"^(?:During handling of the above exception, another exception occurred"
    r"|The above exception was the direct cause of the following exception"
    r"|-- Process \d+ terminated with the following error:)"
)
_EXC_CONT = re.compile(
    r"^(?:CUDA kernel errors|For debugging consider|Compile with .?TORCH_USE_CUDA_DSA"
    r"|Device-side assertions? |Exception raised from|frame #\d+|You can suppress this exception"
    r"|Set TORCH_LOGS|To enable traceback see"
    r"|Please try to raise|It is possible that|HINT\b|This might be caused|If reserved but unallocated"
    r"|See documentation for Memory Management|Search for .cuda|\[?[=\-]{5,}\]?$|\S+ FAILED$|Failures:"
    r"|Root Cause|\[\d+\]:$|<NO_OTHER_FAILURES>|nccl\w*Error\b|Last error:)"
)
# huggingface_hub's and requests' error messages continue after a blank line ("401 Client Error.\n\nCannot
# access gated repo for url ...\nAccess to model X is restricted ..."): these lines belong to the exception.
_EXC_AFTER_GAP = re.compile(
    r"^\s*(?:Cannot access gated repo|Repository Not Found for url|Revision Not Found for url"
    r"|Entry Not Found for url|Access to model|Repo model|Please make sure you specified|If you are trying to"
    r"|Invalid username or password|Make sure to have access)"
)
NATIVE_START = re.compile(r"Fatal Python error: |terminate called (?:after throwing|without an active)")
_NATIVE_CONT = re.compile(
    r"^(?:Python runtime state|Thread 0x|Current thread 0x|Stack \(most recent call first\)|<no Python frame>"
    r"|Extension modules|Garbage-collecting|\s*what\(\)|Exception raised from|frame #\d+|CUDA kernel errors"
    r"|For debugging consider|Compile with|File \"|Fatal Python error|terminate called"
    r"|(?:Segmentation fault|Aborted|Bus error|Illegal instruction)(?: \(core dumped\))?$)"
)
_GROUP_LINE = re.compile(r"^[ +\-]*\|[ |]*(\S.*)$")
_FRAME_FIRST = set(" \t│╭╰┃┏┗|")
_BOX_ONLY = re.compile(r"^[\s─━═╭╮┏┓│┃]*$")

TAKE, DONE, REJECT, SKIP = "take", "done", "reject", "skip"


class Block:
    """An open multi-line finding of one stream (a rank, and the line prefix it started with)."""

    def __init__(self, rank: int | None, prefix: re.Pattern[str] | None, first: str, number: int) -> None:
        self.rank = rank
        self.prefix = prefix
        self.first = first  # the first line as printed (prefix and timestamp included)
        self.start = number
        self.last = number
        self.text = Text()
        self.lines = 0
        self.header: LogFinding | None = None
        self.marker: str | None = None  # the level its first line's prefix declares ("WARNING:root:Traceback")

    def add(self, s: str) -> None:
        self.text.add(s)
        self.lines += 1

    def feed(self, s: str, number: int) -> str:
        raise NotImplementedError


class Traceback(Block):
    """A Python traceback, chained exceptions and the exception's multi-line message included."""

    def __init__(self, rank: int | None, prefix: re.Pattern[str] | None, first: str, number: int) -> None:
        super().__init__(rank, prefix, first, number)
        self.state = "frames"
        self.blanks = 0
        self.noise = 0
        self.after_file = False
        self.exc: list[str] = []  # exception lines, oldest first
        self.trailers: list[str] = []  # lines after an exception line that belong to its message
        self.last_frame = ""
        self.save_frames = False

    def feed(self, s: str, number: int) -> str:
        if self.lines >= MAX_BLOCK_LINES:
            return REJECT
        blank = not s.strip()
        if self.state == "frames":
            if blank:
                self.blanks += 1
                if self.blanks > 3:
                    return REJECT
                self.add(s)
                return TAKE
            self.blanks = 0
            stripped = s.lstrip()
            if TB_START in s and s[0] not in _FRAME_FIRST:
                return REJECT  # another process's traceback, not a chained one (a nested one is indented)
            if s[0] in _FRAME_FIRST or stripped.startswith(('File "', '> File "')):
                self.add(s)
                # Python 3.11 ExceptionGroup: its sub-exceptions are printed as "  | ValueError: ..."
                group = _GROUP_LINE.match(s)
                if group and lp.EXC_LINE.match(group.group(1)) and not group.group(1).startswith("File "):
                    self.exc.append(group.group(1).strip())
                if stripped.startswith(('File "', '> File "')):
                    self.last_frame = stripped
                    self.after_file = True
                    if lp.SAVE_FRAME.search(stripped):
                        self.save_frames = True
                else:
                    self.after_file = False
                return TAKE
            if self.after_file and not lp.EXC_LINE.match(s):
                self.after_file = False  # the source line of a frame printed without indentation
                self.add(s)
                return TAKE
            if lp.EXC_LINE.match(s):
                self.add(s)
                self.exc.append(s.strip())
                self.state = "exception"
                return TAKE
            self.noise += 1  # another stream's line in the middle of ours
            return REJECT if self.noise > 3 else SKIP
        if self.state == "exception":
            if blank:
                self.state, self.blanks = "gap", 1
                return TAKE
            if _CHAIN.match(s):
                self.add(s)
                self.state = "chain"
                return TAKE
            if TB_START in s:
                return REJECT
            if s[0] in " \t" or _EXC_CONT.match(s) or _EXC_AFTER_GAP.match(s):
                self.add(s)
                self.trailers.append(s.strip())
                return TAKE
            return REJECT
        if self.state == "gap":
            if blank:
                self.blanks += 1
                return TAKE if self.blanks <= 2 else REJECT
            if _EXC_AFTER_GAP.match(s):
                self.add(s)
                self.trailers.append(s.strip())
                self.state = "exception"
                return TAKE
            if _CHAIN.match(s):
                self.add("")
                self.add(s)
                self.state = "chain"
                return TAKE
            return REJECT
        # "chain": waiting for the next traceback of a chained exception
        if blank:
            return TAKE
        if TB_START in s:
            self.add("")
            self.add(s)
            self.state, self.after_file = "frames", False
            return TAKE
        return REJECT


class Native(Block):
    """A native crash report: ``Fatal Python error: ...`` with its thread dumps, or a C++ ``terminate called
    after throwing ...`` with ``what():`` and its frames."""

    def __init__(self, rank: int | None, prefix: re.Pattern[str] | None, first: str, number: int) -> None:
        super().__init__(rank, prefix, first, number)
        self.blanks = 0
        self.info: list[str] = []  # non-frame lines: what() and the like, for the category

    def feed(self, s: str, number: int) -> str:
        if self.lines >= MAX_BLOCK_LINES:
            return REJECT
        if not s.strip():
            self.blanks += 1
            if self.blanks > 2:
                return REJECT
            self.add(s)
            return TAKE
        self.blanks = 0
        if s[0] in " \t" or _NATIVE_CONT.match(s):
            self.add(s)
            stripped = s.strip()
            if not stripped.startswith(("File ", "frame #")):
                self.info.append(stripped)
            return TAKE
        return REJECT


class PyWarning(Block):
    """A Python warning and the source line ``warnings`` prints under it."""

    def feed(self, s: str, number: int) -> str:
        if s[:1] in (" ", "\t") and s.strip():
            self.add(s)
            return DONE
        return REJECT


def prefix_pattern(prefix: str) -> re.Pattern[str] | None:
    """The per-line prefix a traceback started with, as a pattern that also matches the next lines' prefixes
    (their timestamps and counters differ: every digit run may vary)."""
    if not prefix or _BOX_ONLY.match(prefix) and prefix.strip():
        return None
    if not prefix.strip():  # an indented traceback: strip up to that much indentation, not more
        return re.compile(f"[ \t]{{0,{len(prefix)}}}")
    parts = re.split(r"(\d+)", prefix)
    return re.compile("".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts))
