"""Memory rules: what ran out, when, and the lever that frees the most (research/analysis.md §5.3 M1-M15).

The diagnosis rules (OOM, peak vs total, swap) say what happened; the lever rules (workers, batch size,
quantization, EMA, gradient checkpointing, resolution, sampling peak, allocator fragmentation) each say how much
one setting would free, computed from this run's measurements (§5.2). Levers only fire when memory was under
pressure, so a healthy run gets none of them; they set ``memory_lever`` so the analysis marks the one with the
largest feasible saving as primary and the others as alternatives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.core.dialects import AITOOLKIT, HUGGINGFACE, LIGHTNING

THETA = 0.85            # safety factor of the batch-size formula (§5.2; accelerate shrinks by 0.9)
SWAP_GROWTH_GB = 1.0    # §5.3 M3: Δswap_used > 1 GB during training
SWAP_IN_GBPS = 1 / 1024  # 1 MiB/s of swap-in counts as activity
SWAP_IN_RUN = 3         # ... for more than 3 consecutive samples
PSI_FULL = 5.0          # §3.2: "full avg10 ≥ 5" is critical (GLib GMemoryMonitor CRITICAL)
SLOWDOWN = 1.2          # step time ×1.2 after swap began counts as a slow-down
WORKER_SHARE = 0.15     # §5.3 M4: workers ≥ 15 % of used memory
SHM_MIN_GB = 1.0        # /dev/shm below this with workers > 0 (ai-toolkit#515: 1 GB failed); docker's is 64 MB
FRAG_RATIO, FRAG_GB = 0.1, 1.0   # §3.6: reserved-but-unallocated > 10 % of capacity or > 1 GiB
GC_SLOWDOWN = "~20 % slower steps"
SUSPECTED = ("exit", "suspected")   # OOM signs that are a SIGKILL, not an allocator's own failure  # HF docs, perf_train_gpu_one / grad_checkpointing


# -- the shared view of memory pressure ------------------------------------------------------------------

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


def _activation_gb(data: JobData, p: Pressure) -> tuple[float | None, m.BatchFit | None]:
    """Memory above the static (model + optimizer) level at the peak: what batch, resolution and checkpointing
    act on."""
    dom = p.domain
    fit = m.batch_memory_fit(data, dom) if dom else None
    bs = m.current_batch_size(data)
    if fit and bs:
        return fit.per_sample_gb * bs, fit
    if dom and dom.peak is not None:
        static = m._static_memory(data, dom)
        if static is not None and dom.peak > static:
            return dom.peak - static, fit
    return None, fit


def _lever(data: JobData, p: Pressure, rid: str, title: str, action: str, impact: str,
           value: float | None, evidence: dict[str, Any], severity: str | None = None,
           confidence: float = 1.0) -> Finding:
    ev = {"pressure": p.reasons, **evidence}
    return Finding(id=rid, severity=severity or p.level or "info", title=title, action=action, impact=impact,
                   category="memory", evidence=ev, impact_value=value, impact_unit="GB" if value is not None else None,
                   memory_lever=True, confidence=confidence)


# -- M1 out of memory ------------------------------------------------------------------------------------

@rule("memory.oom", "memory")
def oom(data: JobData) -> list[Finding]:
    """M1: the run hit out-of-memory; say where (phase, step), how full memory was, and the best lever."""
    p = pressure(data)
    o = p.oom
    if o is None:
        return []
    step = o.step if o.step is not None else m.step_at(data, o.timestamp)
    phase = m.phase_at(data, o.timestamp)
    snap = m.sample_at(data, o.timestamp, o.snapshot_id)
    dom = p.domain
    figs = o.details
    ev: dict[str, Any] = {"timestamp": o.timestamp, "step": step, "phase": phase, "kind": o.kind,
                          "source": o.source, "message": o.message,
                          "occurrences": sum(x.count for x in p.ooms if x.source not in SUSPECTED) or 1}
    parts = [f"OOM at step {step}" if step is not None else "OOM before the first step", f"({phase})"]
    if o.kind == "cuda" and figs.get("total_capacity_gb"):
        total = figs["total_capacity_gb"]
        used = total - figs.get("free_gb", 0.0)
        parts.append(f"GPU {m.fmt_gb(used)} / {m.fmt_gb(total)} GB in use")
    elif dom is not None and dom.peak is not None:
        ratio = f" ({dom.peak_ratio:.0%})" if dom.peak_ratio else ""
        parts.append(f"peak {m.fmt_gb(dom.peak)} / {m.fmt_gb(dom.total)} GB{ratio}")
        ev.update(peak_gb=dom.peak, total_gb=dom.total, domain=dom.kind)
    if snap is not None:
        proc = snap.get("main_process_memory_gb")
        if proc is not None and not m._isnan(proc):
            ev["process_memory_gb"] = float(proc)
            parts.append(f"the process held {m.fmt_gb(float(proc))} GB")
        ev["memory_at_oom_gb"] = snap.get("used_memory_gb")
    if figs.get("tried_to_allocate_gb") is not None:
        parts.append(f"an allocation of {m.fmt_gb(figs['tried_to_allocate_gb'])} GB failed")
    ev.update({k: v for k, v in figs.items() if k.endswith("_gb")})
    # A CPU allocation that fails while the machine's RAM is far from full hit a limit of its own: the
    # process's address space (ulimit -v / RLIMIT_AS) or a container's memory limit.
    own_limit = (o.kind == "cpu" and dom is not None and dom.kind == "system" and dom.peak_ratio is not None
                 and dom.peak_ratio < data.settings.memory_warning_threshold)
    if own_limit:
        parts.append("the machine's RAM was not full, so a per-process or container limit was hit")
        ev["likely_cause"] = "a per-process (ulimit -v, RLIMIT_AS) or container memory limit"
    impact = "; ".join([" ".join(parts[:2])] + parts[2:])

    levers = sorted(_quantified_levers(data, p), key=lambda f: -(f.impact_value or 0))
    where = "before training started" if step is None else f"at step {step}"
    f = Finding(id="memory.oom", severity="critical" if p.level == "critical" else "warning",
                title=f"Training ran out of memory {where} ({phase})", action="", impact=impact,
                category="memory", evidence=ev,
                impact_value=figs.get("tried_to_allocate_gb") or (dom.peak if dom else None), impact_unit="GB",
                confidence=0.6 if o.source in SUSPECTED else 1.0)
    if levers:
        best = levers[0]
        f.action = (f"Apply the largest measured lever first: {best.title.lower()} "
                    f"({best.impact}); see the memory recommendations.")
        f.alternatives = [x.id for x in levers]
        ev["best_lever"] = best.id
    else:
        bs = m.current_batch_size(data)
        if data.dialect == HUGGINGFACE:
            apply_ref(f, resolve(data, "auto_find_batch_size"), True)
            f.action = "Let the Trainer find a batch size that fits: set auto_find_batch_size=True."
        elif bs and bs > 1:
            apply_ref(f, resolve(data, "batch_size"), max(1, bs // 2), measured=bs)
            f.action = f"Halve the batch size ({bs} -> {max(1, bs // 2)}) and raise gradient accumulation to match."
        elif own_limit:
            f.action = ("Raise the process's memory limit (ulimit -v, the container's or job scheduler's memory "
                        "request), or reduce what the process holds at that point.")
        else:
            f.action = ("Reduce what the process holds at that point (smaller model or inputs, fewer copies "
                        "kept alive), or run where more memory is available.")
    return [f]


# -- M2 peak vs total, M3 swap ---------------------------------------------------------------------------

@rule("memory.peak", "memory")
def peak(data: JobData) -> list[Finding]:
    """M2: peak memory against the warning (0.85) / critical (0.95) thresholds, RAM and discrete GPU apart."""
    p = pressure(data)
    warn, crit = data.settings.memory_warning_threshold, data.settings.memory_critical_threshold
    oom_kinds = {o.kind for o in p.ooms if o.source not in SUSPECTED}
    out: list[Finding] = []
    for ser, rid, label in ((p.ram, "memory.peak", "System memory"), (p.gpu, "memory.gpu_peak", "GPU memory")):
        if ser is None or ser.peak_ratio is None or ser.peak_ratio < warn:
            continue
        if (ser.kind == "gpu" and "cuda" in oom_kinds) or (ser.kind == "system" and oom_kinds & {"cpu", "host"}):
            continue  # memory.oom already reports this peak
        over = ser.used >= crit * (ser.total or math.inf)
        seconds = _seconds_where(ser.timestamps, over)
        sev = "critical" if ser.peak_ratio >= crit else "warning"
        best = _best_lever_title(data, p)
        out.append(Finding(
            id=rid, severity=sev,
            title=f"{label} peaked at {ser.peak_ratio:.0%} of total",
            action=("Reduce the biggest consumer" + (f": {best}" if best else "") + "."),
            impact=f"Peak {m.fmt_gb(ser.peak)} / {m.fmt_gb(ser.total)} GB ({ser.peak_ratio:.0%})",
            category="memory", impact_value=(ser.peak or 0) - warn * (ser.total or 0), impact_unit="GB",
            evidence={"peak_gb": ser.peak, "total_gb": ser.total, "peak_ratio": ser.peak_ratio,
                      "peak_time": ser.peak_time, "peak_step": m.step_at(data, ser.peak_time),
                      "phase_at_peak": m.phase_at(data, ser.peak_time), "seconds_above_critical": seconds,
                      "warning_ratio": warn, "critical_ratio": crit}))
    return out


def _seconds_where(ts: np.ndarray, mask: np.ndarray) -> float:
    total = 0.0
    for a, b in m.runs_of(mask):
        end = ts[b] if b < len(ts) else ts[b - 1]
        total += float(end - ts[a])
    return total


def _quantified_levers(data: JobData, p: Pressure) -> list[Finding]:
    """Every lever that applies and has a measured saving (computed once per job; copies are handed out)."""
    import copy

    levers = m.memo(data, "memory_levers", lambda: [
        f for f in (b(data, p) for b in _LEVERS) if f is not None and f.impact_value is not None])
    return [copy.deepcopy(f) for f in levers]


def _best_lever_title(data: JobData, p: Pressure) -> str | None:
    levers = _quantified_levers(data, p)
    if not levers:
        return None
    best = max(levers, key=lambda f: f.impact_value or 0)
    return f"{best.title.lower()} ({best.impact})"


@rule("memory.swap", "memory")
def swap(data: JobData) -> list[Finding]:
    """M3: swap grew or was read back during training; quantify the step-time slow-down since it began."""
    p = pressure(data)
    s = p.swap
    if s is None or not s.triggered:
        return []
    sev = "critical" if s.slowdown is None or s.slowdown >= SLOWDOWN else "warning"
    parts = [f"Swap grew {m.fmt_gb(s.growth_gb)} GB"]
    if s.slowdown is not None:
        parts.append(f"step time ×{s.slowdown:.1f} vs the pre-swap median")
    if s.lost_seconds:
        parts.append(f"~{m.fmt_duration(s.lost_seconds)} lost")
    title = "The system is swapping" + (f"; training slowed {s.slowdown:.1f}×" if s.slowdown and s.slowdown >= SLOWDOWN
                                        else "")
    best = _best_lever_title(data, p)
    return [Finding(
        id="memory.swap", severity=sev, title=title,
        action="Free RAM so the working set fits" + (f": {best}" if best else "") + ".",
        impact="; ".join(parts), category="memory",
        impact_value=s.lost_seconds if s.lost_seconds is not None else s.growth_gb,
        impact_unit="seconds" if s.lost_seconds is not None else "GB",
        evidence={"swap_growth_gb": s.growth_gb, "swap_peak_gb": s.peak_gb, "swap_in_consecutive_samples":
                  s.swap_in_run, "psi_full_avg10_max": s.psi_full_max, "onset": s.onset,
                  "onset_step": m.step_at(data, s.onset), "step_time_ratio": s.slowdown})]


# -- levers ----------------------------------------------------------------------------------------------

def _workers(data: JobData, p: Pressure) -> Finding | None:
    """M4: DataLoader workers' own memory (Σ PSS, so shared pages are not double counted)."""
    wp = m.worker_peak(data)
    if wp is None:
        return None
    pss, n, t = wp
    snap = m.sample_at(data, t)
    used = float(snap.get("used_memory_gb") or 0) if snap else 0.0
    share = pss / used if used > 0 else None
    dw = m.data_wait(data)
    input_bound = dw is not None and dw.share >= 0.05
    ref = resolve(data, "num_workers")
    configured = ref.current_value if ref.source == "config" and isinstance(ref.current_value, int) else None
    current = configured if configured is not None else n
    main = snap.get("main_process_memory_gb") if snap else None
    main = float(main) if main is not None and not m._isnan(main) else None
    if p.level is None:
        # No pressure: only worth saying when the workers are a big part of memory (§5.3 M4: ≥ 15 % of used),
        # or hold more than the training process itself (a copied dataset) - advice, not an alarm.
        if not ((share is not None and share >= WORKER_SHARE) or (main and pss >= main)):
            return None
        severity = "info"
    elif p.domain is not None and p.domain.kind == "gpu" and not (p.ram and (p.ram.peak_ratio or 0) >= 0.6):
        return None   # GPU memory is short, RAM is not: workers live in RAM and free nothing on the GPU
    else:
        severity = p.level
    rec = max(1, current // 2) if input_bound else 0
    if rec >= current:
        return None
    per = pss / n
    saves = per * (current - rec) if configured is not None else pss * (n - rec) / n
    f = _lever(data, p, "memory.workers", f"Reduce dataloader workers ({current} -> {rec})",
               (f"Set num_workers to {rec}: each worker holds its own copy of the dataset and Python heap."
                + (" The run waits for data, so keep some workers." if input_bound else
                   " If steps then wait for data, use 1.")),
               f"Saves ~{m.fmt_gb(saves)} GB ({m.fmt_gb(per)} GB/worker)", saves,
               {"worker_memory_gb": pss, "worker_count": n, "per_worker_gb": per, "at": t,
                "at_step": m.step_at(data, t), "used_memory_gb": used, "worker_share_of_used": share,
                "main_process_memory_gb": main,
                "data_wait_share": dw.share if dw else None}, severity=severity)
    return apply_ref(f, ref, rec, measured=n)


def _batch_size(data: JobData, p: Pressure) -> Finding | None:
    """M8: the largest batch that fits, from the measured memory-vs-batch relation (§5.2)."""
    bs = m.current_batch_size(data)
    ref = resolve(data, "batch_size")
    if bs is None and ref.source == "config" and isinstance(ref.current_value, int):
        bs = ref.current_value
    if p.level is None or bs is None or bs <= 1:
        return None
    dom = p.domain
    fit = m.batch_memory_fit(data, dom) if dom else None
    ev: dict[str, Any] = {"batch_size": bs}
    if fit is not None:
        bs_max = fit.max_batch(THETA)
        ev.update(static_gb=fit.static_gb, per_sample_gb=fit.per_sample_gb, total_gb=fit.total_gb,
                  fit_method=fit.method, points=[list(x) for x in fit.points], bs_max=bs_max, theta=THETA)
        if bs_max < 1:
            return None   # even batch 1 does not fit under θ: batch size is not the lever (§5.3 guard)
        if bs_max >= bs:
            if not p.oom:
                return None
            rec = max(1, bs // 2)   # the model says it fits; the OOM came from elsewhere: halve, low confidence
            saves = fit.per_sample_gb * (bs - rec)
            conf = 0.5
        else:
            rec = bs_max
            saves = fit.per_sample_gb * (bs - rec)
            conf = 1.0
        impact = f"Peak -{m.fmt_gb(saves)} GB ({m.fmt_gb(fit.per_sample_gb)} GB per sample)"
    else:
        rec, saves, conf = max(1, bs // 2), None, 0.5
        impact = "Activation memory scales with the batch; halving it cuts the part above the model's own memory"
    accum_ref = resolve(data, "gradient_accumulation")
    accum = accum_ref.current_value if isinstance(accum_ref.current_value, int) else 1
    new_accum = accum * math.ceil(bs / rec)
    ev["also_set"] = {accum_ref.path: new_accum} if accum_ref.path else {}
    f = _lever(data, p, "memory.batch_size", f"Reduce batch size to {rec}",
               f"Set the batch size {bs} -> {rec} and gradient accumulation {accum} -> {new_accum} to keep the "
               "effective batch.", impact, saves, ev, confidence=conf)
    return apply_ref(f, ref, rec, measured=bs)


def _gpu_pressure(p: Pressure) -> bool:
    dom = p.domain
    return dom is not None and (dom.kind == "gpu" or any(o.kind in ("cuda", "mps") for o in p.ooms))


def _quantize(data: JobData, p: Pressure) -> Finding | None:
    """M6: 8-bit weights (2 -> 1 B/param), only where the GPU's memory is short and quantization is off."""
    if p.level is None or not _gpu_pressure(p):
        return None
    ref = resolve(data, "quantize")
    if ref.current_value is True:
        return None   # already on; a lower-bit qtype is a quality trade we do not push (§5.3 guard)
    if data.dialect != AITOOLKIT and ref.source != "config":
        return None
    info = m.model_info(data)
    b_now = info.get("bytes_per_param") or m.bytes_per_param(info.get("dtype")) or 2.0
    ev: dict[str, Any] = {}
    if info.get("parameters"):
        saves = info["parameters"] * (b_now - 1.0) / m.GIB
        impact, conf = f"Saves ~{m.fmt_gb(saves)} GB (weights {b_now:g} -> 1 B/param)", 1.0
        ev["parameters"] = info["parameters"]
    else:
        dom = p.domain
        static = m._static_memory(data, dom) if dom else None
        if static is None:
            return None
        saves = static * (b_now - 1.0) / b_now
        impact = (f"Saves up to ~{m.fmt_gb(saves)} GB (weights {b_now:g} -> 1 B/param of the "
                  f"{m.fmt_gb(static)} GB held before the first step)")
        conf = 0.5
        ev["static_gb"] = static
    qtype = "qfloat8"
    env = data.job.get("environment") or {}
    layer_ref = resolve(data, "layer_offloading")
    if layer_ref.current_value is True:
        qtype = "float8"       # ai-toolkit swaps qfloat8 for float8 with layer offloading (§5.3 notes)
    elif str(resolve(data, "device").current_value or "").startswith("mps") or \
            ((env.get("torch") or {}).get("mps_available") and not (env.get("torch") or {}).get("cuda_available")):
        qtype = "convrot8"     # and rewrites it to convrot8 on MPS (config_modules.py:719-727)
    ev["also_set"] = {resolve(data, "qtype").path: qtype} if data.dialect == AITOOLKIT else {}
    f = _lever(data, p, "memory.quantize", "Enable 8-bit quantization of the model weights",
               (f"Set quantize to true with qtype {qtype}." if data.dialect == AITOOLKIT else
                f"Quantize the model weights to 8 bit ({ref.hint or 'load it in 8 bit'})."), impact, saves, ev,
               confidence=conf)
    return apply_ref(f, ref, True)


def _ema(data: JobData, p: Pressure) -> Finding | None:
    """M7: an EMA keeps one more copy of the trainable parameters (ai-toolkit toolkit/ema.py:61)."""
    if p.level is None:
        return None
    ref = resolve(data, "use_ema")
    if ref.current_value is not True:
        return None
    info = m.model_info(data)
    trainable = info.get("trainable_parameters")
    b = info.get("bytes_per_param") or m.bytes_per_param(info.get("dtype")) or m.bytes_per_param(
        resolve(data, "precision").current_value) or 4.0
    if trainable:
        saves: float | None = trainable * b / m.GIB
        impact = f"Saves ~{m.fmt_gb(saves)} GB (one copy of {trainable:,} trainable parameters)"
    else:
        saves = None
        impact = "Saves one copy of the trainable parameters (their count was not recorded)"
    sev = "critical" if p.oom else "warning"
    f = _lever(data, p, "memory.ema", "Disable EMA", "Turn the EMA of the weights off.", impact, saves,
               {"trainable_parameters": trainable, "bytes_per_param": b}, severity=sev)
    return apply_ref(f, ref, False)


def _gradient_checkpointing(data: JobData, p: Pressure) -> Finding | None:
    """M9: recompute activations in the backward pass instead of keeping them."""
    if p.level is None:
        return None
    ref = resolve(data, "gradient_checkpointing")
    if ref.current_value is True or (ref.current_value is None and ref.source == "unknown"
                                     and data.dialect not in (LIGHTNING,)):
        return None
    act, _ = _activation_gb(data, p)
    if act is None:
        return None
    f = _lever(data, p, "memory.gradient_checkpointing", "Enable gradient checkpointing",
               "Turn gradient checkpointing on" + (f" ({ref.hint})" if ref.path is None and ref.hint else "") + ".",
               f"Cuts most of the ~{m.fmt_gb(act)} GB of activation memory; {GC_SLOWDOWN}", act,
               {"activation_gb": act}, confidence=0.5)
    return apply_ref(f, ref, True)


def _resolution(data: JobData, p: Pressure) -> Finding | None:
    """M10: activations scale with pixels: (r_new / r_max)² (§5.2)."""
    if p.level is None:
        return None
    ref = resolve(data, "resolution")
    if ref.source != "config":
        return None
    res = ref.current_value
    values = [int(x) for x in (res if isinstance(res, list) else [res]) if isinstance(x, (int, float))]
    if not values:
        return None
    r_max = max(values)
    if len(values) > 1:
        new: Any = [v for v in values if v != r_max]
        r_new = max(new)
    elif r_max >= 1024:
        r_new = r_max - 256
        new = r_new if not isinstance(res, list) else [r_new]
    else:
        return None
    act, _ = _activation_gb(data, p)
    if act is None:
        return None
    saves = act * (1 - (r_new / r_max) ** 2)
    f = _lever(data, p, "memory.resolution", f"Drop the {r_max}px resolution",
               f"Train at {new} instead of {res}.",
               f"Activations ×{(r_new / r_max) ** 2:.2f} (-{m.fmt_gb(saves)} GB)", saves,
               {"activation_gb": act, "resolution_max": r_max, "resolution_new": r_new})
    return apply_ref(f, ref, new)


def _sampling_peak(data: JobData, p: Pressure) -> Finding | None:
    """M13: memory peaks while sampling/evaluating, not while training (ai-toolkit#992)."""
    if p.level is None:
        return None
    dom = p.domain
    if dom is None or dom.peak is None:
        return None
    evals = [ph for ph in m.phases(data) if ph.name in m.EVAL_PHASES]
    if not evals:
        return None
    in_eval = m.overlaps(dom.timestamps, dom.timestamps, *m.merged_intervals((p.start, p.end) for p in evals))
    ok = np.isfinite(dom.used)
    if not (in_eval & ok).any() or not (~in_eval & ok).any():
        return None
    eval_peak, train_peak = float(dom.used[in_eval & ok].max()), float(dom.used[~in_eval & ok].max())
    oom_in_eval = p.oom is not None and m.phase_at(data, p.oom.timestamp) in m.EVAL_PHASES
    if eval_peak <= train_peak and not oom_in_eval:
        return None
    first_step = m.finite(m.col(m.main_rank_steps(data), "timestamp"))
    before_training = p.oom is not None and (not first_step.size or (p.oom.timestamp or 0) < first_step.min())
    rec: Any
    if data.dialect == AITOOLKIT and before_training:
        ref, rec = resolve(data, "skip_first_sample"), True
        action = "Skip the baseline samples before training (or sample at a lower resolution)."
    else:
        ref = resolve(data, "eval_steps")
        cur = ref.current_value
        rec = cur * 2 if isinstance(cur, (int, float)) and not isinstance(cur, bool) and cur > 1 else None
        action = "Sample/evaluate less often or with a smaller batch; the peak comes from sampling."
        if rec is None:
            return None
    saves = max(0.0, eval_peak - train_peak)
    f = _lever(data, p, "memory.sampling_peak", "Memory peaks during sampling/evaluation", action,
               f"Sampling peak {m.fmt_gb(eval_peak)} GB vs training peak {m.fmt_gb(train_peak)} GB", saves,
               {"eval_peak_gb": eval_peak, "train_peak_gb": train_peak, "oom_in_eval": oom_in_eval},
               severity="warning" if p.level == "warning" or not oom_in_eval else "critical")
    return apply_ref(f, ref, rec)


def _fragmentation(data: JobData, p: Pressure) -> Finding | None:
    """M14: the CUDA OOM message says much memory was reserved but unallocated (PyTorch's own hint)."""
    frag: list[tuple[m.OomOccurrence, float, float | None]] = []
    for o in p.ooms:
        r, t = o.details.get("reserved_unallocated_gb"), o.details.get("total_capacity_gb")
        t = float(t) if isinstance(t, (int, float)) and t > 0 else None
        if isinstance(r, (int, float)) and (r > FRAG_GB or (t is not None and r / t > FRAG_RATIO)):
            frag.append((o, float(r), t))
    if not frag:
        return None
    o, r, t = max(frag, key=lambda x: x[1])
    env = (data.job.get("environment") or {}).get("env") or {}
    current = env.get("PYTORCH_CUDA_ALLOC_CONF") or env.get("PYTORCH_ALLOC_CONF")
    if current and "expandable_segments:true" in str(current).replace(" ", "").lower():
        return None
    tail = f" ({r / t:.0%} of {m.fmt_gb(t)} GB)" if t else ""
    f = _lever(data, p, "memory.fragmentation", "Allocator fragmentation",
               "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment of the run.",
               f"{m.fmt_gb(r)} GB reserved but unallocated at the OOM{tail}", r,
               {"reserved_unallocated_gb": r, "total_capacity_gb": t, "timestamp": o.timestamp},
               severity="warning")
    f.config_key = "PYTORCH_CUDA_ALLOC_CONF"
    f.config_path = "env:PYTORCH_CUDA_ALLOC_CONF"
    f.current_value, f.current_value_source = (current, "config") if current else (None, "unknown")
    f.recommended_value = "expandable_segments:True"
    return f


_LEVERS: list[Callable[[JobData, Pressure], Finding | None]] = [
    _workers, _batch_size, _quantize, _ema, _gradient_checkpointing, _resolution, _sampling_peak, _fragmentation,
]


def _one(fn: Callable[[JobData, Pressure], Finding | None]) -> Callable[[JobData], list[Finding]]:
    def run(data: JobData) -> list[Finding]:
        f = fn(data, pressure(data))
        return [f] if f is not None else []
    run.__doc__ = fn.__doc__
    return run


workers = rule("memory.workers", "memory")(_one(_workers))
batch_size = rule("memory.batch_size", "memory")(_one(_batch_size))
quantize = rule("memory.quantize", "memory")(_one(_quantize))
ema = rule("memory.ema", "memory")(_one(_ema))
gradient_checkpointing = rule("memory.gradient_checkpointing", "memory")(_one(_gradient_checkpointing))
resolution = rule("memory.resolution", "memory")(_one(_resolution))
sampling_peak = rule("memory.sampling_peak", "memory")(_one(_sampling_peak))
fragmentation = rule("memory.fragmentation", "memory")(_one(_fragmentation))


# -- M15 shared memory -----------------------------------------------------------------------------------

_SHM_TEXT = re.compile(r"shm|shared memory|bus error", re.IGNORECASE)


def _shm_size_gb(data: JobData) -> float | None:
    env = data.job.get("environment")
    if not isinstance(env, dict):
        return None
    for key in ("shm_total_gb", "dev_shm_gb", "shm_size_gb"):
        if isinstance(env.get(key), (int, float)):
            return float(env[key])
    shm = env.get("shm")
    if isinstance(shm, dict) and isinstance(shm.get("total_gb"), (int, float)):
        return float(shm["total_gb"])
    return None


@rule("memory.shm", "memory")
def shm(data: JobData) -> list[Finding]:
    """M15: /dev/shm too small for DataLoader workers (ai-toolkit#515), from its size or from shm/bus errors."""
    errors = [lf for lf in data.log_findings if getattr(lf, "category", None) == "shm_bus_error"
              or (getattr(lf, "category", None) == "dataloader_worker_died"
                  and _SHM_TEXT.search(str(getattr(lf, "text", "") or getattr(lf, "message", ""))))]
    size = _shm_size_gb(data)
    workers_n = m.measured_workers(data)
    ref = resolve(data, "num_workers")
    configured = ref.current_value if isinstance(ref.current_value, int) else None
    n = workers_n if workers_n else configured
    small = size is not None and size < SHM_MIN_GB and (n or 0) > 0
    if not errors and not small:
        return []
    count = sum(int(getattr(lf, "count", 1) or 1) for lf in errors)
    first = errors[0] if errors else None
    t = getattr(first, "timestamp", None) if first else None
    parts = []
    if size is not None:
        parts.append(f"/dev/shm {m.fmt_gb(size)} GB for {n or '?'} workers")
    if count:
        parts.append(f"{count} shared-memory error(s), first at step {m.step_at(data, t)}")
    f = Finding(id="memory.shm", severity="critical" if errors else "warning",
                title="Shared memory too small for DataLoader workers",
                action="Set num_workers to 0, or give the container more shared memory (docker --shm-size=8g).",
                impact="; ".join(parts), category="memory",
                impact_value=float(count) if count else size, impact_unit="occurrences" if count else "GB",
                evidence={"shm_total_gb": size, "workers": n, "errors": count, "first_error_at": t,
                          "first_error": str(getattr(first, "message", ""))[:300] if first else None})
    return [apply_ref(f, ref, 0, measured=workers_n or None)]
