"""Numbers out of frames and rows: a column as floats whatever it holds, a JSON-bound figure, a row's details,
and the per-job cache the measures share.

SQLite turns NaN into NULL and a crashed run leaves columns empty or missing; everything here reads those as NaN
or None instead of raising, so no measure has to check first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData


def num(values: Any) -> np.ndarray:
    """A float array with NaN for None and non-numbers (SQLite turns NaN into NULL)."""
    out: np.ndarray = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")
    return out


def col(frame: pd.DataFrame | None, name: str) -> np.ndarray:
    """Column ``name`` as floats; all-NaN when the column is missing."""
    if frame is None or frame.empty or name not in frame.columns:
        return np.full(0 if frame is None else len(frame), np.nan)
    return num(frame[name])


def finite(a: np.ndarray) -> np.ndarray:
    """The finite values of ``a``."""
    out: np.ndarray = a[np.isfinite(a)]
    return out


def details_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """An event row's ``details`` as a dict (empty when missing or not a mapping)."""
    d = row.get("details")
    return d if isinstance(d, dict) else {}


def is_nan(x: Any) -> bool:
    """True for a float NaN; False for anything that is not a number (None, a string), instead of raising."""
    try:
        return bool(math.isnan(x))
    except TypeError:
        return False


T = TypeVar("T")


def memo(data: JobData, name: str, fn: Callable[[], T]) -> T:
    """Compute ``fn()`` once per job for every rule that needs it (a 1M-step run is analysed in seconds only if
    the main-rank steps, phases and memory series are derived once, not once per rule).

    The key includes the identity of the frames and config, so assigning a new frame recomputes; frames are
    treated as immutable once analysed (mutating a column in place is not seen).
    """
    cache: dict[tuple[Any, ...], Any] = data.__dict__.setdefault("_runlens_memo", {})
    key = (name, id(data.steps), id(data.samples), id(data.events), id(data.gpus), id(data.costs),
           id(data.config), data.dialect, len(data.log_findings), id(data.settings))
    if key not in cache:
        cache[key] = fn()
    return cache[key]  # type: ignore[no-any-return]
