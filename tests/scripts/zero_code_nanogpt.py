"""A nanoGPT-style loop with no runlens in it: prints what karpathy/nanoGPT's train.py prints.

    python tests/scripts/zero_code_nanogpt.py HISTORY.json [--iters 60] [--log-interval 5] [--nan-at N]

``iter {n}: loss {loss:.4f}, time {dt*1000:.2f}ms, mfu {mfu:.2f}%`` every log interval and ``step {n}: train loss
{a:.4f}, val loss {b:.4f}`` every eval interval, as nanoGPT does; HISTORY.json gets (iter, loss) of each printed
line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("history")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--log-interval", type=int, default=5)
    p.add_argument("--eval-interval", type=int, default=25)
    p.add_argument("--nan-at", type=int, default=-1)
    a = p.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 16)
    y = x.sum(1, keepdim=True)
    printed = []
    t0 = time.time()
    for it in range(a.iters + 1):
        if it % a.eval_interval == 0 and it > 0:
            with torch.no_grad():
                v = torch.nn.functional.mse_loss(model(x), y).item()
            print(f"step {it}: train loss {v:.4f}, val loss {v * 1.05:.4f}", flush=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(0.01)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if it % a.log_interval == 0:
            lossf = float("nan") if 0 <= a.nan_at <= it else loss.item()
            print(f"iter {it}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {12.34:.2f}%", flush=True)
            printed.append((it, round(lossf, 4) if math.isfinite(lossf) else "nan"))
    with open(a.history, "w") as fh:
        json.dump(printed, fh)


if __name__ == "__main__":
    main()
