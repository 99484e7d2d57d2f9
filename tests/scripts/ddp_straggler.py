"""A real data-parallel job: N ranks of gloo DDP on the CPU, each with a runlens Monitor; one rank does extra
work every step, so every rank waits for it at the gradient all-reduce (a straggler).

    runlens collect -- torchrun --nproc_per_node 2 tests/scripts/ddp_straggler.py --steps 60 --slow-rank 1 --extra 0.02
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import runlens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--slow-rank", type=int, default=1)
    ap.add_argument("--extra", type=float, default=0.02, help="CPU seconds of extra work on the slow rank each step")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(args.batch, 64)
    y = torch.randn(args.batch, 1)
    with runlens.Monitor(name="ddp-straggler", config={"batch_size": args.batch, "learning_rate": 0.01}) as mon:
        for step in range(args.steps):
            t0 = time.perf_counter()
            if rank == args.slow_rank:
                _busy(args.extra)   # e.g. a slower disk, a throttled CPU, a noisy neighbour on this host
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()   # the all-reduce: every rank waits here for the slowest
            opt.step()
            mon.step(step, loss=loss.detach(), batch_size=args.batch, step_time=time.perf_counter() - t0)
    dist.destroy_process_group()
    if rank == 0:
        print(f"done: {args.steps} steps on {int(os.environ.get('WORLD_SIZE', '1'))} ranks", flush=True)


def _busy(seconds: float) -> None:
    """``seconds`` of CPU work, counted on this thread's CPU clock: the same work however loaded the machine."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


if __name__ == "__main__":
    main()
