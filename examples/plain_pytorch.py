"""runlens in a plain PyTorch training loop: the Monitor pattern, step by step.

    python examples/plain_pytorch.py --db runlens.db --steps 60 --out runs/plain
    runlens analyze <job id printed on the last line>

What each runlens line is for:

* ``runlens.Monitor(name, config=...)`` snapshots the config (what recommendations point into) and starts the
  background writer and system sampler; ``with`` records the end, or the exception with its traceback.
* ``mon.loader(loader)`` times how long each step waited for its batch (``data_time_seconds``): the
  input-bound diagnosis needs it, and only the loop can measure it.
* ``clip_grad_norm_`` already computes the total gradient norm before clipping; pass its return value (a
  tensor: runlens reads it on its own thread, so the step never waits for the device).
* Mixed precision: the GradScaler's scale is passed as an extra scalar, so a collapsing scale (fp16 overflow)
  shows up next to the loss. ``loss_scale(scaler)`` passes it as a tensor: ``scaler.get_scale()`` returns a
  float, which on CUDA waits for the device every step.
* ``mon.phase("eval")`` / ``mon.phase("save")`` mark time that is not training, so it is neither counted as a
  slow step nor mistaken for a hang.

The last line printed is JSON (job id, steps, final loss) for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import runlens
from runlens.integrations.torch import loss_scale


class Regression(Dataset):
    """y = x·w + noise, with a fixed w: a task a small MLP learns in a few dozen steps."""

    def __init__(self, n: int, dim: int, seed: int = 0) -> None:
        w = torch.randn(
            dim, 1, generator=torch.Generator().manual_seed(1234)
        )  # the same task for every split
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ w + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default=None, help="runlens store (default: $RUNLENS_DB or ./runlens.db)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--fail-at-step", type=int, default=None, help="raise an exception at this step")
    p.add_argument("--out", default="runs/plain_pytorch", help="folder for checkpoints")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--num-workers", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = {
        "model": {"dim": 32, "hidden": 128},
        "data": {"batch_size": args.batch_size, "num_workers": args.num_workers},
        "optimizer": {"learning_rate": args.lr, "max_grad_norm": 1.0},
        "train": {
            "steps": args.steps,
            "eval_every": max(1, args.steps // 3),
            "save_every": max(1, args.steps // 2),
            "precision": "bf16-autocast",
        },
        "monitoring": {"sample_interval": 1.0},
    }
    loader = DataLoader(
        Regression(4096, 32),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
        drop_last=True,
    )
    val = DataLoader(Regression(512, 32, seed=1), batch_size=128)
    model = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler("cpu")  # bf16 does not need it; the pattern is the one fp16 uses
    train_cfg = config["train"]

    step = 0
    loss = torch.tensor(float("nan"))
    with runlens.Monitor(name="plain-pytorch", config=config, db=args.db) as mon:
        while step < args.steps:
            for x, y in mon.loader(loader):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.mse_loss(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm before clipping
                scaler.step(opt)
                scaler.update()
                step += 1
                if step == args.fail_at_step:
                    raise RuntimeError(f"injected failure at step {step}")
                mon.step(
                    step,
                    loss=loss.detach(),
                    lr=opt.param_groups[0]["lr"],
                    grad_norm=grad_norm,
                    batch_size=len(x),
                    loss_scale=loss_scale(scaler),
                )
                if step % train_cfg["eval_every"] == 0:
                    with mon.phase("eval"):
                        model.eval()
                        with torch.no_grad():
                            val_loss = sum(
                                nn.functional.mse_loss(model(vx), vy).item() for vx, vy in val
                            ) / len(val)
                        model.train()
                    mon.event("eval_metrics", step=step, val_loss=val_loss)
                if step % train_cfg["save_every"] == 0:
                    path = out / f"checkpoint-{step}.pt"
                    with mon.phase("save"):
                        torch.save(
                            {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, path
                        )
                    mon.event("checkpoint_saved", path=str(path), step=step)
                if step >= args.steps:
                    break
        job_id = mon.job_id
    result = {"job_id": job_id, "global_step": step, "final_loss": float(loss.item()), "pid": os.getpid()}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
