"""The batch sizes a run actually used, and the batch size to recommend when memory ran out or nearly did.

A config snapshot holds the batch size a run started with; a run that ramps its batch (a batch-size finder, a
schedule, ``auto_find_batch_size``) used others, and the steps record each (``batch_size`` on a step, and a
``batch_size_changed`` event when it changes). The recommendation rests on those:

* never "reduce" to a batch at or above the one that failed, and never below one that ran when the next failed;
* when an out-of-memory came after the last step of a ramp (each batch size ran its full share of steps, and the
  next never recorded one), the batch that failed is the ramp's next, and the largest that ran is the answer;
* otherwise the measured memory-vs-batch relation (``batchfit``) gives the largest batch under THETA of the
  limit, rounded down to a multiple of 8, or to the largest batch that ran when that is closer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.batchfit import THETA, BatchFit, batch_memory_fit, batch_peaks
from runlens.analyze.measures.columns import col, memo
from runlens.analyze.measures.memory import MemorySeries
from runlens.analyze.measures.timing import main_rank_steps


@dataclass(frozen=True)
class Segment:
    """Consecutive steps at one batch size."""

    batch_size: int
    steps: int
    first: float
    last: float


def batch_segments(data: JobData) -> list[Segment]:
    """The main rank's steps as runs of one batch size, in time order."""
    return memo(data, "batch_segments", lambda: _segments(data))


def _segments(data: JobData) -> list[Segment]:
    steps = main_rank_steps(data)
    bs, ts = col(steps, "batch_size"), col(steps, "timestamp")
    ok = np.isfinite(bs) & np.isfinite(ts) & (bs > 0)
    bs, ts = bs[ok].astype(int), ts[ok]
    order = np.argsort(ts, kind="stable")
    bs, ts = bs[order], ts[order]
    out: list[Segment] = []
    start = 0
    for i in range(1, bs.size + 1):
        if i == bs.size or bs[i] != bs[start]:
            out.append(Segment(int(bs[start]), i - start, float(ts[start]), float(ts[i - 1])))
            start = i
    return out


def round_batch(x: int, ran: list[int]) -> int:
    """``x`` rounded down to a multiple of 8 (kept as is below 8), or the largest batch that ran at or under
    ``x`` when that is larger: a number a person would write, or one known to work."""
    r = x - x % 8 if x >= 8 else x
    known = [b for b in ran if r < b <= x]
    return max(known) if known else r


@dataclass(frozen=True)
class BatchChoice:
    """The batch size to recommend, and what this run measured about it."""

    current: int                      # the batch that failed or peaked (the ramp's next one when inferred)
    inferred: bool                    # current never recorded a step: it is the ramp's next batch
    last_ran: int                     # the batch of the last recorded step
    largest_ok: int | None            # the largest batch that ran below the one that failed
    recommended: int
    basis: str                        # "ran" (it ran in this run) | "fit" (the measured relation) | "halved"
    predicted_peak_gb: float | None   # peak memory at the recommended batch: measured when it ran, else fitted
    fit: BatchFit | None


def choose_batch(data: JobData, series: MemorySeries | None, failed_at: float | None,
                 theta: float = THETA, need_gb: float | None = None) -> BatchChoice | None:
    """The batch size to recommend. ``failed_at``: when the run ran out of memory (None when it only came
    close); ``need_gb``: what the failing batch needed, where the failure says (the peak plus the allocation
    that failed, or the limit for a kill). None when the steps recorded no batch size, or when no smaller batch
    is called for."""
    segs = batch_segments(data)
    if not segs:
        return None
    last = segs[-1]
    ran = sorted({s.batch_size for s in segs})
    peaks = batch_peaks(data, series) if series is not None else {}
    fit = batch_memory_fit(data, series) if series is not None else None

    def peak_at(b: int) -> float | None:
        if b in peaks:
            return peaks[b]
        return fit.predict(b) if fit is not None else None

    if failed_at is not None:
        prev = segs[-2] if len(segs) >= 2 else None
        ramp = (prev is not None and last.batch_size > prev.batch_size and failed_at > last.last
                and last.steps >= prev.steps)
        if ramp:
            assert prev is not None
            nxt = round(last.batch_size * last.batch_size / prev.batch_size)
            return BatchChoice(nxt, True, last.batch_size, last.batch_size, last.batch_size, "ran",
                               peak_at(last.batch_size), fit)
        smaller = [b for b in ran if b < last.batch_size]
        largest_ok = max(smaller) if smaller else None
        bs_max = fit.max_batch(theta) if fit is not None else 0
        if fit is not None and need_gb is not None and need_gb > fit.predict(last.batch_size):
            # The failing batch needed more than the relation says (the allocation that failed on top of the
            # peak the samples saw): size the batch by what it really needed a sample.
            per = (need_gb - fit.static_gb) / last.batch_size
            bs_max = math.floor((theta * fit.total_gb - fit.static_gb) / per) if per > 0 else 0
        if fit is not None and 1 <= bs_max < last.batch_size:
            cand, basis = bs_max, "fit"
        else:   # no relation measured, or it says the batch fits (the OOM came from elsewhere): halve
            cand, basis = last.batch_size // 2, "halved"
        rec = round_batch(max(cand, 1), ran)
        if largest_ok is not None and rec < largest_ok:
            rec = largest_ok
        rec = min(rec, last.batch_size - 1)
        if rec < 1:
            return None
        return BatchChoice(last.batch_size, False, last.batch_size, largest_ok, rec,
                           "ran" if rec in peaks else basis, peak_at(rec), fit)
    if fit is None:
        return None
    bs_max = fit.max_batch(theta)
    if bs_max >= last.batch_size or bs_max < 1:
        return None
    rec = round_batch(bs_max, ran)
    return BatchChoice(last.batch_size, False, last.batch_size, None, rec, "ran" if rec in peaks else "fit",
                       peak_at(rec), fit)
