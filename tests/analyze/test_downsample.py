"""minmax_downsample: bounded output that keeps peaks, order, ends and gaps."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from runlens.analyze.downsample import MIN_POINTS, minmax_downsample


def _noisy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=float)
    y = np.sin(x / 5000.0) * 10 + rng.random(n)
    return x, y


def test_short_series_is_returned_whole_with_nan_as_none() -> None:
    xs, ys = minmax_downsample([0, 1, 2, 3], [1.5, float("nan"), 2.5, 4.0], 100)
    assert xs == [0.0, 1.0, 2.0, 3.0]
    assert ys == [1.5, None, 2.5, 4.0]


def test_short_series_folds_consecutive_gaps() -> None:
    xs, ys = minmax_downsample([0, 1, 2, 3], [1.5, float("nan"), None, 4.0], 100)
    assert list(zip(xs, ys)) == [(0.0, 1.5), (1.0, None), (3.0, 4.0)]


def test_output_never_exceeds_max_points() -> None:
    x, y = _noisy(100_003)
    for max_points in (MIN_POINTS, 9, 10, 101, 1000, 1999, 2000):
        xs, ys = minmax_downsample(x, y, max_points)
        assert len(xs) == len(ys) <= max_points


def test_output_never_exceeds_max_points_with_gaps() -> None:
    x, y = _noisy(50_000)
    y[::3] = np.nan
    for max_points in (MIN_POINTS, 11, 500, 2000):
        xs, ys = minmax_downsample(x, y, max_points)
        assert len(xs) == len(ys) <= max_points


def test_keeps_global_max_and_min_exactly() -> None:
    x, y = _noisy(200_000, seed=3)
    y[123_457] = 99.25  # a one-sample spike: what an averaging downsampler would lose
    y[7] = -42.5
    xs, ys = minmax_downsample(x, y, 500)
    assert max(v for v in ys if v is not None) == 99.25
    assert min(v for v in ys if v is not None) == -42.5
    assert xs[ys.index(99.25)] == 123_457.0
    assert xs[ys.index(-42.5)] == 7.0


def test_keeps_first_and_last_points_and_order() -> None:
    x, y = _noisy(10_000)
    xs, ys = minmax_downsample(x, y, 100)
    assert xs[0] == 0.0 and ys[0] == y[0]
    assert xs[-1] == 9_999.0 and ys[-1] == y[-1]
    assert xs == sorted(xs)
    assert len(set(xs)) == len(xs)


def test_preserves_input_order_when_x_is_not_sorted() -> None:
    """x is not sorted by the downsampler: a chart draws in the order it was recorded."""
    x = np.arange(5000, dtype=float)[::-1].copy()
    y = np.arange(5000, dtype=float)
    xs, ys = minmax_downsample(x, y, 50)
    assert xs == sorted(xs, reverse=True)
    assert ys == sorted(v for v in ys if v is not None)


def test_every_point_comes_from_the_input() -> None:
    x, y = _noisy(30_000)
    pairs = set(zip(x.tolist(), y.tolist()))
    xs, ys = minmax_downsample(x, y, 300)
    assert all((a, b) in pairs for a, b in zip(xs, ys))


def test_long_gap_is_kept_as_one_none() -> None:
    x, y = _noisy(100_000)
    y[40_000:50_000] = np.nan  # the collector stopped for 10% of the run
    xs, ys = minmax_downsample(x, y, 1000)
    gaps = [xs[i] for i, v in enumerate(ys) if v is None]
    assert len(gaps) == 1
    assert 39_000 <= gaps[0] <= 50_000
    # The line resumes after the gap.
    assert any(v is not None and a > 50_000 for a, v in zip(xs, ys))


def test_stray_missing_readings_do_not_shred_the_line() -> None:
    x, y = _noisy(100_000)
    y[::997] = np.nan
    _, ys = minmax_downsample(x, y, 1000)
    assert ys.count(None) == 0


def test_none_in_python_lists() -> None:
    x, y = _noisy(20_000)
    y_list: list[float | None] = y.tolist()
    for i in range(5_000, 9_000):
        y_list[i] = None
    xs, ys = minmax_downsample(x.tolist(), y_list, 400)
    assert ys.count(None) == 1
    assert len(xs) <= 400


def test_points_without_x_are_dropped() -> None:
    xs, ys = minmax_downsample([0.0, None, 2.0], [1.0, 2.0, 3.0], 10)
    assert xs == [0.0, 2.0] and ys == [1.0, 3.0]


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ([], [], ([], [])),
        ([5.0], [1.0], ([5.0], [1.0])),
        ([5.0], [None], ([5.0], [None])),
    ],
)
def test_empty_and_single_point(x: list, y: list, expected: tuple) -> None:
    assert minmax_downsample(x, y, 10) == expected


def test_all_missing_long_series_is_one_gap() -> None:
    xs, ys = minmax_downsample(list(range(10_000)), [None] * 10_000, 100)
    assert xs == [0.0] and ys == [None]


def test_result_is_plain_json_types() -> None:
    x, y = _noisy(5_000)
    xs, ys = minmax_downsample(x.astype(np.float32), y, 100)
    assert all(type(v) is float for v in xs)
    assert all(v is None or (type(v) is float and math.isfinite(v)) for v in ys)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_points"):
        minmax_downsample([1.0], [1.0], MIN_POINTS - 1)
    with pytest.raises(ValueError, match="differ in length"):
        minmax_downsample([1.0, 2.0], [1.0], 100)


def test_a_million_points_is_fast() -> None:
    """A 24 h run at 10 steps/s; the report must not wait on drawing prep (budget: well under 100 ms)."""
    x, y = _noisy(1_000_000)
    y[10_000:20_000] = np.nan
    minmax_downsample(x[:1000], y[:1000], 100)  # warm up numpy's first-call costs
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        xs, _ = minmax_downsample(x, y, 2000)
        best = min(best, time.perf_counter() - t0)
    assert len(xs) <= 2000
    assert best < 0.1, f"{best * 1000:.0f} ms"
