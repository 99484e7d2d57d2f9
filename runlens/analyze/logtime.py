"""The time a log line states about itself, in the formats training stacks print.

ISO 8601, Python logging, US dates, glog (no year), HF/accelerate and vLLM month-day times, rich's short dates,
ctime, syslog and epoch seconds. Naive times are local, as the training host printed them; a format without a
year takes it from a reference time (the log's mtime). Only the head of a line is read, so a date inside a
message or a path is not taken for the line's time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_ISO = re.compile(
    r"(?<!\d)(\d{4})[-/](\d\d)[-/](\d\d)[T _](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
    r"(?:\s?(Z|[+-]\d\d:?\d\d)(?![\w:]))?"
)
_US = re.compile(r"(?<![\d/])(\d\d)/(\d\d)/(\d{4})[ ,]+(\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?")
_RICH = re.compile(r"(?<![\d/])(\d\d)/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)(?![\d])")
_CTIME = re.compile(
    r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) "
    r"(\d\d):(\d\d):(\d\d)(?:\.(\d+))? (\d{4})\b"
)
_GLOG_TIME = re.compile(r"^\[?[IWEF](\d{1,2})(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?\b")
_NOYEAR = re.compile(r"(?<![\d/:.-])(\d\d)[-/](\d\d) (\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(?![\d/])")
_SYSLOG = re.compile(r"^(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(\d{1,2}) (\d\d):(\d\d):(\d\d)\b")
_EPOCH = re.compile(r"\[(1[0-9]{9}(?:\.\d{1,9})?)\]|^(1[0-9]{9}\.\d{1,9})\s")
_TIME_WINDOW = 200


def _micro(frac: str | None) -> int:
    return int((frac or "0")[:6].ljust(6, "0"))


def _stamp(
    year: int, month: int, day: int, hh: str, mm: str, ss: str, frac: str | None, tz: str | None = None
) -> float | None:
    try:
        dt = datetime(year, month, day, int(hh), int(mm), int(ss), _micro(frac))
    except ValueError:
        return None
    if tz:
        if tz == "Z":
            return dt.replace(tzinfo=timezone.utc).timestamp()
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        return dt.replace(tzinfo=timezone(sign * offset)).timestamp()
    return dt.timestamp()  # naive: local time, as the training host printed it


def _yearless(
    month: int, day: int, hh: str, mm: str, ss: str, frac: str | None, ref: datetime
) -> float | None:
    """A month/day time with no year (glog, vLLM, mmengine, syslog): the year of ``ref`` (the log's mtime),
    or the year before when that would put the line after the log was last written."""
    t = _stamp(ref.year, month, day, hh, mm, ss, frac)
    if t is not None and t > ref.timestamp() + 2 * 86400:
        t = _stamp(ref.year - 1, month, day, hh, mm, ss, frac)
    return t


def line_time(line: str, ref: datetime) -> float | None:
    """The UNIX time a line states (naive times are local), or None. ``ref`` supplies the year where the
    format has none. Only the head of the line is read, so a date inside a message or a path is not taken."""
    head = line[:_TIME_WINDOW]
    if not any(c.isdigit() for c in head[:_TIME_WINDOW]):
        return None
    m = _ISO.search(head)
    if m:
        return _stamp(
            int(m.group(1)),
            int(m.group(2)),
            int(m.group(3)),
            m.group(4),
            m.group(5),
            m.group(6),
            m.group(7),
            m.group(8),
        )
    m = _US.search(head)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        month, day = (b, a) if a > 12 else (a, b)  # MM/DD/YYYY, unless it can only be DD/MM/YYYY
        return _stamp(int(m.group(3)), month, day, m.group(4), m.group(5), m.group(6), m.group(7))
    m = _CTIME.search(head)
    if m:
        return _stamp(
            int(m.group(7)),
            _MONTHS[m.group(1).lower()],
            int(m.group(2)),
            m.group(3),
            m.group(4),
            m.group(5),
            m.group(6),
        )
    m = _RICH.search(head)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        month, day = (b, a) if a > 12 else (a, b)
        return _stamp(2000 + int(m.group(3)), month, day, m.group(4), m.group(5), m.group(6), None)
    m = _GLOG_TIME.match(head)
    if m:
        return _yearless(
            int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5), m.group(6), ref
        )
    m = _NOYEAR.search(head[:80])
    if m:
        return _yearless(
            int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5), m.group(6), ref
        )
    m = _SYSLOG.match(head)
    if m:
        return _yearless(
            _MONTHS[m.group(1).lower()], int(m.group(2)), m.group(3), m.group(4), m.group(5), None, ref
        )
    m = _EPOCH.search(head)
    if m:
        return float(m.group(1) or m.group(2))
    return None
