"""Reading a number out of data that may not hold one: a JSON document, a stored row, an environment variable.

``finite_number`` takes only real numbers (a JSON ``true`` is not 1, a string is not parsed): the report
and the charts read the analysis document with it, where a value of the wrong type is a gap, never a guess.
``parse_float`` and ``parse_int`` read text too: settings stored as JSON, environment variables;
``parse_finite`` also turns NaN and infinity into None (the analyzer's figures, bound for JSON).
"""

from __future__ import annotations

import math
from typing import Any


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is an int or float (not a bool) and finite; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def parse_float(value: Any) -> float | None:
    """``value`` (a number or its text, surrounding spaces allowed) as a float; None when it is not one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_int(value: Any) -> int | None:
    """``value`` (an int or its text, surrounding spaces allowed) as an int; None when it is not one."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_finite(value: Any) -> float | None:
    """``value`` (a number or its text) as a finite float; None when it is not one, or is NaN or infinite.
    For figures read from stored rows and event details on their way into JSON."""
    f = parse_float(value)
    return f if f is not None and math.isfinite(f) else None
