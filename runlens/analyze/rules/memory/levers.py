"""Memory levers: how much one setting would free, computed from this run's measurements.

Workers, batch size, quantization, EMA, gradient checkpointing, resolution, the sampling peak and allocator
fragmentation. Levers only fire when memory was under pressure, so a healthy run gets none of them; each sets
``memory_lever`` so the analysis marks the one with the largest feasible saving as primary and the others as
alternatives. Each registers as its own rule with ``@lever``, in the order of this file.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.rules.memory.pressure import Pressure, activation_gb, lever, lever_finding
from runlens.core.dialects import AITOOLKIT, LIGHTNING
from runlens.core.humanize import gb_figure
from runlens.core.phases import EVAL_PHASES
from runlens.core.units import GIB

WORKER_SHARE = 0.15     # workers holding >= 15 % of used memory are worth a word even without pressure
# Reserved-but-unallocated > 10 % of capacity or > 1 GiB: fragmentation, which expandable segments avoid
# (https://pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf).
FRAG_RATIO, FRAG_GB = 0.1, 1.0
# https://huggingface.co/docs/transformers/perf_train_gpu_one#gradient-checkpointing
GC_SLOWDOWN = "~20 % slower steps"


@lever("memory.workers")
def workers(data: JobData, p: Pressure) -> Finding | None:
    """DataLoader workers' own memory (Σ PSS, so shared pages are not double counted)."""
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
    main = float(main) if main is not None and not m.is_nan(main) else None
    if p.level is None:
        # No pressure: only worth saying when the workers are a big part of memory (≥ 15 % of used),
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
    f = lever_finding(data, p, "memory.workers", f"Reduce dataloader workers ({current} -> {rec})",
                      (f"Set num_workers to {rec}: each worker holds its own copy of the dataset and Python heap."
                       + (" The run waits for data, so keep some workers." if input_bound else
                          " If steps then wait for data, use 1.")),
                      f"Saves ~{gb_figure(saves)} GiB ({gb_figure(per)} GiB/worker)", saves,
                      {"worker_memory_gb": pss, "worker_count": n, "per_worker_gb": per, "at": t,
                       "at_step": m.step_at(data, t), "used_memory_gb": used, "worker_share_of_used": share,
                       "main_process_memory_gb": main,
                       "data_wait_share": dw.share if dw else None}, severity=severity)
    return apply_ref(f, ref, rec, measured=n)


