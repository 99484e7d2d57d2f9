"""Robust statistics over long series: a trailing median baseline, the median absolute deviation, and the runs
of a boolean mask. Vectorised throughout: a series is up to a million steps long.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from runlens.analyze.measures.columns import finite


EXACT_BASELINE_MAX = 20_000   # points; longer series use the block approximation below


def trailing_baseline(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(median, robust σ = IQR / 1.349) of the ``window`` values before each point; NaN while fewer than half
    a window precede it.

    Exact (pandas rolling) up to EXACT_BASELINE_MAX points. Beyond that, rolling medians and quantiles cost
    ~0.5 s per million points each, so the window is cut into 5 blocks: each block's median and IQR are taken
    once (numpy, vectorised) and a point's baseline is the median of the 5 blocks before its own block. The
    window then lags by up to one block (window / 5 points), which does not matter for spikes that must persist.
    """
    n = x.size
    if n <= EXACT_BASELINE_MAX or window < 10:
        past = pd.Series(x).shift(1).rolling(window, min_periods=max(5, window // 2))
        return past.median().to_numpy(), ((past.quantile(0.75) - past.quantile(0.25)) / 1.349).to_numpy()
    b = window // 5
    nb = n // b
    blocks = x[: nb * b].reshape(nb, b)
    med = np.median(blocks, axis=1)
    q75, q25 = np.percentile(blocks, [75, 25], axis=1)
    iqr = (q75 - q25) / 1.349
    k = 5
    base_b = np.full(nb + 1, np.nan)
    sig_b = np.full(nb + 1, np.nan)
    if nb >= k:
        from numpy.lib.stride_tricks import sliding_window_view

        base_b[k:] = np.median(sliding_window_view(med, k), axis=1)
        sig_b[k:] = np.median(sliding_window_view(iqr, k), axis=1)
    idx = np.minimum(np.arange(n) // b, nb)
    return base_b[idx], sig_b[idx]


def robust_mad(a: np.ndarray) -> float:
    f = finite(a)
    if f.size == 0:
        return float("nan")
    return float(np.median(np.abs(f - np.median(f))))


def runs_of(mask: Iterable[bool] | np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where ``mask`` is true (vectorised: masks are a million steps long)."""
    arr = np.asarray(mask if isinstance(mask, np.ndarray) else list(mask), dtype=bool)
    if arr.size == 0:
        return []
    edges = np.diff(np.r_[0, arr.astype(np.int8), 0])
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    return list(zip(starts.tolist(), ends.tolist()))
