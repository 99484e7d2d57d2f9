"""Training-dynamics rules: divergence, loss spikes, a loss that does not go down, gradient-norm trouble.

Per-step losses are noisy (diffusion losses depend on a random timestep), so every rule works on a robust
baseline: a trailing median and an inter-quartile spread, and a deviation must persist for several steps before
it counts (llm-foundry's KillLossSpike patience,
https://github.com/mosaicml/llm-foundry/blob/main/llmfoundry/callbacks/kill_loss_spike_callback.py, and
OLMo-core's 6σ rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.divergence import divergence, floor_lr
from runlens.analyze.registry import rule
from runlens.core.dialects import AITOOLKIT

SPIKE_RATIO = 2.0        # llm-foundry: loss ≥ 2× the running mean (here: median)
SPIKE_SIGMAS = 6.0       # OLMo-core: > mean + 6σ over the window (here: a robust σ from the IQR)
SPIKE_PATIENCE = 5       # llm-foundry: more than 4 consecutive outliers
RECOVERY_STEPS = 200     # a spike without recovery within 200 steps is critical
MANY_SPIKES = 3          # ≥ 3 spikes are a warning
RISING = 1.5             # late median ≥ 1.5× early median = the loss went up
CLIP_SATURATION = 0.5    # > 50 % of steps above max_grad_norm ...
CLIP_TAIL = 0.2          # ... over the last 20 % of steps
GRAD_SPIKES = 3


def _fmt_lr(x: float) -> float:
    """A learning rate rounded to two significant digits, as a user would write it."""
    return float(f"{x:.2g}")


def nonfinite(steps: pd.DataFrame, column: str) -> np.ndarray:
    """Rows where ``column`` was NaN/±inf when logged.

    SQLite stores NaN as NULL, so a NaN is known only from the Monitor's ``extras["nonfinite"]`` marker
    (``x_nonfinite`` after loading); ±inf survive as floats.
    """
    vals = m.col(steps, column)
    mask = np.isinf(vals)
    if "x_nonfinite" in steps.columns:
        marks = steps["x_nonfinite"]
        present = np.nonzero(marks.notna().to_numpy())[0]
        if present.size:
            vals = marks.to_numpy(dtype=object)[present]
            mask[present[[isinstance(d, dict) and column in d for d in vals]]] = True
    for extra in (f"x_nonfinite.{column}", f"x_{column}_nonfinite"):
        if extra in steps.columns:
            mask |= steps[extra].notna().to_numpy() & (steps[extra].astype(str) != "False").to_numpy()
    out: np.ndarray = mask
    return out


def _nonfinite_text(steps: pd.DataFrame, i: int, column: str) -> str:
    if "x_nonfinite" in steps.columns:
        d = steps["x_nonfinite"].iloc[i]
        if isinstance(d, dict) and column in d:
            return str(d[column])
    v = m.col(steps, column)[i]
    return "inf" if v > 0 else "-inf" if v < 0 else "nan"


@dataclass
class Episode:
    start: int          # index into the finite-loss arrays
    end: int            # exclusive
    baseline: float
    peak_ratio: float
    recovered: bool


def loss_episodes(loss: np.ndarray) -> list[Episode]:
    """Persistent loss spikes: ≥ SPIKE_PATIENCE consecutive values ≥ 2× the trailing median and above it by
    6 robust σ. ``recovered`` when the loss came back under 1.5× the pre-spike baseline within RECOVERY_STEPS."""
    n = loss.size
    w = int(min(100, max(10, n // 10)))
    if n < w + SPIKE_PATIENCE:
        return []
    base, sigma = m.trailing_baseline(loss, w)
    dev = loss - base
    out = np.isfinite(base) & (dev >= np.maximum(np.abs(base) * (SPIKE_RATIO - 1), SPIKE_SIGMAS * sigma)) & (dev > 0)
    episodes: list[Episode] = []
    for a, b in m.runs_of(out):
        if b - a < SPIKE_PATIENCE:
            continue
        if episodes and a - episodes[-1].end < SPIKE_PATIENCE:
            prev = episodes.pop()
            a = prev.start
        b0 = float(base[a])
        peak = float(np.max(loss[a:b]))
        after = loss[b:b + RECOVERY_STEPS]
        recovered = bool(after.size and (after < b0 + abs(b0) * 0.5).any())
        episodes.append(Episode(a, b, b0, peak / b0 if b0 > 0 else math.inf, recovered))
    return episodes


def _episodes(data: JobData) -> list[Episode]:
    """loss_episodes of the run's finite losses, computed once for the three rules that need them."""
    return m.memo(data, "loss_episodes", lambda: loss_episodes(_finite_loss(data)[2]))


