"""What happened to memory: the run ran out (``memory.oom``), came close (``memory.peak``), or swapped
(``memory.swap``). Each says where and when from this run's measurements, and points at the lever with the
largest measured saving.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.analyze.rules.memory.pressure import (
    SLOWDOWN,
    SUSPECTED,
    best_lever,
    best_lever_title,
    pressure,
    quantified_levers,
)
from runlens.core.dialects import HUGGINGFACE
from runlens.core.humanize import duration_rough, gb_figure


@rule("memory.oom", "memory")
def oom(data: JobData) -> list[Finding]:
    """The run hit out-of-memory; say where (phase, step), how full memory was, and the best lever."""
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
    killed = o.source in ("cgroup", "exit", "suspected")   # the kernel's OOM killer, not a failed allocation
    what = "OOM kill" if killed else "OOM"
    parts = [f"{what} at step {step}" if step is not None else f"{what} before the first step", f"({phase})"]
    if o.kind == "cuda" and figs.get("total_capacity_gb"):
        total = figs["total_capacity_gb"]
        used = total - figs.get("free_gb", 0.0)
        parts.append(f"GPU {gb_figure(used)} / {gb_figure(total)} GiB in use")
    elif dom is not None and dom.peak is not None:
        ratio = f" ({dom.peak_ratio:.0%})" if dom.peak_ratio else ""
        parts.append(f"peak {gb_figure(dom.peak)} / {gb_figure(dom.total)} {dom.limit_words}{ratio}")
        ev.update(peak_gb=dom.peak, total_gb=dom.total, domain=dom.kind, memory_limit_source=dom.source)
    if o.source == "cgroup":
        kills = o.details.get("container_oom_kills") or o.count
        parts.append(f"the container's memory cgroup counted {kills} OOM kill{'s' if kills > 1 else ''}")
        ev.update(container_oom_kills=kills, confirmed_by="the memory cgroup's oom_kill counter")
    if snap is not None:
        proc = snap.get("main_process_memory_gb")
        if proc is not None and not m.is_nan(proc):
            ev["process_memory_gb"] = float(proc)
            parts.append(f"the process held {gb_figure(float(proc))} GiB")
        ev["memory_at_oom_gb"] = snap.get("used_memory_gb")
    if figs.get("tried_to_allocate_gb") is not None:
        parts.append(f"an allocation of {gb_figure(figs['tried_to_allocate_gb'])} GiB failed")
    ev.update({k: v for k, v in figs.items() if k.endswith("_gb")})
    # A CPU allocation that fails while the machine's RAM is far from full hit a limit of its own: the
    # process's address space (ulimit -v / RLIMIT_AS) or a container's memory limit.
    own_limit = (o.kind == "cpu" and dom is not None and dom.kind == "system" and dom.source == "host"
                 and dom.peak_ratio is not None
                 and dom.peak_ratio < data.settings.memory_warning_threshold)
    if own_limit:
        parts.append("the machine's RAM was not full, so a per-process or container limit was hit")
        ev["likely_cause"] = "a per-process (ulimit -v, RLIMIT_AS) or container memory limit"
    impact = "; ".join([" ".join(parts[:2])] + parts[2:])

    levers = quantified_levers(data, p)
    best = best_lever(data, p)
    where = "before training started" if step is None else f"at step {step}"
    if o.source == "cgroup":
        title = f"Training was killed by the OOM killer at its container's memory limit {where} ({phase})"
    else:
        title = f"Training ran out of memory {where} ({phase})"
    f = Finding(id="memory.oom", severity="critical" if p.level == "critical" else "warning",
                title=title, action="", impact=impact,
                category="memory", evidence=ev,
                impact_value=figs.get("tried_to_allocate_gb") or (dom.peak if dom else None), impact_unit="GB",
                confidence=0.6 if o.source in SUSPECTED else 1.0)
    # The run failed from this; whether the best lever avoids it is that lever's own prediction.
    fixed = best.expected_effect.get("predicted") if best is not None and best.expected_effect else None
    f.expected_effect = effects.failure(None if fixed is None else not fixed)
    if best is not None:
        f.action = (f"Apply the largest measured lever first: {best.title.lower()} "
                    f"({best.impact}); see the memory recommendations.")
        f.alternatives = [x.id for x in levers]
        ev["best_lever"] = best.id
    else:
        f.alternatives = [x.id for x in levers]   # levers whose saving this run did not measure
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


@rule("memory.peak", "memory")
def peak(data: JobData) -> list[Finding]:
    """Peak memory against the warning (0.85) / critical (0.95) thresholds, RAM and discrete GPU apart."""
    p = pressure(data)
    warn, crit = data.settings.memory_warning_threshold, data.settings.memory_critical_threshold
    oom_kinds = {o.kind for o in p.ooms if o.source not in SUSPECTED}
    out: list[Finding] = []
    ram_label = "Container memory" if p.ram is not None and p.ram.source == "cgroup" else "System memory"
    for ser, rid, label in ((p.ram, "memory.peak", ram_label), (p.gpu, "memory.gpu_peak", "GPU memory")):
        if ser is None or ser.peak_ratio is None or ser.peak_ratio < warn:
            continue
        if (ser.kind == "gpu" and "cuda" in oom_kinds) or (ser.kind == "system" and oom_kinds & {"cpu", "host"}):
            continue  # memory.oom already reports this peak
        over = ser.used >= crit * (ser.total or math.inf)
        seconds = _seconds_where(ser.timestamps, over)
        sev = "critical" if ser.peak_ratio >= crit else "warning"
        best = best_lever_title(data, p)
        lever = best_lever(data, p)
        saved = lever.impact_value if lever is not None else None
        peak_effect = effects.effect("peak_memory_gb", ser.peak, ser.peak - saved
                                     if saved is not None and ser.peak is not None else None)
        out.append(Finding(
            id=rid, severity=sev,
            title=f"{label} peaked at {ser.peak_ratio:.0%} of " + ("its limit" if ser.source == "cgroup" else "total"),
            action=("Reduce the biggest consumer" + (f": {best}" if best else "") + "."),
            impact=f"Peak {gb_figure(ser.peak)} / {gb_figure(ser.total)} {ser.limit_words} ({ser.peak_ratio:.0%})",
            category="memory", impact_value=(ser.peak or 0) - warn * (ser.total or 0), impact_unit="GB",
            evidence={"peak_gb": ser.peak, "total_gb": ser.total, "peak_ratio": ser.peak_ratio,
                      "peak_time": ser.peak_time, "peak_step": m.step_at(data, ser.peak_time),
                      "phase_at_peak": m.phase_at(data, ser.peak_time), "seconds_above_critical": seconds,
                      "warning_ratio": warn, "critical_ratio": crit, "memory_limit_source": ser.source},
            expected_effect=peak_effect))
    return out


def _seconds_where(ts: np.ndarray, mask: np.ndarray) -> float:
    total = 0.0
    for a, b in m.runs_of(mask):
        end = ts[b] if b < len(ts) else ts[b - 1]
        total += float(end - ts[a])
    return total


@rule("memory.swap", "memory")
def swap(data: JobData) -> list[Finding]:
    """Swap grew or was read back during training; quantify the step-time slow-down since it began."""
    p = pressure(data)
    s = p.swap
    if s is None or not s.triggered:
        return []
    sev = "critical" if s.slowdown is None or s.slowdown >= SLOWDOWN else "warning"
    parts = [f"Swap grew {gb_figure(s.growth_gb)} GiB"]
    if s.slowdown is not None:
        parts.append(f"step time ×{s.slowdown:.1f} vs the pre-swap median")
    if s.lost_seconds:
        parts.append(f"~{duration_rough(s.lost_seconds)} lost")
    title = "The system is swapping" + (f"; training slowed {s.slowdown:.1f}×" if s.slowdown and s.slowdown >= SLOWDOWN
                                        else "")
    best = best_lever_title(data, p)
    wall = m.wall_seconds(data)
    # The time the slow-down cost comes back once the working set fits in RAM.
    swap_effect = (effects.effect("wall_share", s.lost_seconds / wall, 0.0) if s.lost_seconds is not None and wall
                   else effects.effect("peak_memory_gb", p.ram.peak if p.ram else None, None))
    return [Finding(
        id="memory.swap", severity=sev, title=title, expected_effect=swap_effect,
        action="Free RAM so the working set fits" + (f": {best}" if best else "") + ".",
        impact="; ".join(parts), category="memory",
        impact_value=s.lost_seconds if s.lost_seconds is not None else s.growth_gb,
        impact_unit="seconds" if s.lost_seconds is not None else "GB",
        evidence={"swap_growth_gb": s.growth_gb, "swap_peak_gb": s.peak_gb, "swap_in_consecutive_samples":
                  s.swap_in_run, "psi_full_avg10_max": s.psi_full_max, "onset": s.onset,
                  "onset_step": m.step_at(data, s.onset), "step_time_ratio": s.slowdown})]
