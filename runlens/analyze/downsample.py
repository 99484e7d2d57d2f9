"""Peak-keeping downsampling of a series for drawing.

A memory chart exists to show the peak that killed the job, so a downsampler that averages (or LTTB on its
own, which picks the "most visible" point and can skip a one-sample spike) is the wrong tool. MinMax keeps,
for each of ``n`` equal-count buckets, the lowest and the highest point in their original order, so the global
maximum and minimum always survive and the drawn envelope matches the raw one (plotly-resampler's MinMax,
tsdownsample's ``MinMaxDownsampler``, https://github.com/predict-idlab/tsdownsample).

Gaps (``None`` or NaN in ``y``) are kept as gaps: a bucket that is mostly missing readings contributes one
``None`` at the position of its first missing reading, so a chart breaks its line there instead of drawing
across a period when the collector was not sampling. A stray missing reading in an otherwise full bucket is
narrower than a pixel and is not marked (else a probe that fails now and then would shred the line). Runs of
``None`` are folded into one. A series short enough to draw whole keeps every gap.

Figures used by the report (peaks, time above a threshold) come from the raw rows, never from these points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_POINTS", "minmax_downsample"]

MIN_POINTS = 8
"""The smallest ``max_points`` accepted: fewer points cannot draw a shape with both ends and a peak."""

ArrayLike: TypeAlias = "Sequence[float | int | None] | npt.NDArray[np.floating[Any]]"


def minmax_downsample(x: ArrayLike, y: ArrayLike, max_points: int) -> tuple[list[float], list[float | None]]:
    """Reduce ``(x, y)`` to at most ``max_points`` points, keeping every bucket's min and max.

    Args:
        x: positions, in drawing order (time or step). Points whose x is None/NaN are dropped: they cannot be
            placed on an axis.
        y: values; None or NaN mark a gap in the series.
        max_points: upper bound on the returned length (gap markers included), at least ``MIN_POINTS``.

    Returns:
        ``(xs, ys)`` as plain lists (JSON-ready): ``xs`` floats, ``ys`` floats or None at a gap. The first and
        last drawable points, the global maximum and the global minimum are always present, and the order of
        the input is preserved. A series already short enough is returned whole (with NaN turned into None).

    Raises:
        ValueError: if ``x`` and ``y`` differ in length or ``max_points < MIN_POINTS``.
    """
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points must be at least {MIN_POINTS}, got {max_points}")
    xa = _as_float_array(x)
    ya = _as_float_array(y)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.shape[0]} != {ya.shape[0]}")
    placed = ~np.isnan(xa)
    if not placed.all():
        xa, ya = xa[placed], ya[placed]
    n = xa.shape[0]
    if n == 0:
        return [], []

    gap = np.isnan(ya)
    if n <= max_points:
        return _to_lists(xa, ya, np.arange(n), gap)

    valid = np.flatnonzero(~gap)
    if valid.size == 0:
        # Nothing to draw: one gap marker says "there were readings, none of them numbers".
        return [float(xa[0])], [None]
    has_gaps = valid.size != n
    # Each bucket yields its min and max, plus a gap marker when it holds one; two more for the end points.
    per_bucket = 3 if has_gaps else 2
    n_buckets = max(1, (max_points - 2) // per_bucket)
    size = -(-n // n_buckets)  # ceil: equal-count buckets, the last one possibly shorter
    n_buckets = -(-n // size)
    padded = n_buckets * size

    # Pad to a rectangle so argmin/argmax run once over the whole array instead of in a Python loop.
    lo_vals = np.full(padded, np.inf)
    hi_vals = np.full(padded, -np.inf)
    lo_vals[:n] = np.where(gap, np.inf, ya)
    hi_vals[:n] = np.where(gap, -np.inf, ya)
    lo_vals = lo_vals.reshape(n_buckets, size)
    hi_vals = hi_vals.reshape(n_buckets, size)
    base = np.arange(n_buckets) * size
    i_lo = base + lo_vals.argmin(axis=1)
    i_hi = base + hi_vals.argmax(axis=1)
    bucket_has_value = np.isfinite(lo_vals.min(axis=1))

    picks = [i_lo[bucket_has_value], i_hi[bucket_has_value], valid[:1], valid[-1:]]
    if has_gaps:
        gap_padded = np.zeros(padded, dtype=bool)
        gap_padded[:n] = gap
        gap_padded = gap_padded.reshape(n_buckets, size)
        readings = np.full(n_buckets, size)
        readings[-1] = n - (n_buckets - 1) * size  # the last bucket is judged on its real readings only
        bucket_has_gap = gap_padded.sum(axis=1) * 2 >= readings
        first_gap = base + gap_padded.argmax(axis=1)
        picks.append(first_gap[bucket_has_gap])
    idx = np.unique(np.concatenate(picks))  # sorted, so the input order is kept
    return _to_lists(xa, ya, idx, gap)


def _as_float_array(values: ArrayLike) -> npt.NDArray[np.float64]:
    """A float64 array with None as NaN; the fast path skips the per-item None check for clean lists."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).ravel()
    try:
        return np.fromiter(values, dtype=np.float64, count=len(values))
    except TypeError:  # a None in the list: the slower constructor maps it to NaN
        return np.array(values, dtype=np.float64)


def _to_lists(
    xa: npt.NDArray[np.float64],
    ya: npt.NDArray[np.float64],
    idx: npt.NDArray[np.intp],
    gap: npt.NDArray[np.bool_],
) -> tuple[list[float], list[float | None]]:
    """Gather the picked points, turning NaN into None and folding runs of gaps into one marker."""
    if gap.any():
        picked_gap = gap[idx]
        # Drop a gap marker that directly follows another one: one break is enough to stop the line.
        repeat = np.zeros(idx.shape[0], dtype=bool)
        repeat[1:] = picked_gap[1:] & picked_gap[:-1]
        idx = idx[~repeat]
        picked_gap = gap[idx]
        xs: list[float] = xa[idx].tolist()
        ys: list[float | None] = ya[idx].tolist()
        for i in np.flatnonzero(picked_gap).tolist():
            ys[i] = None
        return xs, ys
    return xa[idx].tolist(), ya[idx].tolist()
