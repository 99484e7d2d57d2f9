"""How a diverging run diverged: where the final growth of the gradient norm (or the loss) began, how fast it
grew per step, and at which learning rate; and the learning rate that measurement says is stable.

Gradient descent on a quadratic with curvature ``lam`` multiplies the error by ``|1 - lr * lam|`` each step: it
converges for ``lr * lam < 2`` and is fastest at ``lr * lam = 1`` (LeCun, Bottou, Orr and Mueller, "Efficient
BackProp", 1998, section 5; https://doi.org/10.1007/3-540-49430-8_2). A diverging run shows the error growing
``g = lr * lam - 1`` times a step, in the gradient norm directly and in the loss squared, so the curvature it met
is ``lam = (1 + g) / lr`` and the rate that puts ``lr * lam`` back at 1 is ``lr / (1 + g)``: half the edge of
stability. In a warm-up, the growth began when the rising rate crossed the edge (``lr_onset * lam ~ 2``): half of
that rate is the same target, measured another way, and more directly: it wins when the run has it. Both are
ratios applied to the run's schedule, so a rate that warms up or decays keeps its shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col
from runlens.analyze.measures.timing import main_rank_steps

GROWTH_WINDOW = 10      # the last ratios of the growth: the fastest-growing direction dominates them
MIN_RATIOS = 2          # growth over fewer consecutive steps is not a measurement


@dataclass(frozen=True)
class Divergence:
    onset_index: int                  # index into the main rank's steps where the final growth began
    onset_step: int | None
    growth_per_step: float | None     # g: the factor the error grew by per step (> 1)
    measured_on: str | None           # "gradient_norm" | "loss"
    lr_at_onset: float | None         # the learning rate when the growth began
    lr_during_growth: float | None    # the median learning rate over the measured growth
    lr_peak: float | None             # the highest learning rate the run reached before it diverged

    def scale(self) -> float | None:
        """The factor to apply to the run's learning rate (its schedule's peak) so that the curvature it met is
        taken at ``lr * lam = 1``; None when the growth was not measured.

        A rising schedule that crossed the edge measures it directly (``lr_at_onset``), and that measurement
        wins: the growth rate of the last steps before the blow-up overstates ``lr * lam`` (the explosion is
        faster than geometric once activations saturate), so on the demo's warm-up the growth rule asked for
        a rate 20x lower while half the onset rate (10x higher) trained to the same loss without diverging.
        """
        peak = self.lr_peak
        factors = []
        if self.lr_at_onset and peak and self.lr_at_onset < peak:
            factors.append(self.lr_at_onset / 2.0 / peak)   # a warm-up crossed the edge at lr_at_onset
        elif self.growth_per_step is not None:
            # Without a recorded rate it was constant: the rate during the growth is the peak.
            during = self.lr_during_growth / peak if self.lr_during_growth and peak else 1.0
            factors.append(during / (1.0 + self.growth_per_step))
        if not factors:
            return None
        return min(0.5, *factors)   # a run that diverged needs at least half its rate


def divergence(data: JobData, end: int) -> Divergence | None:
    """The growth before index ``end`` (the first non-finite value, or the end of a run that diverged without
    one) of the main rank's steps."""
    steps = main_rank_steps(data)
    grad, loss = col(steps, "gradient_norm")[:end], col(steps, "loss")[:end]
    lr, sn = col(steps, "learning_rate")[:end], col(steps, "step")[:end]
    measured_on, growth, onset = None, None, None
    for name, series, power in (("gradient_norm", grad, 1.0), ("loss", loss, 0.5)):
        run = _trailing_growth(series)
        if run is not None:
            onset, ratios = run
            growth = float(np.exp(np.median(np.log(ratios[-GROWTH_WINDOW:])) * power))
            measured_on = name
            break
    if onset is None:
        return None
    fin = np.isfinite(lr)
    lr_at = float(lr[onset]) if onset < lr.size and fin[onset] else None
    tail = lr[max(onset, end - GROWTH_WINDOW):end]
    lr_during = float(np.median(tail[np.isfinite(tail)])) if np.isfinite(tail).any() else None
    lr_peak = float(lr[fin].max()) if fin.any() else None
    step = int(sn[onset]) if onset < sn.size and np.isfinite(sn[onset]) else None
    return Divergence(onset, step, growth if growth is not None and growth > 1 else None, measured_on,
                      lr_at, lr_during, lr_peak)


def _trailing_growth(x: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(start index, per-step ratios) of the run of growing values that ends the series (at least
    MIN_RATIOS ratios long, positive finite values only)."""
    n = x.size
    i = n - 1
    while i >= 0 and not (np.isfinite(x[i]) and x[i] > 0):
        i -= 1
    end = i
    while i > 0 and np.isfinite(x[i - 1]) and x[i - 1] > 0 and x[i] > x[i - 1]:
        i -= 1
    if end - i < MIN_RATIOS:
        return None
    seg = x[i:end + 1]
    return i, seg[1:] / seg[:-1]


def floor_lr(x: float) -> float:
    """``x`` rounded down to two significant digits, as a person writes a learning rate (never up: a rounded
    rate must not land back above the measured one)."""
    if x <= 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x)) - 1
    return float(f"{math.floor(x / 10 ** e + 1e-9) * 10 ** e:.3g}")
