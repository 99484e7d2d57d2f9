"""Memory against batch size: the measured relation ``M = static + batch_size × per_sample`` in one memory
domain, the static memory after load, and the parameter counts a run reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from runlens.analyze.jobdata import JobData
from runlens.analyze.measures.columns import col, details_of, finite, memo
from runlens.analyze.measures.memory import MemorySeries, memory_domain
from runlens.analyze.measures.phases import phase_name
from runlens.analyze.measures.timing import main_rank_steps
from runlens.core.phases import STATIC_PHASES


def current_batch_size(data: JobData) -> int | None:
    """The batch size of the main rank's last step that recorded one."""
    bs = finite(col(main_rank_steps(data), "batch_size"))
    return int(bs[-1]) if bs.size else None


# The share of memory a batch may fill: headroom for fragmentation and peaks the samples missed (accelerate's
# find_executable_batch_size shrinks by 0.9 on each OOM:
# https://github.com/huggingface/accelerate/blob/main/src/accelerate/utils/memory.py).
THETA = 0.85


@dataclass(frozen=True)
class BatchFit:
    """``M = static_gb + batch_size × per_sample_gb`` in one memory domain: model and optimizer state that does not
    grow with the batch, plus activations that grow linearly with it (the split DeepSpeed's autotuner profiles,
    https://www.deepspeed.ai/tutorials/autotuning/)."""

    static_gb: float
    per_sample_gb: float
    total_gb: float
    domain: str
    method: str                  # "fit" (≥2 batch sizes) or "static_snapshot"
    points: tuple[tuple[int, float], ...]

    def max_batch(self, theta: float = THETA) -> int:
        """The largest batch whose predicted memory stays under ``theta`` of the total."""
        if self.per_sample_gb <= 0:
            return 0
        return math.floor((theta * self.total_gb - self.static_gb) / self.per_sample_gb)

    def predict(self, batch_size: int) -> float:
        """The memory the relation predicts at ``batch_size``, GiB."""
        return self.static_gb + batch_size * self.per_sample_gb


_STATIC_EVENTS = ("model_loaded", "static_memory", "setup_done")


def batch_memory_fit(data: JobData, series: MemorySeries | None = None) -> BatchFit | None:
    """The measured memory-vs-batch-size relation.

    With two or more batch sizes observed (``batch_size_changed``), the least-squares line through each batch
    size's peak; with one, the static memory from a snapshot taken after load (an event, or the last sample before
    the first step) and ``per_sample = (peak - static) / bs``.
    """
    series = series or memory_domain(data)
    if series is None or not series.total:
        return None
    total = float(series.total)
    return memo(data, f"batch_fit:{series.kind}:{id(series)}", lambda: _batch_memory_fit(data, series, total))


def batch_peaks(data: JobData, series: MemorySeries) -> dict[int, float]:
    """Each batch size's peak memory in ``series``, over the samples taken during its own steps."""
    return memo(data, f"batch_peaks:{series.kind}:{id(series)}", lambda: _batch_peaks(data, series))


def _batch_peaks(data: JobData, series: MemorySeries) -> dict[int, float]:
    steps = main_rank_steps(data)
    bs = col(steps, "batch_size")
    ts = col(steps, "timestamp")
    if not np.isfinite(bs).any():
        return {}
    # Each sample belongs to the step whose interval [end - step_time, end] holds it (steps sorted by time);
    # a batch size's point is the peak over its own steps' samples, so 4 -> 8 -> 4 does not mix them.
    st = col(steps, "step_time_seconds")
    order = np.argsort(ts, kind="stable")
    ts_o, bs_o = ts[order], bs[order]
    med = float(np.nanmedian(st)) if np.isfinite(st).any() else 0.0
    start_o = ts_o - np.where(np.isfinite(st[order]), st[order], med)
    t = series.timestamps
    idx = np.searchsorted(ts_o, t, side="left")
    inside = idx < ts_o.size
    j = np.clip(idx, 0, max(ts_o.size - 1, 0))
    inside &= (start_o[j] <= t) & np.isfinite(series.used) & np.isfinite(bs_o[j]) & (bs_o[j] > 0)
    points: dict[int, float] = {}
    if inside.any():
        frame = pd.DataFrame({"bs": bs_o[j][inside].astype(int), "used": series.used[inside]})
        points = {int(k): float(v) for k, v in frame.groupby("bs")["used"].max().items()}
    return points


