"""Throughput and memory of runlens.analyze.logparse on a large synthetic training log.

Why: ``runlens analyze`` parses log.txt files of multi-day runs (gigabytes of progress bars and metric lines);
the target is >= 50 MB/s on a small machine with memory that does not grow with the file.

The log mixes what real training logs are made of: tqdm bars rewritten with ``\\r`` (the bulk of the bytes),
HF-Trainer-style metric dicts, logging INFO lines, torchrun rank-prefixed lines, a few UserWarnings, NCCL
INFO lines, and some tracebacks (OOM, NCCL timeout, a DataLoader crash) spread through it.

Usage::

    python bench/bench_logparse.py [--mb 200] [--runs 3] [--plain] [--keep]

Prints the size, the median MB/s of ``--runs`` parses (wall clock, and CPU time of this process, which is
steadier on a shared machine), the findings, and the peak RSS of this process. ``--plain`` writes each
progress update on its own line instead of ``\\r`` rewrites (a logger, not a terminal bar): the worst case,
since every byte must then be scanned.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from runlens.analyze.logparse import parse_log

_TRACEBACKS = [
    """Traceback (most recent call last):
  File "/workspace/train.py", line 212, in <module>
    trainer.train()
  File "/opt/conda/lib/python3.10/site-packages/transformers/trainer.py", line 1780, in train
    return inner_training_loop(
  File "/opt/conda/lib/python3.10/site-packages/torch/_tensor.py", line 522, in backward
    torch.autograd.backward(
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of \
79.15 GiB of which 1.23 GiB is free. Including non-PyTorch memory, this process has 77.90 GiB memory in use. \
Of the allocated memory 75.00 GiB is allocated by PyTorch, and 1.50 GiB is reserved by PyTorch but \
unallocated.
""",
    """[rank3]:[E1206 18:44:12.715298746 ProcessGroupNCCL.cpp:607] [Rank 3] Watchdog caught collective \
operation timeout: WorkNCCL(SeqNum=7753, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran \
for 600061 milliseconds before timing out.
""",
    """Traceback (most recent call last):
  File "/workspace/train.py", line 88, in <module>
    for batch in loader:
  File "/opt/conda/lib/python3.10/site-packages/torch/utils/data/dataloader.py", line 1146, in _try_get_data
    raise RuntimeError(f'DataLoader worker (pid(s) {pids_str}) exited unexpectedly') from e
RuntimeError: DataLoader worker (pid(s) 4242) exited unexpectedly
""",
]


def _progress(rng: random.Random, step: int, sep: str = "\r") -> str:
    """One tqdm line as a file sees it: 20-60 ``\\r`` rewrites, then a newline (``sep="\\n"``: separate
    lines instead)."""
    total = 100_000
    parts = []
    for k in range(rng.randint(20, 60)):
        n = step + k
        pct = n * 100 // total
        filled = pct // 10
        parts.append(
            f"Epoch 3: {pct:3d}%|{'█' * filled}{' ' * (10 - filled)}| {n}/{total} "
            f"[1:{n % 60:02d}:{n % 60:02d}<2:{59 - n % 60:02d}:00,  4.{n % 10}1it/s, "
            f"loss={rng.random():.4f}, lr=2.0e-05, v_num=7]"
        )
    return sep.join(parts)


def generate(path: Path, megabytes: int, seed: int = 7, plain: bool = False) -> int:
    """Write a ~``megabytes`` MB realistic log to ``path``; return its size in bytes."""
    rng = random.Random(seed)
    target = megabytes * 1_000_000
    size = 0
    step = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while size < target:
            lines = []
            for _ in range(200):
                step += 1
                r = rng.random()
                if r < 0.40:
                    lines.append(_progress(rng, step, "\n" if plain else "\r"))
                elif r < 0.70:
                    lines.append(
                        f"{{'loss': {rng.random():.4f}, 'grad_norm': {rng.random() * 3:.3f}, "
                        f"'learning_rate': 1.9e-05, 'epoch': {step / 10000:.2f}}}"
                    )
                elif r < 0.85:
                    lines.append(
                        f"[INFO|trainer.py:2926] 2024-05-01 12:{step % 60:02d}:{step % 60:02d},430 >> "
                        f"step {step} throughput {rng.randint(1000, 9000)} tokens/s "
                        f"mem {rng.random() * 80:.1f}GB"
                    )
                elif r < 0.95:
                    lines.append(
                        f"[default{step % 8}]:step {step} | loss {rng.random() * 4:.3f} | "
                        f"lr 3.0e-4 | tokens/s {rng.randint(150000, 190000)}"
                    )
                elif r < 0.985:
                    lines.append(
                        f"host-{step % 4}:{1000 + step % 8}:{2000 + step % 8} [{step % 8}] NCCL INFO "
                        f"Channel {step % 32:02d}/0 : {step % 8}[{step % 8}] -> {(step + 1) % 8}[0] via P2P"
                    )
                elif r < 0.997:
                    lines.append(
                        "/opt/conda/lib/python3.10/site-packages/torch/utils/data/dataloader.py:557: "
                        "UserWarning: This DataLoader will create 16 worker processes in total.\n"
                        "  warnings.warn(_create_warning_msg("
                    )
                elif r < 0.999:
                    lines.append(f"eval: eval_error_rate: 0.0{step % 9} errors=0 nano-finance split")
                else:
                    lines.append(rng.choice(_TRACEBACKS).rstrip("\n"))
            chunk = "\n".join(lines) + "\n"
            f.write(chunk)
            size += len(chunk.encode("utf-8"))
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the synthetic log in MB (default 200)")
    ap.add_argument("--runs", type=int, default=3, help="parses to time; the median is reported (default 3)")
    ap.add_argument(
        "--plain", action="store_true", help="progress updates on separate lines, no \\r rewrites"
    )
    ap.add_argument("--keep", action="store_true", help="keep the generated log and print its path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="runlens-bench-"))
    path = tmp / "log.txt"
    t0 = time.perf_counter()
    size = generate(path, args.mb, plain=args.plain)
    print(f"generated {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s: {path}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rates, cpu_rates = [], []
    findings = []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        findings = parse_log(path)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        rates.append(size / 1e6 / dt)
        cpu_rates.append(size / 1e6 / dc)
        mb = size / 1e6
        print(f"  parse: {dt:.2f} s wall ({mb / dt:.1f} MB/s), {dc:.2f} s CPU ({mb / dc:.1f} MB/s)")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    scale = 1 if sys.platform != "darwin" else 1 / 1024
    print(
        f"median: {statistics.median(rates):.1f} MB/s wall, "
        f"{statistics.median(cpu_rates):.1f} MB/s CPU time, "
        f"over {args.runs} runs ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"Python {sys.version.split()[0]})"
    )
    print(
        f"findings: {len(findings)} distinct, {sum(f.count for f in findings)} occurrences: "
        + ", ".join(sorted({f"{f.level}/{f.category}" for f in findings}))
    )
    print(f"peak RSS: {peak_kb * scale / 1024:.1f} MiB (before parsing: {rss_before * scale / 1024:.1f} MiB)")
    if args.keep:
        print(f"kept {path}")
    else:
        path.unlink()
        tmp.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
