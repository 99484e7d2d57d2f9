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

from runlens.analyze import effects
from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, prefer_measured, resolve
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.batches import batch_segments, choose_batch
from runlens.analyze.measures.loading import loading
from runlens.analyze.rules.memory.pressure import Pressure, activation_gb, lever, lever_effect, lever_finding
from runlens.core.dialects import AITOOLKIT, LIGHTNING
from runlens.core.humanize import duration_fine, gb_figure
from runlens.core.phases import EVAL_PHASES
from runlens.core.units import GIB

WORKER_SHARE = 0.15     # workers holding >= 15 % of used memory are worth a word even without pressure
WORKER_MARGIN = 0.05    # fewer workers aim 5 points under the warning threshold, not just under it
INPUT_BOUND = 0.05      # the input-bound rule's threshold (runlens.analyze.rules.throughput)
# Reserved-but-unallocated > 10 % of capacity or > 1 GiB: fragmentation, which expandable segments avoid
# (https://pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf).
FRAG_RATIO, FRAG_GB = 0.1, 1.0
# https://huggingface.co/docs/transformers/perf_train_gpu_one#gradient-checkpointing
GC_SLOWDOWN = "~20 % slower steps"


@lever("memory.workers")
def workers(data: JobData, p: Pressure) -> Finding | None:
    """DataLoader workers' own memory (Σ PSS, so shared pages are not double counted).

    Under pressure: as many workers fewer as bring RAM back under the warning threshold (with a margin), from
    their measured memory each. Without pressure: advice when they are a big part of memory, never when the
    run waits for data (fewer workers would lengthen every step). A run that waits for data keeps one worker
    at least, and the card states the step time that costs."""
    wp = m.worker_peak(data)
    if wp is None:
        return None
    pss, n, t = wp
    snap = m.sample_at(data, t)
    used = float(snap.get("used_memory_gb") or 0) if snap else 0.0
    share = pss / used if used > 0 else None
    dw = m.data_wait(data)
    input_bound = dw is not None and dw.share >= INPUT_BOUND
    ref = resolve(data, "num_workers")
    configured = ref.current_value if ref.source == "config" and isinstance(ref.current_value, int) else None
    current = configured if configured is not None else n
    main = snap.get("main_process_memory_gb") if snap else None
    main = float(main) if main is not None and not m.is_nan(main) else None
    per = pss / n
    if p.level is None:
        # No pressure: only worth saying when the workers are a big part of memory (≥ 15 % of used),
        # or hold more than the training process itself (a copied dataset) - advice, not an alarm.
        if not ((share is not None and share >= WORKER_SHARE) or (main and pss >= main)):
            return None
        if input_bound:
            return None   # the memory is not short and the steps wait for data: fewer workers only slow it
        severity, rec = "info", 0
    elif p.domain is not None and p.domain.kind == "gpu" and not (p.ram and (p.ram.peak_ratio or 0) >= 0.6):
        return None   # GPU memory is short, RAM is not: workers live in RAM and free nothing on the GPU
    else:
        severity = p.level
        ram = p.ram
        target = data.settings.memory_warning_threshold - WORKER_MARGIN
        over = (ram.peak - target * ram.total) if ram is not None and ram.peak is not None and ram.total else 0.0
        rec = max(0, current - math.ceil(over / per)) if over > 0 and per > 0 else 0
        if input_bound:
            rec = max(rec, 1)
    if rec >= current:
        return None
    saves = per * (current - rec) if configured is not None else pss * (n - rec) / n
    ev: dict[str, Any] = {"worker_memory_gb": pss, "worker_count": n, "per_worker_gb": per, "at": t,
                          "at_step": m.step_at(data, t), "used_memory_gb": used, "worker_share_of_used": share,
                          "main_process_memory_gb": main, "data_wait_share": dw.share if dw else None}
    impact = f"Saves ~{gb_figure(saves)} GiB ({gb_figure(per)} GiB/worker)"
    action = f"Set num_workers to {rec}: each worker holds its own copy of the dataset and Python heap."
    also: list[dict[str, Any]] = []
    ld = loading(data)
    if input_bound and ld is not None:
        # The trade-off, both numbers: the memory it frees, and the step time it costs.
        step_new, _ = ld.predict(rec)
        also.append(effects.effect("step_time_seconds", ld.step_seconds, step_new))
        impact += (f"; costs step time {duration_fine(ld.step_seconds)} -> ~{duration_fine(step_new)} "
                   f"(the run waits for data {dw.share:.0%} of the time)")   # type: ignore[union-attr]
        action += " The run waits for data, so it keeps some workers and its steps get slower."
        ev["predicted_step_seconds"] = step_new
    elif p.level is not None:
        action += " If steps then wait for data, use 1."
    f = lever_finding(data, p, "memory.workers", f"Reduce dataloader workers ({current} -> {rec})", action, impact,
                      saves, ev, severity=severity)
    f.expected_effect = lever_effect(data, p, saves, also=also)
    return apply_ref(f, ref, rec, measured=n)


