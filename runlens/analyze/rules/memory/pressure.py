"""The shared view of memory pressure: how close the run came to running out, in which memory, and whether it
swapped; and the registry of levers, the settings whose saving the memory findings compare.

Every memory rule starts from ``pressure(data)`` (computed once per job). A lever is a function
``(data, pressure) -> Finding | None`` registered with ``@lever(rule_id)``: it runs as its own rule, and the OOM,
peak and swap findings name the lever with the largest measured saving.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule

SWAP_GROWTH_GB = 1.0    # swap grew by more than 1 GB during training
SWAP_IN_GBPS = 1 / 1024  # 1 MiB/s of swap-in counts as activity
SWAP_IN_RUN = 3         # ... for more than 3 consecutive samples
# Memory PSI "full avg10" >= 5: every task stalled on memory 5 % of the last 10 s
# (https://docs.kernel.org/accounting/psi.html); GLib's GMemoryMonitor calls this level critical.
PSI_FULL = 5.0
SLOWDOWN = 1.2          # step time ×1.2 after swap began counts as a slow-down
SUSPECTED = ("exit", "suspected")   # OOM signs that are a SIGKILL, not an allocator's own failure


@dataclass
class Swap:
    growth_gb: float
    swap_in_run: int
    psi_full_max: float | None
    onset: float | None
    slowdown: float | None
    lost_seconds: float | None
    peak_gb: float

    @property
    def triggered(self) -> bool:
        return (self.growth_gb > SWAP_GROWTH_GB or self.swap_in_run > SWAP_IN_RUN
                or (self.psi_full_max is not None and self.psi_full_max >= PSI_FULL))


@dataclass
class Pressure:
    """How close the run came to running out, and in which memory."""

    level: str | None                       # "critical" | "warning" | None
    reasons: list[str] = field(default_factory=list)
    ooms: list[m.OomOccurrence] = field(default_factory=list)
    ram: m.MemorySeries | None = None
    gpu: m.MemorySeries | None = None
    swap: Swap | None = None

    @property
    def domain(self) -> m.MemorySeries | None:
        """The memory that ran out: the OOM's kind, else the fuller of GPU and RAM."""
        if self.ooms:
            kind = self.ooms[0].kind
            if kind == "cuda" and self.gpu is not None:
                return self.gpu
            if kind in ("cpu", "host", "mps") and self.ram is not None:
                return self.ram
        if self.gpu is not None and self.gpu.total and (
                self.ram is None or (self.gpu.peak_ratio or 0) >= (self.ram.peak_ratio or 0)):
            return self.gpu
        return self.ram or self.gpu

    @property
    def oom(self) -> m.OomOccurrence | None:
        real = [o for o in self.ooms if o.source not in SUSPECTED]
        return real[0] if real else (self.ooms[0] if self.ooms else None)


def _swap(data: JobData) -> Swap | None:
    s = data.samples
    used = m.col(s, "swap_used_gb")
    sin = m.col(s, "swap_in_gb_per_s")
    psi = m.col(s, "memory_pressure_full_avg10")
    if not (np.isfinite(used).any() or np.isfinite(sin).any() or np.isfinite(psi).any()):
        return None
    ts = m.col(s, "timestamp")
    steps = m.main_rank_steps(data)
    st_ts = m.finite(m.col(steps, "timestamp"))
    window = np.ones(len(ts), bool)
    if st_ts.size >= 2:
        window = (ts >= st_ts.min() - 30) & (ts <= st_ts.max() + 1)
    base = m.finite(used[window])
    growth = float(base.max() - base[0]) if base.size else 0.0
    active = np.isfinite(sin) & (sin > SWAP_IN_GBPS) & window
    runs = m.runs_of(active)
    longest = max((b - a for a, b in runs), default=0)
    psi_w = m.finite(psi[window])
    onset: float | None = None
    if base.size and growth > SWAP_GROWTH_GB / 4:
        wi = np.nonzero(window & np.isfinite(used) & (used > base[0] + SWAP_GROWTH_GB / 4))[0]
        onset = float(ts[wi[0]]) if wi.size else None
    if runs:
        t_run = float(ts[runs[0][0]])
        onset = t_run if onset is None else min(onset, t_run)
    slowdown = lost = None
    if onset is not None:
        stt, stv = m.col(steps, "timestamp"), m.col(steps, "step_time_seconds")
        before = m.finite(stv[(stt < onset)][5:] if (stt < onset).sum() > 10 else stv[stt < onset])
        after = stv[(stt >= onset) & np.isfinite(stv)]
        if before.size >= 3 and after.size >= 3:
            pre = float(np.median(before))
            if pre > 0:
                slowdown = float(np.median(after)) / pre
                lost = float(np.clip(after - pre, 0, None).sum())
    return Swap(growth, int(longest), float(psi_w.max()) if psi_w.size else None, onset, slowdown, lost,
                float(np.nanmax(used)) if np.isfinite(used).any() else 0.0)


