"""Find the errors and warnings in a training run's log.txt: when, where, what kind, tracebacks kept whole.

``runlens collect`` tees the child's stdout and stderr into ``log.txt``; ``parse_log`` reads it back after the
run (or while it still runs) and returns ``LogFinding`` objects. The categories and their precedence live in
``runlens.analyze.logpatterns``, the multi-line bookkeeping in ``runlens.analyze.logfindings``; this module does
the reading:

- **Streaming.** The file is read in 1 MiB binary chunks and split on ``\\n``; memory stays bounded whatever
  the size (lines are cut to 64 KiB keeping head and tail, a traceback's text to ~8 KiB, findings to
  ``max_findings`` with identical ones folded into the first by ``count``).
- **Cheap first.** A byte regex over each lowercased chunk (``logpatterns.PREFILTER``) picks the few lines
  that could matter; the rest of the log (progress bars, metrics) is never decoded. Lines are read one by one
  only while a traceback or crash report is open.
- **Clean lines.** ANSI escapes are stripped, a ``\\r``-rewritten line keeps only its last segment (what a
  terminal shows), text glued after a tqdm bar is split off it, torchrun's ``[rank3]:``/``[default3]:``
  prefixes are removed and recorded, and lines that are mostly non-printable (binary junk) are skipped.

Timestamps come from the line itself (ISO 8601, Python logging, glog, HF/accelerate, rich, ctime, epoch
seconds; naive times are local), else from the arrival-time sidecar (``runlens.core.arrival``), else None.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from runlens.analyze import logpatterns as lp
from runlens.analyze.logblocks import MAX_LINE, STRONG_SEGMENT
from runlens.analyze.logfindings import FindingParser, LogFinding
from runlens.core.arrival import ArrivalIndex, sidecar_path
from runlens.core.errors import LogUnreadable

__all__ = ["parse_lines", "parse_log"]

CHUNK = 1 << 20


def _collapse_cr(block: bytes) -> bytes:
    """Each line rewritten with ``\\r`` reduced to its last segment, before anything scans it: in a log of
    progress bars that drops ~95% of the bytes. A line whose overwritten segments report a failure (a
    traceback or an OOM printed while a bar redraws) is kept whole for ``logblocks.clean`` to pick from."""
    lines = block.split(b"\n")
    for i, line in enumerate(lines):
        if b"\r" in line:
            line = line.rstrip(b"\r")
            cut = line.rfind(b"\r")
            if cut >= 0 and not (_overwrote_text(line) and STRONG_SEGMENT.search(line, 0, cut)):
                line = line[cut + 1 :]
            lines[i] = line
    return b"\n".join(lines)


def _overwrote_text(line: bytes) -> bool:
    """Whether a rewritten line has a segment before its last that is not a tqdm redraw (each of which ends
    with its "[elapsed<remaining, rate]" bracket): two byte counts, so that a line of pure bar redraws costs
    no regex search."""
    return line.count(b"\r") != line.count(b"]\r")


def _candidates(block: bytes) -> list[int]:
    """The start offsets of the lines of ``block`` that contain a trigger word, ascending."""
    lowered = b"\n" + block.lower()  # lowered[k + 1] is block[k]; lowered[s] precedes the line at s
    starts: list[int] = []
    last_end = -1
    for m in lp.PREFILTER.finditer(lowered):
        inside = m.end() - 2  # the block index of the match's last byte: inside its line
        if inside <= last_end:
            continue  # another trigger in a line already taken
        starts.append(block.rfind(b"\n", 0, inside) + 1)
        last_end = block.find(b"\n", inside)
    return starts


def _scan_block(block: bytes, number: int, parser: FindingParser) -> int:
    """Feed the lines of ``block`` (complete lines, each ending with ``\\n``) that matter; return the line
    count after it."""
    if b"\r" in block:
        block = _collapse_cr(block)
    cands = _candidates(block)
    ci, nc = 0, len(cands)
    pos, n = 0, len(block)
    while pos < n:
        while ci < nc and cands[ci] < pos:
            ci += 1
        if parser.busy:  # inside a traceback: every line, in order
            end = block.find(b"\n", pos)
            number += 1
            parser.line(block[pos:end], number, ci < nc and cands[ci] == pos)
            pos = end + 1
            continue
        if ci == nc:
            return number + block.count(b"\n", pos)
        start = cands[ci]
        number += block.count(b"\n", pos, start) + 1
        end = block.find(b"\n", start)
        parser.line(block[start:end], number, True)
        pos = end + 1
    return number


def _cap(carry: bytes) -> bytes:
    """An unfinished line longer than a few MAX_LINEs keeps its head and tail (progress bars without
    newlines can be hundreds of megabytes)."""
    if len(carry) > 4 * MAX_LINE:
        return carry[:MAX_LINE] + b" [...] " + carry[-MAX_LINE:]
    return carry


def _scan(chunks: Iterable[bytes], parser: FindingParser) -> list[LogFinding]:
    carry = b""
    number = 0
    for data in chunks:
        if carry:
            data = carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = _cap(data)
            continue
        carry = _cap(data[cut + 1 :])
        number = _scan_block(data[: cut + 1], number, parser)
    if carry:
        _scan_block(carry + b"\n", number, parser)
    return parser.finish()


def parse_log(
    path: str | os.PathLike[str], *, arrival_index: ArrivalIndex | None = None, max_findings: int = 2000
) -> list[LogFinding]:
    """The findings of the log file at ``path``, in line order.

    Args:
        path: a log.txt as ``runlens collect`` wrote it (any text log works).
        arrival_index: arrival times of its lines; when None, the sidecar next to the log is used if present.
        max_findings: distinct findings kept (identical ones fold into one with a count).

    Raises:
        LogUnreadable: the file is missing, a directory, or cannot be read. Binary or non-UTF-8 content does
        not raise: what can be read is returned.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise LogUnreadable(str(p), "no such file") from None
    except OSError as exc:
        raise LogUnreadable(str(p), exc.strerror or str(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise LogUnreadable(str(p), "is a directory")
    if arrival_index is None:
        side = sidecar_path(p)
        arrival_index = ArrivalIndex.load(side) if side.is_file() else None
    parser = FindingParser(arrival_index, max_findings, datetime.fromtimestamp(st.st_mtime))
    try:
        with open(p, "rb") as f:
            return _scan(iter(lambda: f.read(CHUNK), b""), parser)
    except OSError as exc:  # opening (permissions) or reading (an I/O error) the file
        raise LogUnreadable(str(p), exc.strerror or str(exc)) from None


def _encoded(lines: Iterable[str]) -> Iterator[bytes]:
    batch: list[bytes] = []
    size = 0
    for line in lines:
        b = line.encode("utf-8", "replace")
        if not b.endswith(b"\n"):
            b += b"\n"
        batch.append(b)
        size += len(b)
        if size >= CHUNK:
            yield b"".join(batch)
            batch, size = [], 0
    if batch:
        yield b"".join(batch)


def parse_lines(
    lines: Iterable[str], *, arrival_index: ArrivalIndex | None = None, max_findings: int = 2000
) -> list[LogFinding]:
    """``parse_log`` for lines in memory (one string per line, with or without the newline). Dates without a
    year take the current one."""
    parser = FindingParser(arrival_index, max_findings, datetime.now())
    return _scan(_encoded(lines), parser)