@lever("memory.batch_size")
def batch_size(data: JobData, p: Pressure) -> Finding | None:
    """The batch size from the batches that actually ran (runlens.analyze.measures.batches): the largest that
    ran when the next one failed, else the largest the measured memory-vs-batch relation fits under THETA of
    the limit, rounded. ``current_value`` is the batch the run really used when the config says another."""
    if p.level is None:
        return None
    dom = p.domain
    o = p.oom
    failed_at = need = None
    if o is not None:
        failed_at = o.timestamp if o.timestamp is not None else float("inf")
        need = _memory_needed(o, dom)
    choice = choose_batch(data, dom, failed_at, m.THETA, need)
    if choice is None:
        return None
    bs, rec, fit = choice.current, choice.recommended, choice.fit
    ev: dict[str, Any] = {"batch_size": bs, "last_batch_ran": choice.last_ran, "largest_ok": choice.largest_ok,
                          "failed_batch_inferred": choice.inferred, "basis": choice.basis,
                          "batch_sizes_ran": [[s.batch_size, s.steps] for s in batch_segments(data)][-20:]}
    if fit is not None:
        ev.update(static_gb=fit.static_gb, per_sample_gb=fit.per_sample_gb, total_gb=fit.total_gb,
                  fit_method=fit.method, points=[list(x) for x in fit.points], bs_max=fit.max_batch(m.THETA),
                  theta=m.THETA)
    peak_now = dom.peak if dom is not None else None
    pred = choice.predicted_peak_gb
    saves = (peak_now - pred) if peak_now is not None and pred is not None and choice.basis != "halved" else None
    if choice.basis == "ran":
        impact = f"Batch {rec} ran in this run with a peak of {gb_figure(pred)} GiB"
    elif saves is not None and fit is not None:
        impact = f"Peak -{gb_figure(max(0.0, saves))} GiB ({gb_figure(fit.per_sample_gb)} GiB per sample)"
    else:
        impact = "Activation memory scales with the batch; halving it cuts the part above the model's own memory"
    if choice.inferred:
        impact += f"; batch {bs} (the ramp's next after {choice.last_ran}) failed"
    accum_ref = resolve(data, "gradient_accumulation")
    accum = accum_ref.current_value if isinstance(accum_ref.current_value, int) else 1
    new_accum = accum * math.ceil(bs / rec)
    ev["also_set"] = {accum_ref.path: new_accum} if accum_ref.path else {}
    f = lever_finding(data, p, "memory.batch_size", f"Reduce batch size {bs} -> {rec}",
                      f"Set the batch size {bs} -> {rec} and gradient accumulation {accum} -> {new_accum} to keep the "
                      "effective batch.", impact, saves, ev, confidence=0.5 if choice.basis == "halved" else 1.0)
    if choice.basis == "halved":
        ev["saving_measured"] = False
    f.expected_effect = lever_effect(data, p, saves, predicted_peak=pred)
    apply_ref(f, resolve(data, "batch_size"), rec, measured=bs)
    prefer_measured(f, bs)
    return f


def _memory_needed(o: m.OomOccurrence, dom: m.MemorySeries | None) -> float | None:
    """What the step that failed needed, as far as the failure says: the memory in use plus the allocation that
    failed (the allocator's message), or at least the limit (a kill)."""
    figs = o.details
    tried = figs.get("tried_to_allocate_gb")
    if figs.get("total_capacity_gb") and figs.get("free_gb") is not None and tried:
        return float(figs["total_capacity_gb"] - figs["free_gb"] + tried)
    peak = dom.peak if dom is not None else None
    if tried and peak is not None:
        return float(peak + tried)
    if o.source in ("cgroup", "exit", "suspected") and dom is not None and dom.total:
        return max(float(dom.total), peak or 0.0)
    return None


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
        # An upper bound: that memory holds optimizer state and buffers too, which 8-bit weights do not shrink.
        ev.update(static_gb=static, saving_measured=False)
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
    f.expected_effect = lever_effect(data, p, saves if ev.get("saving_measured") is not False else None)
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
    f.expected_effect = lever_effect(data, p, saves)
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
    # The memory that grows with the batch is measured; how much of it checkpointing frees is not: it depends on
    # which layers keep activations (an MLP's inputs and outputs are not freed). So no saving is claimed and the
    # lever is never the primary one.
    f = lever_finding(data, p, "memory.gradient_checkpointing", "Enable gradient checkpointing",
                      "Turn gradient checkpointing on"
                      + (f" ({ref.hint})" if ref.path is None and ref.hint else "") + ".",
                      f"Recomputes part of the ~{gb_figure(act)} GiB that grows with the batch (how much depends on "
                      f"the model's layers; not measured in this run); {GC_SLOWDOWN}", None,
                      {"activation_gb": act, "saving_measured": False}, confidence=0.5)
    f.expected_effect = lever_effect(data, p, None)
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
    # Activations scaling with the pixel count is a model of the network, not a measurement of this run: the
    # saving is an estimate, so this lever is listed as an alternative, never the primary one.
    f = lever_finding(data, p, "memory.resolution", f"Drop the {r_max}px resolution",
                      f"Train at {new} instead of {res}.",
                      f"Activations ×{(r_new / r_max) ** 2:.2f} (about -{gb_figure(saves)} GiB if they scale with "
                      "the pixel count)", saves,
                      {"activation_gb": act, "resolution_max": r_max, "resolution_new": r_new,
                       "saving_measured": False})
    f.expected_effect = lever_effect(data, p, None)
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
    # Skipping the samples before training removes that peak (the training peak was measured); sampling less
    # often leaves each sampling's peak as it was.
    f.expected_effect = lever_effect(data, p, saves, predicted_peak=train_peak if rec is True else None)
    if rec is not True:
        f.expected_effect = lever_effect(data, p, None)
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
    f.expected_effect = lever_effect(data, p, r)
    f.config_key = "PYTORCH_CUDA_ALLOC_CONF"
    f.config_path = "env:PYTORCH_CUDA_ALLOC_CONF"
    f.current_value, f.current_value_source = (current, "config") if current else (None, "unknown")
    f.recommended_value = "expandable_segments:True"
    return f