def pressure(data: JobData) -> Pressure:
    """Memory pressure of the run, from OOM signs, peaks against the thresholds (settings: 0.85 / 0.95) and swap."""
    return m.memo(data, "memory_pressure", lambda: _pressure(data))


def _pressure(data: JobData) -> Pressure:
    warn, crit = data.settings.memory_warning_threshold, data.settings.memory_critical_threshold
    p = Pressure(None, ooms=m.oom_occurrences(data), ram=m.ram_series(data), gpu=m.gpu_series(data))
    p.swap = _swap(data)
    levels: list[str] = []
    for o in p.ooms:
        if o.source in SUSPECTED:
            # SIGKILL is the kernel's OOM killer most often, but also a scheduler or a user: only critical
            # when memory was high.
            high = (p.ram and (p.ram.peak_ratio or 0) >= warn) or any(x.source not in SUSPECTED for x in p.ooms)
            levels.append("critical" if high else "warning")
            p.reasons.append("killed by SIGKILL (exit 137)")
        elif o.source == "cgroup":
            # the job's memory cgroup counted the kill: the OOM killer for certain, at the container's limit
            levels.append("critical")
            p.reasons.append("killed by the OOM killer at the container's memory limit")
        else:
            levels.append("critical")
            p.reasons.append(f"{o.kind} out of memory")
    for ser in (p.ram, p.gpu):
        r = ser.peak_ratio if ser else None
        if r is not None and r >= crit:
            levels.append("critical")
            p.reasons.append(f"{ser.kind} memory peaked at {r:.0%}")  # type: ignore[union-attr]
        elif r is not None and r >= warn:
            levels.append("warning")
            p.reasons.append(f"{ser.kind} memory peaked at {r:.0%}")  # type: ignore[union-attr]
    if p.swap and p.swap.triggered:
        levels.append("critical" if p.swap.slowdown is None or p.swap.slowdown >= SLOWDOWN else "warning")
        p.reasons.append("the system swapped")
    p.level = "critical" if "critical" in levels else ("warning" if levels else None)
    return p


def activation_gb(data: JobData, p: Pressure) -> tuple[float | None, m.BatchFit | None]:
    """Memory above the static (model + optimizer) level at the peak: what batch, resolution and checkpointing
    act on."""
    dom = p.domain
    fit = m.batch_memory_fit(data, dom) if dom else None
    bs = m.current_batch_size(data)
    if fit and bs:
        return fit.per_sample_gb * bs, fit
    if dom and dom.peak is not None:
        static = m.static_memory(data, dom)
        if static is not None and dom.peak > static:
            return dom.peak - static, fit
    return None, fit


def lever_finding(data: JobData, p: Pressure, rid: str, title: str, action: str, impact: str,
                  value: float | None, evidence: dict[str, Any], severity: str | None = None,
                  confidence: float = 1.0) -> Finding:
    """A lever's finding: GB saved as its impact, the pressure's reasons in its evidence, and ``memory_lever``
    set so that the analysis can pick one primary lever."""
    ev = {"pressure": p.reasons, **evidence}
    return Finding(id=rid, severity=severity or p.level or "info", title=title, action=action, impact=impact,
                   category="memory", evidence=ev, impact_value=value, impact_unit="GB" if value is not None else None,
                   memory_lever=True, confidence=confidence)


