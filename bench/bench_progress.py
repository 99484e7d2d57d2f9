"""The cost of reading steps from a child's output: the progress parser runs on ``runlens collect``'s tee thread,
which also copies the child's pipes, so it must never slow the child's output.

Three measurements:

1. **The parser alone**, in this process: CPU per line of ``ProgressParser.feed_bytes`` for lines that are not
   progress (most of a run's output: they stop at one byte-level regular expression), for progress lines of a
   few formats, and for tqdm redraws.
2. **The tee, with and without the parser**: a child writes ``--lines`` short lines (1 in ``--every`` a nanoGPT
   progress line) as fast as it can into a pipe that ``LogTee`` reads, once with the parser behind it and once
   without: the child's lines/s and the tee thread's CPU per line.
3. **End to end**: the same child bare (its output to a pipe that ``cat`` drains) and under ``runlens collect``:
   lines/s as the child sees them.

Usage::

    python bench/bench_progress.py [--lines 1000000] [--every 100] [--runs 3]

Run on an idle machine; the medians of ``--runs`` runs are printed (the machine's load first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runlens.collect.output_steps import OutputSteps
from runlens.collect.progress_lines import ProgressParser
from runlens.collect.tee import LogTee

CHILD = r"""
import sys, time
n, every = int(sys.argv[1]), int(sys.argv[2])
w = sys.stdout.write
t0 = time.perf_counter()
for i in range(n):
    if i % every == 0:
        w(f"iter {i}: loss {2.0 + (i % 97) / 100:.4f}, time 12.34ms, mfu 41.00%\n")
    else:
        w(f"sample {i} done\n")
sys.stdout.flush()
print(f"{n / (time.perf_counter() - t0):.0f}", file=sys.stderr)
"""

SAMPLES = {
    "not progress": b"sample 123456 done",
    "warning (candidate, no step)": b"UserWarning: the loss function is deprecated",
    "nanoGPT": b"iter 1631: loss 4.0863, time 561.94ms, mfu 16.68%",
    "torchtitan": b"[rank0]:[titan] 2025-06-16 22:30:50,322 - root - INFO - step: 200  loss:  6.1384  "
                  b"memory: 49.66GiB(52.28%)  tps: 5,856  tflops: 339.16  mfu: 34.29%",
    "HF log dict": b"{'loss': '2.119', 'grad_norm': '37.66', 'learning_rate': '4.583e-05', 'epoch': '0.25'}",
    "Megatron": b" iteration      122/  250000 | consumed samples:       124928 | elapsed time per iteration (ms): "
                b"86545.2 | learning rate: 9.150E-06 | global batch size:  1024 | lm loss: 2.504220E+00 |",
}


def parser_cpu(n: int) -> dict[str, float]:
    """Microseconds of CPU per line for each kind of line."""
    out = {}
    for name, line in SAMPLES.items():
        p = ProgressParser()
        t0 = time.thread_time()
        for i in range(n):
            p.feed_bytes(line, float(i))
            if i % 1000 == 0:
                p.drain()
        out[name] = (time.thread_time() - t0) / n * 1e6
    p = ProgressParser()
    bar = "Epoch 0:  {pct:3d}%|#####     | {n}/100000 [00:05<00:05, 19.5it/s, v_num=0, train_loss_step=0.{n}]"
    t0 = time.thread_time()
    for i in range(1, n + 1):
        p.feed_bytes(bar.format(pct=i * 100 // n, n=i).encode(), float(i), 2, True)
        if i % 1000 == 0:
            p.end_round(float(i))
            p.drain()
    out["Lightning bar redraw"] = (time.thread_time() - t0) / n * 1e6
    return out


class _NullWriter:
    def put_step(self, row: Any) -> None:
        pass

    def put_event(self, row: Any, key: Any = None) -> None:
        pass


def tee_run(lines: int, every: int, with_parser: bool) -> tuple[float, float, int]:
    """(child lines/s, tee CPU µs per line, steps read) for one child behind a LogTee."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(lines), str(every)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    steps = OutputSteps(_NullWriter(), hold=0.0) if with_parser else None
    with tempfile.TemporaryFile() as log:
        tee = LogTee([(proc.stdout.fileno(), None)], log, progress=steps).start()
        err = proc.stderr.read()
        proc.wait()
        tee.finish()
    if steps is not None:
        steps.finish()
    return float(err.decode().split()[-1]), tee.cpu_seconds / lines * 1e6, steps.written if steps else 0


def end_to_end(lines: int, every: int, collect: bool, db: Path) -> float:
    """The child's lines/s bare (a pipe drained by cat) or under runlens collect (output to /dev/null)."""
    child = [sys.executable, "-c", CHILD, str(lines), str(every)]
    argv = ([sys.executable, "-m", "runlens", "collect", "--db", str(db), "--no-analyze", "--", *child]
            if collect else child)
    with open(os.devnull, "wb") as null:
        if collect:
            proc = subprocess.run(argv, stdout=null, stderr=subprocess.PIPE, check=True)
            err = proc.stderr
        else:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=null)
            proc = subprocess.run(argv, stdout=cat.stdin, stderr=subprocess.PIPE, check=True)
            assert cat.stdin is not None
            cat.stdin.close()
            cat.wait()
            err = proc.stderr
    return float(err.decode().split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=100, help="one progress line in this many")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    print(f"\n1. parser CPU per line ({a.lines // 10:,} lines each):")
    for name, us in parser_cpu(a.lines // 10).items():
        print(f"   {name:30s} {us:6.2f} µs")
    print(f"\n2. LogTee reading {a.lines:,} lines (1 in {a.every} a progress line), median of {a.runs}:")
    for label, on in (("without the parser", False), ("with the parser", True)):
        runs = [tee_run(a.lines, a.every, on) for _ in range(a.runs)]
        rate = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(f"   {label:20s} child {rate:12,.0f} lines/s   tee CPU {cpu:.2f} µs/line   steps {runs[0][2]:,}")
    print(f"\n3. end to end, {a.lines:,} lines, median of {a.runs}:")
    with tempfile.TemporaryDirectory() as tmp:
        for label, collect in (("bare (pipe to cat)", False), ("runlens collect", True)):
            rates = [end_to_end(a.lines, a.every, collect, Path(tmp) / "bench.db") for _ in range(a.runs)]
            print(f"   {label:20s} child {statistics.median(rates):12,.0f} lines/s")


if __name__ == "__main__":
    main()