@lever("memory.batch_size")
def batch_size(data: JobData, p: Pressure) -> Finding | None:
    """The largest batch that fits, from the measured memory-vs-batch relation."""
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
        bs_max = fit.max_batch(m.THETA)
        ev.update(static_gb=fit.static_gb, per_sample_gb=fit.per_sample_gb, total_gb=fit.total_gb,
                  fit_method=fit.method, points=[list(x) for x in fit.points], bs_max=bs_max, theta=m.THETA)
        if bs_max < 1:
            return None   # even batch 1 does not fit under θ: batch size is not the lever
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
        impact = f"Peak -{gb_figure(saves)} GiB ({gb_figure(fit.per_sample_gb)} GiB per sample)"
    else:
        rec, saves, conf = max(1, bs // 2), None, 0.5
        impact = "Activation memory scales with the batch; halving it cuts the part above the model's own memory"
    accum_ref = resolve(data, "gradient_accumulation")
    accum = accum_ref.current_value if isinstance(accum_ref.current_value, int) else 1
    new_accum = accum * math.ceil(bs / rec)
    ev["also_set"] = {accum_ref.path: new_accum} if accum_ref.path else {}
    f = lever_finding(data, p, "memory.batch_size", f"Reduce batch size to {rec}",
                      f"Set the batch size {bs} -> {rec} and gradient accumulation {accum} -> {new_accum} to keep the "
                      "effective batch.", impact, saves, ev, confidence=conf)
    return apply_ref(f, ref, rec, measured=bs)


def _gpu_pressure(p: Pressure) -> bool:
    dom = p.domain
    return dom is not None and (dom.kind == "gpu" or any(o.kind in ("cuda", "mps") for o in p.ooms))


@lever("memory.quantize")
def quantize(data: JobData, p: Pressure) -> Finding | None:
    """8-bit weights (2 -> 1 B/param), only where the GPU's memory is short and quantization is off."""
    if p.level is None or not _gpu_pressure(p):
        return None
    ref = resolve(data, "quantize")
    if ref.current_value is True:
        return None   # already on; a lower-bit qtype is a quality trade we do not push
    if data.dialect != AITOOLKIT and ref.source != "config":
        return None
    info = m.model_info(data)
    b_now = info.get("bytes_per_param") or m.bytes_per_param(info.get("dtype")) or 2.0
    ev: dict[str, Any] = {}
    if info.get("parameters"):
        saves = info["parameters"] * (b_now - 1.0) / GIB
        impact, conf = f"Saves ~{gb_figure(saves)} GiB (weights {b_now:g} -> 1 B/param)", 1.0
        ev["parameters"] = info["parameters"]
    else:
        dom = p.domain
        static = m.static_memory(data, dom) if dom else None
        if static is None:
            return None
        saves = static * (b_now - 1.0) / b_now
        impact = (f"Saves up to ~{gb_figure(saves)} GiB (weights {b_now:g} -> 1 B/param of the "
                  f"{gb_figure(static)} GiB held before the first step)")
        conf = 0.5
        ev["static_gb"] = static
    qtype = "qfloat8"
    env = data.job.get("environment") or {}
    layer_ref = resolve(data, "layer_offloading")
    if layer_ref.current_value is True:
        # ai-toolkit swaps qfloat8 for float8 with layer offloading, and rewrites it to convrot8 on MPS
        # (https://github.com/ostris/ai-toolkit/blob/main/toolkit/config_modules.py)
        qtype = "float8"
    elif str(resolve(data, "device").current_value or "").startswith("mps") or \
            ((env.get("torch") or {}).get("mps_available") and not (env.get("torch") or {}).get("cuda_available")):
        qtype = "convrot8"
    ev["also_set"] = {resolve(data, "qtype").path: qtype} if data.dialect == AITOOLKIT else {}
    f = lever_finding(data, p, "memory.quantize", "Enable 8-bit quantization of the model weights",
                      (f"Set quantize to true with qtype {qtype}." if data.dialect == AITOOLKIT else
                       f"Quantize the model weights to 8 bit ({ref.hint or 'load it in 8 bit'})."),
                      impact, saves, ev, confidence=conf)
    return apply_ref(f, ref, True)


@lever("memory.ema")
def ema(data: JobData, p: Pressure) -> Finding | None:
    """An EMA keeps one more copy of the trainable parameters
    (https://github.com/ostris/ai-toolkit/blob/main/toolkit/ema.py)."""
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
        saves: float | None = trainable * b / GIB
        impact = f"Saves ~{gb_figure(saves)} GiB (one copy of {trainable:,} trainable parameters)"
    else:
        saves = None
        impact = "Saves one copy of the trainable parameters (their count was not recorded)"
    sev = "critical" if p.oom else "warning"
    f = lever_finding(data, p, "memory.ema", "Disable EMA", "Turn the EMA of the weights off.", impact, saves,
                      {"trainable_parameters": trainable, "bytes_per_param": b}, severity=sev)
    return apply_ref(f, ref, False)


@lever("memory.gradient_checkpointing")
def gradient_checkpointing(data: JobData, p: Pressure) -> Finding | None:
    """Recompute activations in the backward pass instead of keeping them."""
    if p.level is None:
        return None
    ref = resolve(data, "gradient_checkpointing")
    if ref.current_value is True or (ref.current_value is None and ref.source == "unknown"
                                     and data.dialect not in (LIGHTNING,)):
        return None
    act, _ = activation_gb(data, p)
    if act is None:
        return None
    f = lever_finding(data, p, "memory.gradient_checkpointing", "Enable gradient checkpointing",
                      "Turn gradient checkpointing on"
                      + (f" ({ref.hint})" if ref.path is None and ref.hint else "") + ".",
                      f"Cuts most of the ~{gb_figure(act)} GiB of activation memory; {GC_SLOWDOWN}", act,
                      {"activation_gb": act}, confidence=0.5)
    return apply_ref(f, ref, True)


@lever("memory.resolution")
def resolution(data: JobData, p: Pressure) -> Finding | None:
    """Activations scale with pixels: (r_new / r_max)²."""
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
    act, _ = activation_gb(data, p)
    if act is None:
        return None
    saves = act * (1 - (r_new / r_max) ** 2)
    f = lever_finding(data, p, "memory.resolution", f"Drop the {r_max}px resolution",
                      f"Train at {new} instead of {res}.",
                      f"Activations ×{(r_new / r_max) ** 2:.2f} (-{gb_figure(saves)} GiB)", saves,
                      {"activation_gb": act, "resolution_max": r_max, "resolution_new": r_new})
    return apply_ref(f, ref, new)


@lever("memory.sampling_peak")
def sampling_peak(data: JobData, p: Pressure) -> Finding | None:
    """Memory peaks while sampling/evaluating, not while training
    (https://github.com/ostris/ai-toolkit/issues/992)."""
    if p.level is None:
        return None
    dom = p.domain
    if dom is None or dom.peak is None:
        return None
    evals = [ph for ph in m.phases(data) if ph.name in EVAL_PHASES]
    if not evals:
        return None
    in_eval = m.overlaps(dom.timestamps, dom.timestamps, *m.merged_intervals((p.start, p.end) for p in evals))
    ok = np.isfinite(dom.used)
    if not (in_eval & ok).any() or not (~in_eval & ok).any():
        return None
    eval_peak, train_peak = float(dom.used[in_eval & ok].max()), float(dom.used[~in_eval & ok].max())
    oom_in_eval = p.oom is not None and m.phase_at(data, p.oom.timestamp) in EVAL_PHASES
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
    f = lever_finding(data, p, "memory.sampling_peak", "Memory peaks during sampling/evaluation", action,
                      f"Sampling peak {gb_figure(eval_peak)} GiB vs training peak {gb_figure(train_peak)} GiB", saves,
                      {"eval_peak_gb": eval_peak, "train_peak_gb": train_peak, "oom_in_eval": oom_in_eval},
                      severity="warning" if p.level == "warning" or not oom_in_eval else "critical")
    return apply_ref(f, ref, rec)


@lever("memory.fragmentation")
def fragmentation(data: JobData, p: Pressure) -> Finding | None:
    """The CUDA OOM message says much memory was reserved but unallocated (PyTorch's own hint)."""
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
    tail = f" ({r / t:.0%} of {gb_figure(t)} GiB)" if t else ""
    f = lever_finding(data, p, "memory.fragmentation", "Allocator fragmentation",
                      "Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in the environment of the run.",
                      f"{gb_figure(r)} GiB reserved but unallocated at the OOM{tail}", r,
                      {"reserved_unallocated_gb": r, "total_capacity_gb": t, "timestamp": o.timestamp},
                      severity="warning")
    f.config_key = "PYTORCH_CUDA_ALLOC_CONF"
    f.config_path = "env:PYTORCH_CUDA_ALLOC_CONF"
    f.current_value, f.current_value_source = (current, "config") if current else (None, "unknown")
    f.recommended_value = "expandable_segments:True"
    return f