def lever_effect(data: JobData, p: Pressure, saves: float | None, predicted_peak: float | None = None,
                 also: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A lever's expected effect: the binding pool's peak now and with the lever (``predicted_peak`` when the
    run measured it at the recommended value, else the peak minus ``saves``; null when neither is measured).
    On a run that ran out of memory it is a failure effect: fixed when the memory the run needed, less the
    saving, stays under the critical threshold of the limit; still failing when it stays above the limit."""
    dom = p.domain
    cur = dom.peak if dom is not None else None
    pred = predicted_peak if predicted_peak is not None else (
        cur - saves if cur is not None and saves is not None else None)
    mem = effects.effect("peak_memory_gb", cur, pred)
    rest = [mem, *(also or [])]
    o = p.oom
    if o is None:
        return effects.effect("peak_memory_gb", cur, pred, also=also)
    total = (o.details.get("total_capacity_gb") or (dom.total if dom is not None else None))
    if pred is None or not total:
        return effects.failure(None, also=rest)
    tried = o.details.get("tried_to_allocate_gb") or 0.0
    need_now = max(cur or 0.0, total) if o.source in (*SUSPECTED, "cgroup") else (cur or 0.0) + tried
    # A value measured at the recommended setting is the need itself; a saving comes off what failed.
    need = predicted_peak if predicted_peak is not None else need_now - (saves or 0.0)
    crit = data.settings.memory_critical_threshold
    fixed: bool | None = True if need <= crit * total else (False if need > total else None)
    return effects.failure(fixed, also=rest)


# -- levers ------------------------------------------------------------------------------------------------

LeverFn = Callable[[JobData, Pressure], "Finding | None"]
LEVERS: list[LeverFn] = []   # in registration order: the order the memory findings compare them in


def lever(rule_id: str) -> Callable[[LeverFn], Callable[[JobData], list[Finding]]]:
    """Register a lever as rule ``rule_id`` of the memory family, and in ``LEVERS`` for the findings that name
    the best lever. The decorated name is the rule (``JobData -> list[Finding]``)."""

    def register(fn: LeverFn) -> Callable[[JobData], list[Finding]]:
        LEVERS.append(fn)

        def run(data: JobData) -> list[Finding]:
            f = fn(data, pressure(data))
            return [f] if f is not None else []

        run.__doc__ = fn.__doc__
        return rule(rule_id, "memory")(run)  # type: ignore[return-value]

    return register


def quantified_levers(data: JobData, p: Pressure) -> list[Finding]:
    """Every lever that applies and has a quantified saving, those this run measured first, each group by the
    GiB it frees (computed once per job; copies are handed out)."""
    levers = m.memo(data, "memory_levers", lambda: [
        f for f in (b(data, p) for b in LEVERS) if f is not None and f.impact_value is not None])
    ordered = sorted(levers, key=lambda f: (not saving_measured(f), -(f.impact_value or 0.0)))
    return [copy.deepcopy(f) for f in ordered]


def saving_measured(f: Finding) -> bool:
    """The lever's saving comes from this run's measurements (not an upper bound or a model of the network)."""
    return f.evidence.get("saving_measured") is not False


def best_lever(data: JobData, p: Pressure) -> Finding | None:
    """The lever whose measured saving is the largest; None when no lever's saving was measured."""
    levers = [f for f in quantified_levers(data, p) if saving_measured(f)]
    return levers[0] if levers else None


def best_lever_title(data: JobData, p: Pressure) -> str | None:
    """"<title> (<impact>)" of the lever that frees the most, for the peak and swap findings' actions."""
    best = best_lever(data, p)
    return f"{best.title.lower()} ({best.impact})" if best is not None else None
