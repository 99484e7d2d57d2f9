"""The tee of ``runlens collect``: the child's output to the terminal as it arrives, and to ``log.txt`` as lines.

The terminal gets the bytes at once, partial lines and ``\\r`` progress bars included, so the run looks as it
would without runlens. ``log.txt`` gets whole lines, both streams interleaved in the order their lines
completed, with a ``\\r`` progress bar collapsed to what a terminal shows (its latest state, at most every
``PROGRESS_LOG_EVERY`` seconds). Each line's arrival time goes to the arrival sidecar
(``runlens.core.arrival``), so the analyzer can place a log line in time even when the line has no timestamp.

A ``ProgressSink`` (``runlens.collect.output_steps``) may listen: it gets every line and every ``\r`` redraw as
the bytes arrive (not the collapsed ``log.txt`` view: a bar's redraws are its steps), then ``end_round`` after
each batch of reads. It runs on this thread, so it must be cheap; if it raises, it is switched off and the tee
goes on.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from runlens.core.arrival import ArrivalWriter
from runlens.core.errors import LogNotWritable

logger = logging.getLogger(__name__)

TEE_GRACE_SECONDS = 3.0        # after the child exits, how long a grandchild may keep its pipes open
PROGRESS_LOG_EVERY = 10.0      # a \r progress bar reaches log.txt at most this often (ClearML: 10 s)
MAX_LINE_BYTES = 1 << 20       # a line longer than this is cut into pieces in log.txt
TEE_COALESCE_SECONDS = 0.05    # at most ~20 tee wake-ups a second: one per printed line cost ~70 µs of CPU each
# ... but only for a child that prints little: one that wrote this much since the last read is read again at once,
# or its pipe (64 KiB) fills within the pause and the pause caps its output (~1.3 MB/s; bench/bench_progress.py).
COALESCE_BELOW_BYTES = 8192
READ_CHUNK = 65536


class ArrivalSink(Protocol):
    def line(self, line_number: int, t: float) -> None: ...
    def close(self) -> None: ...


class ProgressSink(Protocol):
    """Reads the child's output as it arrives (the progress parser's feed).

    ``prefilter``: words of which a line must hold one to be handed over (None: every line is). The tee looks
    for them once over each chunk it reads rather than once per line, so the lines that cannot be progress
    (nearly all of a chatty child's) cost the reader nothing more than copying them.
    """

    prefilter: Sequence[bytes] | None

    def segment(self, data: bytes, t: float, stream: int, redraw: bool) -> None: ...
    def end_round(self, t: float) -> None: ...


Segment = Callable[[bytes, float, bool], None]


def arrival_writer(log_path: str) -> ArrivalSink | None:
    """The analyzer's arrival-time sidecar (``<log>.times``); None when it cannot be written (the log goes on)."""
    try:
        writer: ArrivalSink = ArrivalWriter(log_path)
    except OSError as exc:
        logger.warning("cannot write the log's arrival times next to %s (%s); the log goes on without them",
                       log_path, exc.strerror or exc)
        return None
    return writer


def open_log(path: Path) -> tuple[BinaryIO, int]:
    """Open the log for appending; returns it and the number of lines already in it (an existing ``--log``
    file is continued, never truncated, and the arrival sidecar's line numbers must match its lines)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
        fh.seek(0)
        lines = 0
        last = b"\n"
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
        if last != b"\n":           # finish a last line that has no newline, so ours start on their own
            fh.write(b"\n")
            lines += 1
        return fh, lines
    except OSError as exc:
        raise LogNotWritable(str(path), exc.strerror or str(exc)) from None



def terminal_fd(stream: Any) -> int | None:
    """The file descriptor the tee echoes to (``sys.stdout``, ``sys.stderr``), or None where there is none."""
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):   # pytest's capture, a closed stream
        return None


class _LineAssembler:
    """One stream's bytes -> log.txt lines, with ``\\r`` progress bars collapsed to what a terminal shows."""

    def __init__(self, emit: Callable[[bytes, float], None], progress_every: float, max_line: int,
                 segment: Segment | None = None, prefilter: Sequence[bytes] | None = None) -> None:
        self.emit = emit
        self.segment = segment      # every line and every \r redraw, as it arrives (the progress parser)
        self.prefilter = prefilter  # ... or only the lines holding one of these words
        self._tail_sent = b""
        self.progress_every = progress_every
        self.max_line = max_line
        self.buf = bytearray()
        self.progress: bytes | None = None     # the latest complete \r-terminated state not yet logged
        self.last_progress_emit = float("-inf")

    @staticmethod
    def _shown(line: bytes) -> bytes:
        """What a terminal shows for a line with carriage returns: its last non-empty segment."""
        if b"\r" not in line:
            return line
        for seg in reversed(line.split(b"\r")):
            if seg:
                return seg
        return b""

    def _candidates(self, end: int, t: float) -> None:
        """Hand the complete lines of ``buf[:end]`` that hold a prefilter word to the progress parser: one ``find``
        pass per word over the chunk (in C, at memory speed; a regular expression of alternatives is tried at
        every byte, ~30 MB/s), then only those lines are cut out. The other lines cost nothing more."""
        assert self.prefilter is not None and self.segment is not None
        buf = self.buf
        starts: set[int] = set()
        for word in self.prefilter:
            pos = buf.find(word, 0, end)
            while pos >= 0:
                line = buf.rfind(b"\n", 0, pos) + 1
                starts.add(line)
                nl = buf.find(b"\n", pos, end)
                pos = buf.find(word, nl + 1, end) if nl >= 0 else -1
        for line in sorted(starts):
            nl = buf.find(b"\n", line, end)
            self._segments(bytes(buf[line:nl]), t)

    def feed(self, data: bytes, t: float) -> None:
        self.buf += data
        filtered = self.segment is not None and self.prefilter is not None
        if filtered:
            last = self.buf.rfind(b"\n")
            if last >= 0:
                self._candidates(last + 1, t)
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                break
            raw = bytes(self.buf[:nl])
            line = self._shown(raw)
            del self.buf[: nl + 1]
            if self.segment is not None and not filtered:
                self._segments(raw, t)
            if not line and self.progress is not None:
                line = self.progress    # "\r 100%|...|\r\n": the bar's last state is the line
            self.progress = None
            self.emit(line, t)
        cr = self.buf.rfind(b"\r")
        if cr >= 0:
            if self.segment is not None:
                for seg in bytes(self.buf[:cr]).split(b"\r"):
                    if seg != self._tail_sent:
                        self.segment(seg, t, True)
                    self._tail_sent = b""
            state = self._shown(bytes(self.buf[:cr]))
            del self.buf[: cr + 1]
            if state:
                self.progress = state
            if self.progress is not None and t - self.last_progress_emit >= self.progress_every:
                self.emit(self.progress, t)
                self.progress = None
                self.last_progress_emit = t
        while len(self.buf) > self.max_line:
            self.emit(bytes(self.buf[: self.max_line]), t)
            del self.buf[: self.max_line]
        if self.segment is not None and cr >= 0 and self.buf and b"\n" not in self.buf:
            # The redraw after the last \r: a bar writes "\r" + its state in one write, so this is its current
            # state, which the next redraw would otherwise deliver only one redraw late.
            tail = bytes(self.buf)
            if tail != self._tail_sent:
                self._tail_sent = tail
                self.segment(tail, t, True)

    def _segments(self, raw: bytes, t: float) -> None:
        """A completed line to the progress parser: its \r redraws, then what is left after the last one."""
        assert self.segment is not None
        if b"\r" in raw:
            *redraws, raw = raw.split(b"\r")
            for seg in redraws:
                if seg != self._tail_sent:
                    self.segment(seg, t, True)
                self._tail_sent = b""
        self._tail_sent = b""
        if raw:
            self.segment(raw, t, False)

    def close(self, t: float) -> None:
        if self.segment is not None and self.buf:
            self._segments(bytes(self.buf), t)
        tail = self._shown(bytes(self.buf)) or self.progress
        self.buf.clear()
        self.progress = None
        if tail:
            self.emit(tail, t)


class LogTee:
    """Copies the child's pipes to the terminal at once (partial lines and ``\\r`` bars included) and to
    ``log.txt`` as lines, both streams interleaved in the order their lines completed, each line's arrival
    time going to the sidecar. Reads with ``os.read`` in chunks, so a huge line never blocks the terminal.

    Args:
        streams: (pipe read fd, terminal fd or None) pairs.
        log_file: log.txt opened for binary append.
        arrival: the arrival sidecar, or None.
        first_line: the 1-based number the first new line gets (lines already in an appended log + 1).
    """

    def __init__(self, streams: Sequence[tuple[int, int | None]], log_file: BinaryIO,
                 arrival: ArrivalSink | None = None, *, clock: Callable[[], float] = time.time,
                 progress_every: float = PROGRESS_LOG_EVERY, max_line: int = MAX_LINE_BYTES,
                 coalesce: float = TEE_COALESCE_SECONDS, first_line: int = 1,
                 name: str = "runlens-collect-tee", progress: ProgressSink | None = None) -> None:
        self.log_file = log_file
        self.coalesce = coalesce
        self.arrival = arrival
        self.clock = clock
        self.lines = first_line - 1     # line numbers continue an existing log (``--log`` to a used file)
        self.bytes = 0
        self.cpu_seconds = 0.0
        self._terminal: dict[int, int | None] = dict(streams)
        self.progress = progress
        prefilter = getattr(progress, "prefilter", None)
        self._asm = {fd: _LineAssembler(self._emit, progress_every, max_line,
                                        self._segment_of(i + 1) if progress is not None else None, prefilter)
                     for i, (fd, _) in enumerate(streams)}
        self._stop = threading.Event()
        self._arrival_failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> LogTee:
        self._thread.start()
        return self

    def finish(self, grace: float = TEE_GRACE_SECONDS) -> None:
        """Wait up to ``grace`` s for the pipes to close (a grandchild may hold them), then stop and join."""
        self._thread.join(grace)
        self._stop.set()
        self._thread.join(5.0)

    def _segment_of(self, stream: int) -> Segment:
        def segment(data: bytes, t: float, redraw: bool) -> None:
            progress = self.progress
            if progress is None:
                return
            try:
                progress.segment(data, t, stream, redraw)
            except Exception:   # reading progress is a feature; the child's output must keep flowing
                self.progress = None
                logger.warning("reading steps from the output failed; the log goes on without them", exc_info=True)

        return segment

    def _end_round(self, t: float) -> None:
        progress = self.progress
        if progress is None:
            return
        try:
            progress.end_round(t)
        except Exception:
            self.progress = None
            logger.warning("reading steps from the output failed; the log goes on without them", exc_info=True)

    def _emit(self, line: bytes, t: float) -> None:
        self.log_file.write(line + b"\n")
        self.lines += 1
        if self.arrival is not None and not self._arrival_failed:
            try:
                self.arrival.line(self.lines, t)
            except Exception as exc:
                self._arrival_failed = True
                logger.warning("cannot write log arrival times (%s); log.txt goes on without them", exc)

    def _to_terminal(self, fd: int, data: bytes) -> None:
        term = self._terminal.get(fd)
        if term is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(term, view)
                view = view[n:]
        except OSError:   # the terminal went away (closed pipe, EPIPE): keep logging, stop echoing
            self._terminal[fd] = None

    def _run(self) -> None:
        cpu0 = time.thread_time()
        sel = selectors.DefaultSelector()
        for fd in self._asm:
            sel.register(fd, selectors.EVENT_READ)
        try:
            stop_by: float | None = None
            while sel.get_map():
                events = sel.select(timeout=0.5)   # the timeout only bounds how late a stop is noticed
                if self._stop.is_set():
                    # Told to stop (a grandchild holds the pipes open): drain what is there, for a second at most.
                    stop_by = stop_by or time.monotonic() + 1.0
                    if not events or time.monotonic() > stop_by:
                        break
                if not events:
                    continue
                round_start = time.monotonic()
                t = self.clock()
                more = False
                for key, _ in events:
                    fd = int(key.fd)
                    try:
                        data = os.read(fd, READ_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(fd)
                        self._asm[fd].close(t)
                        continue
                    more = more or len(data) >= COALESCE_BELOW_BYTES
                    self.bytes += len(data)
                    self._to_terminal(fd, data)
                    self._asm[fd].feed(data, t)
                self.log_file.flush()
                self._end_round(t)
                if not more and self.coalesce > 0:
                    # Let a child's lines pile up in the pipe for a moment and take them in one read: 50 ms is
                    # invisible on a terminal; a chatty child (``more``: 8 KiB or more at once) is read again at once.
                    pause = self.coalesce - (time.monotonic() - round_start)
                    if pause > 0:
                        time.sleep(pause)   # not Event.wait: a timed sleep is the cheaper wake-up
        finally:
            t = self.clock()
            for fd, asm in self._asm.items():
                asm.close(t)
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._end_round(t)
            sel.close()
            try:
                self.log_file.flush()
            except OSError:
                pass
            self.cpu_seconds = time.thread_time() - cpu0