def _batch_memory_fit(data: JobData, series: MemorySeries, total: float) -> BatchFit | None:
    points = batch_peaks(data, series)
    if not points:
        return None
    if len(points) >= 2:
        x = np.array(list(points), dtype=float)
        y = np.array(list(points.values()))
        slope, intercept = np.polyfit(x, y, 1)
        if slope > 0:
            return BatchFit(float(intercept), float(slope), total, series.kind, "fit",
                            tuple(points.items()))
    b = current_batch_size(data)
    peak = points.get(b) if b is not None else None
    static = static_memory(data, series)
    if b is None or peak is None or static is None or peak <= static or b <= 0:
        return None
    return BatchFit(static, (peak - static) / b, total, series.kind, "static_snapshot", ((b, peak),))


def static_memory(data: JobData, series: MemorySeries) -> float | None:
    """Memory after the model and optimizer are loaded, before activations: an explicit event's snapshot,
    else the end of a load/setup phase, else the last sample before the first step."""
    cand = memo(data, "static_time", lambda: _static_time(data))
    if cand is None:
        return None
    ok = (series.timestamps < cand) & np.isfinite(series.used)
    if not ok.any():
        return None
    return float(series.used[np.nonzero(ok)[0][-1]])


def _static_time(data: JobData) -> float | None:
    steps = main_rank_steps(data)
    first_step = finite(col(steps, "timestamp"))
    t0 = None
    if first_step.size:
        # The first step() call comes after the first forward/backward: go back one step time, so the
        # snapshot is from before the first activations.
        st = col(steps, "step_time_seconds")
        back = st[0] if st.size and np.isfinite(st[0]) else (np.nanmedian(st) if np.isfinite(st).any() else 0.0)
        t0 = float(first_step.min()) - float(back)
    cand: float | None = None
    ev = data.events_of(*_STATIC_EVENTS, "phase_end")
    if ev is not None and not ev.empty:
        for row in ev.to_dict("records"):
            d = details_of(row)
            static = row["event_type"] in _STATIC_EVENTS or phase_name(d) in STATIC_PHASES
            if static and (t0 is None or row["timestamp"] <= t0 + 1e-6):
                cand = float(row["timestamp"])
    return cand if cand is not None else t0


def model_info(data: JobData) -> dict[str, Any]:
    """Parameter counts a run reported (a ``model_info``/``model_loaded`` event), for closed-form savings."""
    info: dict[str, Any] = {}
    ev = data.events
    if ev is not None and not ev.empty:
        for row in ev[ev["event_type"].isin(["model_info", "model_loaded", "model"])].to_dict("records"):
            d = details_of(row)
            for key, names in (("parameters", ("parameters", "num_parameters", "params", "total_parameters")),
                               ("trainable_parameters", ("trainable_parameters", "trainable_params")),
                               ("bytes_per_param", ("bytes_per_param",))):
                for n in names:
                    if isinstance(d.get(n), (int, float)):
                        info[key] = d[n]
            if isinstance(d.get("dtype"), str):
                info["dtype"] = d["dtype"]
    return info


def bytes_per_param(dtype: Any) -> float | None:
    """Bytes per parameter of a dtype name (torch, Lightning precision and quantization spellings)."""
    if not isinstance(dtype, str):
        return None
    d = dtype.lower().replace("torch.", "")
    table = {"fp32": 4, "float32": 4, "float": 4, "32": 4, "32-true": 4, "bf16": 2, "bfloat16": 2, "fp16": 2,
             "float16": 2, "half": 2, "16": 2, "bf16-mixed": 2, "16-mixed": 2, "bf16-true": 2,
             "qfloat8": 1, "float8": 1, "uint8": 1, "int8": 1, "convrot8": 1, "fp8": 1, "nf4": 0.5, "fp4": 0.5,
             "nvfp4": 0.5, "convrot4": 0.5, "uint4": 0.5, "uint3": 0.375, "uint2": 0.25}
    return float(table[d]) if d in table else None
