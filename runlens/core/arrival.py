"""The arrival-time sidecar of a tee'd log: when each line reached ``runlens collect``.

Written by the wrapper while it tees the child's output, read by the log parser for lines that carry no
timestamp of their own. The file is ``<log path>.times``::

    # runlens arrival times v1: <line number>\\t<unix seconds>; ...
    17\t1732270000.25

One entry per line whose arrival time moved at least 0.05 s since the last entry written; a line without an
entry arrived with the nearest earlier entry.
"""

from __future__ import annotations

import bisect
import logging
import os
from array import array
from pathlib import Path
from typing import IO, Iterable

logger = logging.getLogger(__name__)

_SIDECAR_HEADER = (
    "# runlens arrival times v1: <line number>\\t<unix seconds>; a line without an entry "
    "arrived with the nearest earlier entry\n"
)


def sidecar_path(log_path: str | os.PathLike[str]) -> Path:
    """Where the arrival times of ``log_path`` are kept: the log's path plus ``.times``."""
    return Path(os.fspath(log_path) + ".times")


class ArrivalWriter:
    """Writes the arrival-time sidecar of a log while ``runlens collect`` tees it.

    ``line()`` is called for every line written to the log; an entry is written only when the time moved at
    least ``MIN_STEP`` seconds since the last entry, so a burst of 10,000 lines costs one entry. The file is
    flushed about once a second of log time, so a killed run keeps nearly all of it. Writing never raises
    after the file is open: a full disk costs the arrival times, not the run. Not thread-safe: one writer per
    tee thread.

    ``runlens collect`` continues an existing log rather than truncating it, numbering its lines on from the
    last one; the sidecar is continued likewise. It starts afresh only when the log is new or empty (a sidecar
    left beside a log that was since removed would otherwise lend its times to the new lines).

    Raises:
        OSError: the sidecar cannot be created.
    """

    MIN_STEP = 0.05
    FLUSH_EVERY = 1.0

    def __init__(self, log_path: str | os.PathLike[str]) -> None:
        self.path = sidecar_path(log_path)
        try:
            fresh = os.path.getsize(log_path) == 0
        except OSError:
            fresh = True
        fresh = fresh or not self.path.exists()
        # held open across line() calls on purpose; closed by close() / the context manager
        self._file: IO[str] | None = open(  # noqa: SIM115
            self.path, "w" if fresh else "a", encoding="ascii", buffering=64 * 1024
        )
        self._last_t: float | None = None
        self._last_line = 0
        self._last_flush: float | None = None
        if fresh:
            self._write(_SIDECAR_HEADER)

    def line(self, line_number: int, t: float) -> None:
        """Record that 1-based ``line_number`` arrived at UNIX time ``t``."""
        if self._file is None or line_number <= self._last_line:
            return
        if self._last_t is not None and abs(t - self._last_t) < self.MIN_STEP:
            return
        self._last_t, self._last_line = t, line_number
        self._write(f"{line_number}\t{t:.3f}\n")
        if self._last_flush is None or t - self._last_flush >= self.FLUSH_EVERY:
            self._last_flush = t
            self._flush()

    def close(self) -> None:
        """Flush and close; further calls do nothing."""
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                logger.warning("could not finish the arrival-time sidecar %s: %s", self.path, exc)

    def __enter__(self) -> ArrivalWriter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, s: str) -> None:
        try:
            assert self._file is not None
            self._file.write(s)
        except OSError as exc:
            logger.warning("stopped writing the arrival-time sidecar %s: %s", self.path, exc)
            self._abandon()

    def _flush(self) -> None:
        try:
            assert self._file is not None
            self._file.flush()
        except OSError as exc:
            logger.warning("stopped writing the arrival-time sidecar %s: %s", self.path, exc)
            self._abandon()

    def _abandon(self) -> None:
        f, self._file = self._file, None
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


class ArrivalIndex:
    """The arrival times ``runlens collect`` kept for each line of a log (see the module docstring)."""

    def __init__(self, lines: Iterable[int] = (), times: Iterable[float] = ()) -> None:
        self._lines = array("q", lines)
        self._times = array("d", times)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ArrivalIndex | None:
        """Read a sidecar file (``sidecar_path(log)``); None when it is missing or unreadable. Malformed lines
        are skipped, so a sidecar torn by a killed run still gives the times it has."""
        pairs: list[tuple[int, float]] = []
        try:
            with open(path, "rb") as f:
                for raw in f:
                    if raw.startswith(b"#"):
                        continue
                    parts = raw.split(b"\t")
                    if len(parts) != 2:
                        continue
                    try:
                        pairs.append((int(parts[0]), float(parts[1])))
                    except ValueError:
                        continue
        except OSError:
            return None
        if any(pairs[i][0] >= pairs[i + 1][0] for i in range(len(pairs) - 1)):
            pairs = sorted(dict(pairs).items())
        return cls((p[0] for p in pairs), (p[1] for p in pairs))

    def time_of(self, line_number: int) -> float | None:
        """The arrival time of a 1-based line: its own entry or the nearest earlier one (None before any)."""
        i = bisect.bisect_right(self._lines, line_number) - 1
        return self._times[i] if i >= 0 else None

    def __len__(self) -> int:
        return len(self._lines)
