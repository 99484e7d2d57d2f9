"""A tiny real CPU training loop, for runlens's tests and benchmarks.

    python tests/scripts/train_tiny.py --steps 40 --workers 2 --sleep 0.05 --monitor --exit-code 3

Prints one line per step to stdout (and every 5th to stderr), so the output tee has real traffic; ``--pidfile``
writes this process's pid once the DataLoader workers are up, so tests know when to send signals.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Noise(Dataset):  # type: ignore[type-arg]
    """Random regression data; ``extra_mb`` of per-item payload makes the workers' memory visible."""

    def __init__(self, n: int, dim: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) * 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=int(os.environ.get("TINY_STEPS", "20")))
    p.add_argument("--workers", type=int, default=int(os.environ.get("TINY_WORKERS", "2")))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--sleep", type=float, default=float(os.environ.get("TINY_SLEEP", "0")))
    p.add_argument("--exit-code", type=int, default=int(os.environ.get("TINY_EXIT_CODE", "0")))
    p.add_argument("--monitor", action="store_true", help="record through runlens.Monitor")
    p.add_argument("--name", default="tiny")
    p.add_argument("--pidfile", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--seconds", type=float, default=None, help="run for this long instead of --steps")
    p.add_argument("--warmup", type=int, default=0, help="steps left out of the reported throughput")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(args.dim, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(Noise(args.samples, args.dim), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)

    mon = None
    if args.monitor:
        import runlens

        mon = runlens.Monitor(name=args.name)
        mon.__enter__()

    def batches():  # epochs until enough steps
        while True:
            yield from loader

    step = 0
    started = time.perf_counter()
    timed_from, timed_step, timed_cpu = started, 0, time.thread_time()
    source = mon.loader(batches()) if mon is not None and hasattr(mon, "loader") else batches()
    for x, y in source:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mon is not None:
            mon.step(step, loss=loss.detach(), lr=0.01, batch_size=len(x))
        if not args.quiet:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
            if step % 5 == 0:
                print(f"stderr at step {step}", file=sys.stderr, flush=True)
        if step == 1 and args.pidfile:
            tmp = args.pidfile + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(tmp, args.pidfile)
        if args.sleep:
            time.sleep(args.sleep)
        step += 1
        if step == args.warmup:
            timed_from, timed_step, timed_cpu = time.perf_counter(), step, time.thread_time()
        if args.seconds is not None:
            if time.perf_counter() - timed_from >= args.seconds and step > args.warmup:
                break
        elif step >= args.steps:
            break
    elapsed = time.perf_counter() - timed_from
    cpu = time.thread_time() - timed_cpu
    timed = step - timed_step
    print(f"done {timed} steps in {elapsed:.3f} s ({timed / elapsed:.2f} steps/s, training-thread CPU {cpu:.3f} s)",
          flush=True)
    if mon is not None:
        mon.__exit__(None, None, None)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