def _finite_loss(data: JobData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, timestamp, loss) of the main rank's finite losses."""
    return m.memo(data, "finite_loss", lambda: _finite_loss_(data))


def _finite_loss_(data: JobData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = m.main_rank_steps(data)
    loss, sn, ts = m.col(steps, "loss"), m.col(steps, "step"), m.col(steps, "timestamp")
    ok = np.isfinite(loss)
    return sn[ok], ts[ok], loss[ok]


def _lr_ref(data: JobData, index: int | None = None) -> tuple[Any, Any, float | None]:
    """(ConfigRef of the learning rate, measured lr at ``index`` or last, the lr to start from)."""
    ref = resolve(data, "learning_rate")
    lr = m.col(m.main_rank_steps(data), "learning_rate")
    fin = np.isfinite(lr)
    measured = None
    if fin.any():
        if index is not None and index < lr.size and fin[: index + 1].any():
            measured = float(lr[: index + 1][fin[: index + 1]].max())   # the peak lr up to that step
        else:
            measured = float(lr[fin].max())
    base = ref.current_value if ref.source == "config" and isinstance(ref.current_value, (int, float)) \
        and not isinstance(ref.current_value, bool) else measured
    if base is None and isinstance(ref.current_value, (int, float)):
        base = float(ref.current_value)
    return ref, measured, float(base) if base else None


def _is_fp16(data: JobData) -> bool:
    prec = resolve(data, "precision").current_value
    fp16 = resolve(data, "fp16").current_value if data.dialect == "huggingface" else None
    return fp16 is True or str(prec).lower() in ("fp16", "float16", "16", "16-mixed", "16-true", "half")


# -- NaN/Inf -----------------------------------------------------------------------------------------------

@rule("training.nonfinite", "training")
def nonfinite_loss(data: JobData) -> list[Finding]:
    """The loss (or the gradient norm) became NaN/Inf: the run diverged."""
    steps = m.main_rank_steps(data)
    bad_loss = nonfinite(steps, "loss") if len(steps) else np.zeros(0, bool)
    bad_grad = nonfinite(steps, "gradient_norm") if len(steps) else np.zeros(0, bool)
    logs = [lf for lf in data.log_findings if getattr(lf, "category", None) == "nan_loss"]
    if not bad_loss.any() and not bad_grad.any():
        return []   # a NaN seen only in the log is reported by logs.nan_loss
    fp16 = _is_fp16(data)
    if not bad_loss.any() and fp16 and bad_grad.mean() < 0.05:
        return []   # fp16 loss scaling skips overflowing steps by design; logs.fp16_overflow covers a collapse
    bad = bad_loss | bad_grad
    i = int(np.nonzero(bad)[0][0])
    what = "loss" if bad_loss[i] else "gradient norm"
    step = int(m.col(steps, "step")[i])
    t = float(m.col(steps, "timestamp")[i])
    n = len(steps)
    loss = m.col(steps, "loss")
    before = loss[:i][np.isfinite(loss[:i])]
    ev: dict[str, Any] = {"step": step, "timestamp": t, "quantity": what,
                          "value": _nonfinite_text(steps, i, "loss" if what == "loss" else "gradient_norm"),
                          "steps_recorded": n, "nonfinite_steps": int(bad.sum()),
                          "last_finite_losses": [float(x) for x in before[-5:]], "log_mentions": len(logs)}
    sn = _finite_loss(data)[0]
    eps = [e for e in _episodes(data) if not e.recovered]
    onset = None
    if eps and sn[eps[-1].start] <= step:
        onset = int(sn[eps[-1].start])
        ev["diverging_since_step"] = onset
        ev["baseline_loss"] = eps[-1].baseline
    grad = m.col(steps, "gradient_norm")
    if np.isfinite(grad[:i]).any():
        ev["last_finite_gradient_norm"] = float(grad[:i][np.isfinite(grad[:i])][-1])
    ref, measured, lr = _lr_ref(data, i)
    ev["learning_rate_at_step"] = measured
    impact = f"Diverged at step {step} of {int(m.col(steps, 'step')[-1])}"
    if onset is not None and onset < step:
        impact += f" (loss climbing since step {onset})"
    f = Finding(id="training.nonfinite", severity="critical",
                title=f"Training diverged ({what} {ev['value']} at step {step})", action="",
                impact=impact, category="training", evidence=ev, impact_value=float(n - i), impact_unit="steps")
    # Diverging in the first tenth of the run, with no growth to measure, means the rate is far too high: 10×.
    fallback = 10 if i <= max(10, n // 10) else 2
    return _lower_lr(data, f, i, fallback, "; or switch fp16 to bf16." if fp16 else ".")


def _lower_lr(data: JobData, f: Finding, end: int, fallback: float, tail: str) -> list[Finding]:
    """Set ``f``'s learning rate from what the run measured before it diverged (runlens.analyze.measures.
    divergence): the growth per step and the rate at which it began, applied to the run's configured rate.
    Without a measured growth, ``fallback``× lower, and no prediction. Offers gradient clipping beside it when
    the config has it off."""
    ref, measured, lr = _lr_ref(data, end)
    div = divergence(data, end)
    scale = div.scale() if div is not None else None
    ev = f.evidence
    if div is not None:
        ev.update(growth_onset_step=div.onset_step, growth_per_step=div.growth_per_step,
                  growth_measured_on=div.measured_on, learning_rate_at_onset=div.lr_at_onset,
                  learning_rate_during_growth=div.lr_during_growth)
    clip = _clipping_off(data)
    if scale is not None:
        ev["learning_rate_scale"] = scale
        how = (f"the {div.measured_on.replace('_', ' ')} grew ×{div.growth_per_step:.3g} a step"  # type: ignore[union-attr]
               if div is not None and div.growth_per_step is not None and div.measured_on else "the growth")
        rate_text = f"{lr:g} -> {floor_lr(lr * scale):g}" if lr else f"{scale:.2g}× of what it was"
        f.action = (f"Lower the learning rate ({rate_text}): {how}, which puts the rate at about half the "
                    f"stable limit{tail}")
        f.expected_effect = effects.failure(True)
    else:
        scale = 1.0 / fallback
        f.action = (f"Lower the learning rate {fallback:g}× (no growth was measured to size it) and keep gradient "
                    f"clipping on{tail}")
        f.expected_effect = effects.failure(None)
    out = [apply_ref(f, ref, floor_lr(lr * scale), measured=measured) if lr else f]
    if clip is not None:
        out.append(clip)
    return out


def _clipping_off(data: JobData) -> Finding | None:
    """Gradient clipping at max_grad_norm 1.0 when the config has none (the Hugging Face Trainer's default,
    https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments): a bound on
    each update's size, so one large gradient cannot throw the weights off."""
    ref = resolve(data, "max_grad_norm")
    v = ref.current_value
    off = v is None or v is False or (isinstance(v, (int, float)) and (v <= 0 or not math.isfinite(v)))
    if not off or (ref.source == "unknown" and data.dialect != "generic"):
        return None
    f = Finding(id="training.clipping", severity="warning", title="Gradient clipping is off",
                action="Clip the gradient norm at 1.0, beside the lower learning rate.",
                impact="Bounds each update's size; how much it alone would have held this run back was not measured",
                category="training", evidence={}, expected_effect=effects.failure(None), confidence=0.7)
    return apply_ref(f, ref, 1.0)


# -- loss spikes -------------------------------------------------------------------------------------------

@rule("training.loss_spikes", "training")
def loss_spikes(data: JobData) -> list[Finding]:
    """Persistent loss spikes against a robust trailing baseline; critical when the last one never
    recovered (divergence without NaN), warning for ≥ 3, info for one or two that recovered."""
    sn, ts, loss = _finite_loss(data)
    eps = _episodes(data)
    if not eps:
        return []
    steps = m.main_rank_steps(data)
    bad = nonfinite(steps, "loss") if len(steps) else np.zeros(0, bool)
    if bad.any():
        first_bad = float(m.col(steps, "step")[int(np.nonzero(bad)[0][0])])
        eps = [e for e in eps if e.recovered or sn[e.start] > first_bad]   # that one is training.nonfinite's
        if not eps:
            return []
    last = eps[-1]
    tail = loss[-SPIKE_PATIENCE:]
    # Diverged: the last spike never came back and the run ended still ≥ 2× that spike's baseline.
    diverged = not last.recovered and last.baseline > 0 and float(np.median(tail)) >= SPIKE_RATIO * last.baseline
    if diverged:
        sev = "critical"
    elif len(eps) >= MANY_SPIKES or not last.recovered:
        sev = "warning"
    else:
        sev = "info"
    worst = max(eps, key=lambda e: e.peak_ratio)
    ev = {"spikes": [{"step": int(sn[e.start]), "end_step": int(sn[min(e.end, sn.size - 1)]),
                      "baseline": e.baseline, "peak_ratio": e.peak_ratio, "recovered": e.recovered,
                      "timestamp": float(ts[e.start])} for e in eps[:20]],
          "count": len(eps), "diverged": diverged}
    ref, measured, lr = _lr_ref(data, last.start)
    title = (f"Loss diverged from step {int(sn[last.start])}" if diverged
             else f"Loss spikes detected ({len(eps)})")
    f = Finding(id="training.loss_spikes", severity=sev, title=title,
                action=("Lower the learning rate 2× (or lengthen the warm-up); restart from a checkpoint before "
                        "the spike." if sev != "info" else "Watch for more; they recovered on their own."),
                impact=f"{len(eps)} spike(s); worst ×{worst.peak_ratio:.1f} at step {int(sn[worst.start])}",
                category="training", evidence=ev, impact_value=float(worst.peak_ratio), impact_unit="x",
                expected_effect=effects.effect("loss_spikes", len(eps), None, "count"))
    if diverged:
        return _lower_lr(data, f, len(steps), 2, "; restart from a checkpoint before the spike.")
    if sev != "info" and _loss_trend(data) == "flat":
        # Spikes on a loss that no longer falls: a lower rate would slow it further.
        f.action = "Lengthen the warm-up or clip the gradient norm at 1.0 to absorb the spikes."
        return [f]
    if lr and sev != "info":
        return [apply_ref(f, ref, _fmt_lr(lr / 2), measured=measured)]
    return [f]


# -- loss not decreasing -----------------------------------------------------------------------------------

@rule("training.loss_not_decreasing", "training")
def loss_not_decreasing(data: JobData) -> list[Finding]:
    """The late-run median loss is not below the early-run median (robust windows of 10 % of the run)."""
    sn, _, loss = _finite_loss(data)
    n = loss.size
    if n < 50:
        return []
    steps = m.main_rank_steps(data)
    if len(steps) and nonfinite(steps, "loss").any():
        return []   # training.nonfinite says more
    eps = _episodes(data)
    if eps and not eps[-1].recovered:
        return []   # training.loss_spikes says more
    w = max(5, n // 10)
    skip = min(w // 2, 10)   # the very first steps are often far above the rest (initialisation)
    early = float(np.median(loss[skip:skip + w]))
    late = float(np.median(loss[-w:]))
    if early == 0:
        return []
    ratio = late / early if early > 0 else math.inf
    if ratio >= RISING:
        sev = "warning"
    elif ratio >= 0.98 and data.dialect != AITOOLKIT:
        sev = "info"   # diffusion losses stay flat by nature, so ai-toolkit runs are not flagged
    else:
        return []
    ev = {"early_median": early, "late_median": late, "ratio": ratio, "window_steps": w,
          "early_steps": [int(sn[skip]), int(sn[min(skip + w, n) - 1])], "late_steps": [int(sn[-w]), int(sn[-1])]}
    f = Finding(id="training.loss_not_decreasing", severity=sev,
                title="Loss went up over the run" if sev == "warning" else "Loss is not decreasing",
                action=("Lower the learning rate 2× and check the data (labels, shuffling, captions)."
                        if sev == "warning" else "Check the learning rate, the data and that the right "
                        "parameters are trainable."),
                impact=f"Median loss {early:.4g} early vs {late:.4g} late (×{ratio:.2f})", category="training",
                evidence=ev, impact_value=ratio, impact_unit="x", confidence=0.7,
                expected_effect=effects.effect("loss_ratio", ratio, None, "x"))
    ref, measured, lr = _lr_ref(data)
    if sev == "warning" and lr:
        return [apply_ref(f, ref, _fmt_lr(lr / 2), measured=measured)]
    return [f]


# -- gradient norm -----------------------------------------------------------------------------------------

@rule("training.gradient_norm", "training")
def gradient_norm(data: JobData) -> list[Finding]:
    """The gradient norm is clipped on most late steps, or spikes repeatedly (6 robust σ and ≥ 3× the
    trailing median). Severity follows the loss: clipping while the loss still falls is clipping at work
    (information); a lower learning rate is only advised while the loss rises, never while it is flat."""
    steps = m.main_rank_steps(data)
    g = m.col(steps, "gradient_norm")
    sn = m.col(steps, "step")
    ok = np.isfinite(g)
    if ok.sum() < 20:
        return []
    g, sn = g[ok], sn[ok]
    ev: dict[str, Any] = {"max_gradient_norm": float(g.max()), "median_gradient_norm": float(np.median(g))}
    problems: list[str] = []
    clip_ref = resolve(data, "max_grad_norm")
    clip = clip_ref.current_value
    frac = None
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0:
        tail = g[-max(5, int(len(g) * CLIP_TAIL)):]
        frac = float((tail > clip).mean())
        ev.update(max_grad_norm=float(clip), clipped_share_last_20pct=frac)
        if frac > CLIP_SATURATION:
            problems.append(f"{frac:.0%} of late steps clipped at {clip:g}")
    w = int(min(128, max(10, len(g) // 10)))
    base, sigma = m.trailing_baseline(g, w)
    spike = np.isfinite(base) & (g > base + SPIKE_SIGMAS * sigma) & (g > 3 * base)
    # Count separate spikes, not spiking steps: a lasting level shift is one event, not many.
    spikes = m.runs_of(spike)
    if len(spikes) >= GRAD_SPIKES:
        problems.append(f"{len(spikes)} gradient-norm spikes")
        ev["spike_steps"] = [int(sn[a]) for a, _ in spikes[:20]]
    if not problems:
        return []
    clipped = "clipped" in problems[0]
    trend = _loss_trend(data)
    ev["loss_trend"] = trend
    ref, measured, lr = _lr_ref(data)
    title = "Gradient norm " + ("always clipped" if clipped else "unstable")
    impact = "; ".join(problems) + f"; max norm {g.max():.3g}"
    eff = (effects.effect("clipped_share", frac, None, "ratio") if clipped
           else effects.effect("gradient_spikes", len(spikes), None, "count"))
    f = Finding(id="training.gradient_norm", severity="warning", title=title, action="", impact=impact,
                category="training", evidence=ev, expected_effect=eff,
                impact_value=(frac or 0.0) * 100 if clipped else float(len(spikes)),
                impact_unit="percent_steps" if clipped else "spikes")
    if trend == "rising" or (trend is None and not clipped):
        f.action = "Lower the learning rate 2× or lengthen the warm-up; keep max_grad_norm at 1.0."
        return [apply_ref(f, ref, _fmt_lr(lr / 2), measured=measured)] if lr else [f]
    if trend == "falling" and clipped:
        f.severity = "info"
        f.action = ("Clipping bounds most late updates and the loss still falls: clipping at work, nothing to "
                    "change. Raise max_grad_norm only if progress stalls.")
        return [f]
    if clipped:
        f.severity = "info"
        f.action = ("The loss is flat while most updates are clipped: a lower learning rate would slow it further. "
                    "Check the schedule, the data and which parameters train.")
        return [f]
    f.action = ("Lengthen the warm-up or clip at 1.0 to absorb the spikes" + (
        "; a lower learning rate would slow a loss that is already flat." if trend == "flat" else "."))
    return [f]


def _loss_trend(data: JobData) -> str | None:
    """"falling", "flat" or "rising" from the early and late median loss (as ``loss_not_decreasing`` compares
    them), "rising" too when a spike never recovered; None with too few losses."""
    _, _, loss = _finite_loss(data)
    n = loss.size
    if n < 20:
        return None
    eps = _episodes(data)
    if eps and not eps[-1].recovered:
        return "rising"
    w = max(5, n // 10)
    skip = min(w // 2, 10)
    early, late = float(np.median(loss[skip:skip + w])), float(np.median(loss[-w:]))
    if early <= 0:
        return None
    ratio = late / early
    return "rising" if ratio >= RISING else "flat" if ratio >= 0.98 else "falling"
