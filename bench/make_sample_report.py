"""Render the HTML report from a realistic fake analysis document, to look at it.

    python bench/make_sample_report.py /tmp/report.html
    python bench/make_sample_report.py /tmp/big.html --steps 1000000 --samples 100000 --errors 2000

The document describes a fine-tuning run whose data workers pushed a 120 GB machine into swap until the kernel
killed it: the case the report exists for. ``sample_analysis`` is also what the report tests render, so what
the lead looks at is what the tests check.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from runlens._version import __version__
from runlens.analyze.contract import SCHEMA_VERSION
from runlens.analyze.downsample import minmax_downsample

START = 1_767_261_600.0  # 2026-01-01 10:00 UTC: fixed so screenshots are comparable
TOTAL_GB = 120.0
GPU_TOTAL_GB = 79.6


def _series(x: np.ndarray, y: np.ndarray, max_points: int | None) -> dict[str, list[float | None]]:
    if max_points is None:
        return {"x": x.tolist(), "y": [None if math.isnan(v) else v for v in y.tolist()]}
    xs, ys = minmax_downsample(x, y, max_points)
    return {"x": xs, "y": ys}


def sample_analysis(
    *,
    steps: int = 8_120,
    samples: int = 1_700,
    errors: int = 42,
    seed: int = 7,
    max_points: int | None = 2_000,
) -> dict[str, Any]:
    """A full analysis document for a run that died of host OOM at step ``steps``.

    Args:
        steps: training steps recorded (the training curves' length before downsampling).
        samples: memory samples, 5 s apart (the memory chart's length before downsampling).
        errors: log findings; the report shows the first 200.
        max_points: downsample every series to this, as the analyzer does; None leaves them raw (to check the
            report defends itself).
    """
    rng = np.random.default_rng(seed)
    interval = 5.0
    t = START + np.arange(samples) * interval
    frac = np.linspace(0, 1, samples)
    # Workers leak: copy-on-write pages of a Python list dataset get touched, each worker grows.
    workers = 34 + 58 * frac**1.6 + rng.normal(0, 0.6, samples) + 3 * np.sin(frac * 40)
    main = 17 + 5 * frac + rng.normal(0, 0.25, samples)
    system = np.minimum(workers + main + 6.5 + rng.normal(0, 0.4, samples), 118.6)
    system[-12:] = np.linspace(system[-13], 119.2, 12)
    system[-1] = 119.2
    swap = np.where(frac > 0.82, (frac - 0.82) * 38, 0.0)
    gpu = 71.5 + 2.5 * np.sin(frac * 300) * (frac > 0.02) + rng.normal(0, 0.2, samples)
    gpu[: max(1, samples // 60)] = np.linspace(0.5, 71, max(1, samples // 60))
    # The collector missed a stretch when the machine was thrashing.
    gap = slice(int(samples * 0.91), int(samples * 0.915) + 1)
    for arr in (workers, main, system):
        arr[gap] = np.nan

    step = np.arange(1, steps + 1, dtype=float)
    sf = step / steps
    loss = (
        2.7 * np.exp(-step / (steps / 6)) + 1.15 + rng.normal(0, 0.06, steps) * (1 + 2 * np.exp(-step / 500))
    )
    loss[int(steps * 0.63)] += 1.4  # a bad batch
    warmup = max(1, steps // 20)
    lr = np.where(
        step < warmup, 3e-4 * step / warmup, 3e-4 * 0.5 * (1 + np.cos(math.pi * (step - warmup) / steps))
    )
    grad = np.abs(rng.normal(1.0, 0.18, steps)) + 0.6 * np.exp(-step / 300)
    grad[rng.integers(0, steps, max(1, steps // 1500))] *= 6
    step_time = 0.41 + rng.normal(0, 0.015, steps) + 0.35 * (sf > 0.82) * sf
    step_time[0] = 38.0  # compile
    step_time[:: max(1, steps // 8)] += 9.0  # checkpoints
    data_time = np.abs(rng.normal(0.03, 0.01, steps)) + 0.3 * (sf > 0.82) * sf

    end = float(t[-1])
    wall = end - START + 60
    events = [
        {"timestamp": START + 2, "type": "sampling_start", "label": "sampling started", "severity": "info"},
        {
            "timestamp": START + wall * 0.05,
            "type": "batch_size",
            "label": "batch size 32 → 48",
            "severity": "info",
        },
    ]
    for k in range(1, 8):
        events.append(
            {
                "timestamp": START + wall * k / 8.3,
                "type": "checkpoint",
                "label": f"checkpoint {k}",
                "severity": "info",
            }
        )
    events += [
        {
            "timestamp": START + wall * 0.74,
            "type": "memory_warning",
            "label": "RAM above 85%",
            "severity": "warning",
        },
        {
            "timestamp": START + wall * 0.86,
            "type": "swap",
            "label": "swapping 1.2 GiB/s",
            "severity": "warning",
        },
        {
            "timestamp": START + wall * 0.93,
            "type": "memory_critical",
            "label": "RAM above 95%",
            "severity": "critical",
        },
        {
            "timestamp": end,
            "type": "oom_kill",
            "label": "OOM killer: worker pid 48213",
            "severity": "critical",
        },
    ]

    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/opt/train/train.py", line 212, in <module>\n    main()\n'
        '  File "/opt/train/train.py", line 187, in main\n    for step, batch in enumerate(loader):\n'
        '  File "/usr/lib/python3.11/site-packages/torch/utils/data/dataloader.py", line 631, in __next__\n'
        "    data = self._next_data()\n"
        "RuntimeError: DataLoader worker (pid 48213) is killed by signal: Killed."
    )
    log_errors: list[dict[str, Any]] = []
    kinds = [
        (
            "error",
            "dataloader",
            "RuntimeError: DataLoader worker (pid 48213) is killed by signal: Killed.",
            traceback,
            {"signal": "SIGKILL", "worker_pid": 48213},
        ),
        (
            "error",
            "cuda_oom",
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.50 GiB",
            (
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.50 GiB. "
                "GPU 0 has a total capacity of 79.10 GiB of which 1.20 GiB is free.\n"
                '  File "/opt/train/model.py", line 88, in forward'
            ),
            {"tried_to_allocate_gb": 2.5, "total_gb": 79.1, "free_gb": 1.2},
        ),
        ("warning", "nan", "Loss is NaN at step 5120; skipping batch", "", {"step": 5120}),
        ("warning", "slow_io", "Dataset shard read took 14.2 s (s3://bucket/shard-0042.tar)", "", {}),
        ("warning", "deprecation", "UserWarning: torch.cuda.amp.autocast(args...) is deprecated", "", {}),
    ]
    for i in range(errors):
        level, cat, msg, text, details = kinds[i % len(kinds)]
        log_errors.append(
            {
                "timestamp": START + wall * (0.2 + 0.8 * i / max(1, errors)),
                "timestamp_source": "line" if i % 7 else "arrival",
                "level": level,
                "category": cat,
                "message": msg,
                "text": text,
                "line_number": 1200 + i * 37,
                "count": 1 + (i % 4 == 3) * (i % 11),
                "memory_at_time_gb": round(60 + 59 * (i / max(1, errors)), 1),
                "details": details,
            }
        )

    lost = {
        "startup": 212.0,
        "data_wait": 0.09 * wall,
        "eval_and_checkpoints": 0.06 * wall,
        "stalls_and_hangs": 0.04 * wall,
        "monitoring": 0.004 * wall,
        "other": 0.02 * wall,
    }
    productive = wall - sum(lost.values())
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": end + 300,
        "runlens_version": __version__,
        "job": {
            "job_id": "20260101-100000-llama7b-sft-3f9c",
            "name": "llama-7b-sft",
            "status": "failed",
            "status_reason": "killed by the kernel OOM killer (host RAM exhausted)",
            "created_at": START - 4,
            "started_at": START,
            "ended_at": end + 20,
            "exit_code": None,
            "exit_signal": 9,
            "host": "gpu-node-17",
            "pid": 48190,
            "argv": ["torchrun", "--nproc_per_node=1", "train.py", "--config", "configs/sft 7b.yaml"],
            "config_dialect": "ai-toolkit",
            "config_path": "configs/sft 7b.yaml",
            "log_path": "/var/log/train/llama-7b-sft.log",
            "world_size": 1,
            "config": {
                "job": "extension",
                "config": {
                    "name": "llama-7b-sft",
                    "process": [
                        {
                            "type": "sft",
                            "train": {"batch_size": 48, "lr": 3e-4, "steps": 20_000},
                            "datasets": [
                                {"folder_path": "/data/sft", "num_workers": 8, "cache_latents": True}
                            ],
                            "logging": {"wandb_api_key": "[redacted]"},
                        }
                    ],
                },
            },
        },
        "summary": {
            "health_score": "critical",
            "peak_memory_gb": 119.2,
            "total_memory_gb": TOTAL_GB,
            "peak_memory_ratio": 119.2 / TOTAL_GB,
            "peak_gpu_memory_gb": 76.8,
            "gpu_total_memory_gb": GPU_TOTAL_GB,
            "training_completed": False,
            "status": "failed",
            "status_reason": "Killed by the kernel OOM killer: host RAM exhausted by 8 data workers.",
            "steps_completed": steps,
            "last_step": steps,
            "duration_minutes": wall / 60,
            "error_count": sum(1 for e in log_errors if e["level"] == "error"),
            "warning_count": sum(1 for e in log_errors if e["level"] == "warning"),
            "goodput": {
                "ratio": productive / wall,
                "productive_seconds": productive,
                "wall_seconds": wall,
                "lost_seconds": lost,
            },
            "monitoring_overhead_ratio": 0.004,
        },
        "recommendations": [
            {
                "id": "memory.workers",
                "severity": "critical",
                "category": "memory",
                "primary": True,
                "title": "Data workers exhausted host RAM",
                "action": "Reduce the number of DataLoader workers from 8 to 4.",
                "impact": "Saves ~29 GiB at peak (7.3 GiB per worker); peak would be ~90 GiB (75%).",
                "impact_value": 29.2,
                "impact_unit": "GB",
                "config_path": "config.process[0].datasets[0].num_workers",
                "current_value": 8,
                "current_value_source": "config",
                "recommended_value": 4,
                "evidence": {
                    "worker_memory_peak_gb": 91.6,
                    "workers": 8,
                    "per_worker_gb": 7.3,
                    "time_above_warning_minutes": 31.5,
                    "oom_kill_pid": 48213,
                },
                "alternatives": ["memory.prefetch"],
            },
            {
                "id": "memory.prefetch",
                "severity": "warning",
                "category": "memory",
                "primary": False,
                "title": "Prefetched batches hold 6 GiB",
                "action": "Lower prefetch_factor to 1 so each worker keeps one batch ready.",
                "impact": "Saves ~6.1 GiB at peak.",
                "impact_value": 6.1,
                "impact_unit": "GB",
                "config_path": "config.process[0].datasets[0].prefetch_factor",
                "current_value": 2,
                "current_value_source": "default",
                "recommended_value": 1,
                "evidence": {"batch_gb": 0.38, "workers": 8},
                "alternatives": ["memory.workers"],
            },
            {
                "id": "throughput.data_wait",
                "severity": "warning",
                "category": "throughput",
                "primary": False,
                "title": "Steps waited on data 9% of the time",
                "action": "Turn on pin_memory and persistent_workers once memory allows.",
                "impact": "Recovers up to ~9% of wall time (41 min).",
                "impact_value": 9.0,
                "impact_unit": "percent_time",
                "config_path": "config.process[0].datasets[0].pin_memory",
                "current_value": None,
                "current_value_source": "unknown",
                "recommended_value": True,
                "evidence": {"data_wait_share": 0.09, "p95_data_time_seconds": 0.61},
                "alternatives": [],
            },
            {
                "id": "training.loss_spike",
                "severity": "info",
                "category": "training",
                "primary": False,
                "title": "One loss spike at step 5,116",
                "action": "Check the batch at step 5,116; consider gradient clipping at 1.0.",
                "impact": "Loss recovered within 40 steps; no lasting damage.",
                "config_path": "config.process[0].train.max_grad_norm",
                "current_value": None,
                "current_value_source": "default",
                "recommended_value": 1.0,
                "evidence": {"step": 5116, "loss": 2.61, "median_loss": 1.21},
                "alternatives": [],
            },
        ],
        "log_errors": log_errors,
        "metrics_timeline": {
            "start_time": START,
            "memory": {
                "system_used_gb": _series(t, system, max_points),
                "main_process_gb": _series(t, main, max_points),
                "workers_gb": _series(t, workers, max_points),
                "gpu_used_gb": _series(t, gpu, max_points),
                "swap_used_gb": _series(t, swap, max_points),
            },
            "total_memory_gb": TOTAL_GB,
            "gpu_total_memory_gb": GPU_TOTAL_GB,
            "thresholds": {
                "warning_ratio": 0.85,
                "critical_ratio": 0.95,
                "warning_gb": 0.85 * TOTAL_GB,
                "critical_gb": 0.95 * TOTAL_GB,
            },
            "training": {
                "loss": _series(step, loss, max_points),
                "learning_rate": _series(step, lr, max_points),
                "gradient_norm": _series(step, grad, max_points),
                "step_time_seconds": _series(step, step_time, max_points),
                "data_time_seconds": _series(step, data_time, max_points),
            },
            "events": events,
            "raw_counts": {"samples": samples, "steps": steps, "events": len(events)},
        },
        "monitoring_cost": [
            {
                "operation": "psutil.process_tree",
                "calls": samples,
                "total_seconds": 0.0021 * samples,
                "share_of_wall": 0.0021 * samples / wall,
                "on_training_thread": False,
            },
            {
                "operation": "nvml.memory_info",
                "calls": samples,
                "total_seconds": 0.0004 * samples,
                "share_of_wall": 0.0004 * samples / wall,
                "on_training_thread": False,
            },
            {
                "operation": "monitor.step",
                "calls": steps,
                "total_seconds": 0.00003 * steps,
                "share_of_wall": 0.00003 * steps / wall,
                "on_training_thread": True,
            },
            {
                "operation": "store.write_batch",
                "calls": samples // 10,
                "total_seconds": 0.004 * samples / 10,
                "share_of_wall": 0.0004 * samples / wall,
                "on_training_thread": False,
            },
        ],
        "hangs": [
            {
                "timestamp": START + wall * 0.9,
                "phase": "data_loading",
                "last_step": int(steps * 0.9),
                "seconds_since_progress": 184.0,
                "cause": "Main thread blocked in DataLoader.__next__ while the machine was swapping.",
                "stack_source": "py-spy",
                "stacks": (
                    'Thread 48190 (idle): "MainThread"\n'
                    "    wait (threading.py:327)\n"
                    "    get (multiprocessing/queues.py:113)\n"
                    "    _try_get_data (torch/utils/data/dataloader.py:1133)\n"
                    "    _next_data (torch/utils/data/dataloader.py:1294)\n"
                    "    __next__ (torch/utils/data/dataloader.py:631)\n"
                    "    main (train.py:187)\n"
                    "    <module> (train.py:212)\n"
                    'Thread 48201 (idle): "pin_memory"\n'
                    "    _pin_memory_loop (torch/utils/data/_utils/pin_memory.py:52)\n"
                ),
            },
        ],
        "environment": {
            "host": "gpu-node-17",
            "platform": "Linux-6.8.0-49-generic-x86_64-with-glibc2.39",
            "cpu_count": 32,
            "total_memory_gb": TOTAL_GB,
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_gb": GPU_TOTAL_GB}],
            "python": "3.11.9",
            "torch": "2.5.1+cu124",
            "cuda": "12.4",
            "runlens": __version__,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="where to write the HTML report")
    parser.add_argument("--steps", type=int, default=8_120)
    parser.add_argument("--samples", type=int, default=1_700)
    parser.add_argument("--errors", type=int, default=42)
    parser.add_argument("--raw", action="store_true", help="skip the analyzer-side downsampling")
    args = parser.parse_args(argv)

    from runlens.report.html import write_report

    t0 = time.perf_counter()
    doc = sample_analysis(
        steps=args.steps, samples=args.samples, errors=args.errors, max_points=None if args.raw else 2_000
    )
    t1 = time.perf_counter()
    path = write_report(doc, args.path)
    t2 = time.perf_counter()
    print(f"{path}: {path.stat().st_size / 1024:,.0f} KiB (document {t1 - t0:.2f}s, render {t2 - t1:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
