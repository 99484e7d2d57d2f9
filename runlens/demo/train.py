"""The training job behind ``runlens demo``: a small regression model trained on the CPU, instrumented with
the Monitor exactly as the README shows, whose config decides whether it is healthy or troubled.

    python -m runlens.demo.train --config config.yaml --out DIR

Nothing in here fakes a measurement. The troubled scenario's problems really happen and runlens measures them:

* ``data.worker_cache_mb``: every DataLoader worker builds its own in-memory cache of "decoded" samples (a
  common pattern that multiplies memory by ``num_workers``); the pages are written, so they are private to
  each worker and show in its PSS.
* ``data.sample_delay_ms``: each sample takes this long to "decode" (a sleep, like waiting on disk or a
  JPEG decoder), so with too few workers the loop waits for its batches.
* ``optimizer.learning_rate``: SGD with momentum on a least-squares problem is stable only below a learning
  rate set by the data's curvature; warming up past it makes the loss grow geometrically until it overflows to
  inf and then NaN.

It uses PyTorch when installed, else NumPy (a hand-written MLP and a ``multiprocessing`` pool as the loader),
so ``runlens demo`` works from a bare ``pip install runlens``. It ships inside the package so it runs from a
wheel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np

import runlens
from runlens.integrations.base import preload

INPUT_DIM = 64
N_TRAIN = 8192
N_VAL = 1024
SEED = 0


def load_config(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        return dict(yaml.safe_load(f) or {})


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A least-squares task with a known answer: y = x·w + noise, the same w for every split."""
    w = np.random.default_rng(1234).standard_normal((INPUT_DIM, 1)).astype(np.float32) / math.sqrt(INPUT_DIM)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, INPUT_DIM)).astype(np.float32)
    y = (x @ w + 0.05 * rng.standard_normal((n, 1))).astype(np.float32)
    return x, y


def learning_rate(step: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then constant."""
    return peak * min(1.0, step / max(1, warmup))


class WorkerCache:
    """Per-process cache of "decoded" samples, built on first use in each DataLoader worker.

    Each worker fills its own buffer, so the pages are private (copy-on-write would share an untouched one):
    ``cache_mb`` × workers of real memory, which is what runlens's PSS measurement must see.
    """

    buffer: np.ndarray | None = None

    @classmethod
    def build(cls, cache_mb: int) -> None:
        if cache_mb > 0 and cls.buffer is None:
            cls.buffer = np.full(cache_mb * 2**20 // 8, 1.0)


# -- PyTorch ---------------------------------------------------------------------------------------------


def train_torch(cfg: dict[str, Any], out: Path, mon: Any) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

    data_cfg, opt_cfg, train_cfg, model_cfg = cfg["data"], cfg["optimizer"], cfg["train"], cfg["model"]
    delay = float(data_cfg.get("sample_delay_ms") or 0) / 1000.0
    cache_mb = int(data_cfg.get("worker_cache_mb") or 0)

    class Batches(Dataset):  # type: ignore[type-arg]
        """Reads a whole batch per call (like a packed or sharded dataset): the per-sample Python overhead of
        a map-style dataset would make even the healthy run wait for data on a two-core machine."""

        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, indices: list[int]) -> tuple[Any, Any]:
            WorkerCache.build(cache_mb)
            if delay:
                time.sleep(delay * len(indices))  # "decoding" the samples
            idx = torch.as_tensor(indices)
            # index_select, not x[list]: advanced indexing with a Python list is ~40x slower on CPU.
            return self.x.index_select(0, idx), self.y.index_select(0, idx)

    # The troubled scenario asks for more workers than a small machine has cores on purpose; torch's warning
    # about it would be printed twice and say what the report says with numbers.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # the demo shares two cores with its DataLoader workers
    workers = int(data_cfg.get("num_workers") or 0)
    dataset = Batches(*make_data(N_TRAIN, SEED))
    batches = BatchSampler(RandomSampler(dataset), batch_size=int(data_cfg["batch_size"]), drop_last=True)
    loader = DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=int(data_cfg.get("prefetch_factor") or 2) if workers else None,
    )
    vx, vy = (torch.from_numpy(a) for a in make_data(N_VAL, SEED + 1))
    hidden = int(model_cfg["hidden"])
    model = nn.Sequential(
        nn.Linear(INPUT_DIM, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )
    peak, warmup = float(opt_cfg["learning_rate"]), int(opt_cfg.get("warmup_steps") or 0)
    opt = torch.optim.SGD(
        model.parameters(), lr=learning_rate(1, peak, warmup), momentum=float(opt_cfg.get("momentum") or 0.0)
    )
    max_norm = opt_cfg.get("max_grad_norm")
    steps, eval_every, save_every = (
        int(train_cfg["steps"]),
        int(train_cfg["eval_every"]),
        int(train_cfg["save_every"]),
    )
    print_every = max(1, steps // 10)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    step, loss = 0, torch.tensor(float("nan"))
    while step < steps:
        for x, y in mon.loader(loader):
            step += 1
            lr = learning_rate(step, peak, warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
            # clip_grad_norm_ returns the norm before clipping; max_norm=inf measures without clipping.
            grad_norm = nn.utils.clip_grad_norm_(
                model.parameters(), float(max_norm) if max_norm else math.inf
            )
            opt.step()
            mon.step(step, loss=loss.detach(), lr=lr, grad_norm=grad_norm, batch_size=len(x))
            if step % print_every == 0 or step == steps:
                print(f"step {step:5d}/{steps}  loss {loss.item():.4g}  lr {lr:.3g}", flush=True)
            if step % eval_every == 0 or step == steps:
                with mon.phase("eval"), torch.no_grad():
                    val_loss = float(nn.functional.mse_loss(model(vx), vy))
                mon.event("eval_metrics", step=step, val_loss=val_loss)
            if step % save_every == 0 or step == steps:
                path = ckpt_dir / "last.pt"
                with mon.phase("save"):
                    torch.save(
                        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, path
                    )
                mon.event("checkpoint_saved", path=str(path), step=step)
            if step >= steps:
                break
    return {"steps": step, "final_loss": float(loss.item()), "backend": "torch", "torch": torch.__version__}


# -- NumPy -----------------------------------------------------------------------------------------------

_POOL_DATA: dict[str, Any] = {}


def _pool_init(x: np.ndarray, y: np.ndarray, delay: float, cache_mb: int) -> None:
    _POOL_DATA.update(x=x, y=y, delay=delay)
    WorkerCache.build(cache_mb)


def _pool_batch(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if _POOL_DATA["delay"]:
        time.sleep(_POOL_DATA["delay"] * len(indices))
    return _POOL_DATA["x"][indices], _POOL_DATA["y"][indices]


class NumpyLoader:
    """Batches from a pool of worker processes (or the main process with 0 workers), reshuffled every
    epoch."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, workers: int, delay: float, cache_mb: int
    ) -> None:
        self.x, self.y, self.batch_size, self.workers = x, y, batch_size, workers
        self.delay, self.cache_mb = delay, cache_mb
        self.rng = np.random.default_rng(SEED)
        self.pool: Any = None
        if workers > 0:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            self.pool = ctx.Pool(workers, initializer=_pool_init, initargs=(x, y, delay, cache_mb))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.rng.permutation(len(self.x))
        batches = [
            order[i : i + self.batch_size]
            for i in range(0, len(order) - self.batch_size + 1, self.batch_size)
        ]
        if self.pool is None:
            _pool_init(self.x, self.y, self.delay, self.cache_mb)
            yield from map(_pool_batch, batches)
        else:
            yield from self.pool.imap(_pool_batch, batches, chunksize=1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class NumpyMLP:
    """Two tanh layers and a linear head, with SGD + momentum and hand-written gradients."""

    def __init__(self, hidden: int) -> None:
        rng = np.random.default_rng(SEED)
        dims = [(INPUT_DIM, hidden), (hidden, hidden), (hidden, 1)]
        self.params = []
        for i, o in dims:
            self.params += [
                rng.uniform(-1, 1, (i, o)).astype(np.float32) / math.sqrt(i),
                np.zeros(o, np.float32),
            ]
        self.velocity = [np.zeros_like(p) for p in self.params]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        w1, b1, w2, b2, w3, b3 = self.params
        h1 = np.tanh(x @ w1 + b1)
        h2 = np.tanh(h1 @ w2 + b2)
        return h2 @ w3 + b3, [x, h1, h2]

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        with np.errstate(all="ignore"):
            pred, (a0, h1, h2) = self.forward(x)
            diff = pred - y
            loss = float(np.mean(diff**2))
            d3 = 2 * diff / len(x)
            w2, w3 = self.params[2], self.params[4]
            d2 = (d3 @ w3.T) * (1 - h2**2)
            d1 = (d2 @ w2.T) * (1 - h1**2)
            grads = [a0.T @ d1, d1.sum(0), h1.T @ d2, d2.sum(0), h2.T @ d3, d3.sum(0)]
        return loss, grads

    def step(self, grads: list[np.ndarray], lr: float, momentum: float) -> None:
        with np.errstate(all="ignore"):
            for p, v, g in zip(self.params, self.velocity, grads, strict=True):
                v *= momentum
                v += g
                p -= lr * v


def train_numpy(cfg: dict[str, Any], out: Path, mon: Any) -> dict[str, Any]:
    data_cfg, opt_cfg, train_cfg, model_cfg = cfg["data"], cfg["optimizer"], cfg["train"], cfg["model"]
    loader = NumpyLoader(
        *make_data(N_TRAIN, SEED),
        int(data_cfg["batch_size"]),
        int(data_cfg.get("num_workers") or 0),
        float(data_cfg.get("sample_delay_ms") or 0) / 1000.0,
        int(data_cfg.get("worker_cache_mb") or 0),
    )
    vx, vy = make_data(N_VAL, SEED + 1)
    model = NumpyMLP(int(model_cfg["hidden"]))
    peak, warmup = float(opt_cfg["learning_rate"]), int(opt_cfg.get("warmup_steps") or 0)
    momentum, max_norm = float(opt_cfg.get("momentum") or 0.0), opt_cfg.get("max_grad_norm")
    steps, eval_every, save_every = (
        int(train_cfg["steps"]),
        int(train_cfg["eval_every"]),
        int(train_cfg["save_every"]),
    )
    print_every = max(1, steps // 10)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    step, loss = 0, float("nan")
    try:
        while step < steps:
            for x, y in mon.loader(loader):
                step += 1
                lr = learning_rate(step, peak, warmup)
                loss, grads = model.loss_and_grads(x, y)
                with np.errstate(all="ignore"):
                    grad_norm = float(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)))
                if max_norm and grad_norm > float(max_norm):
                    grads = [g * (float(max_norm) / grad_norm) for g in grads]
                model.step(grads, lr, momentum)
                mon.step(step, loss=loss, lr=lr, grad_norm=grad_norm, batch_size=len(x))
                if step % print_every == 0 or step == steps:
                    print(f"step {step:5d}/{steps}  loss {loss:.4g}  lr {lr:.3g}", flush=True)
                if step % eval_every == 0 or step == steps:
                    with mon.phase("eval"), np.errstate(all="ignore"):
                        val_loss = float(np.mean((model.forward(vx)[0] - vy) ** 2))
                    mon.event("eval_metrics", step=step, val_loss=val_loss)
                if step % save_every == 0 or step == steps:
                    path = ckpt_dir / "last.npz"
                    with mon.phase("save"):
                        np.savez(path, *model.params)
                    mon.event("checkpoint_saved", path=str(path), step=step)
                if step >= steps:
                    break
    finally:
        loader.close()
    return {"steps": step, "final_loss": loss, "backend": "numpy"}


# -- entry point -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The training job behind `runlens demo`.")
    p.add_argument("--config", required=True, help="the scenario's config.yaml (written by `runlens demo`)")
    p.add_argument("--out", default=".", help="folder for checkpoints")
    p.add_argument("--backend", choices=("auto", "torch", "numpy"), default="auto")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    backend = args.backend
    if backend == "auto":
        try:
            import torch  # noqa: F401

            backend = "torch"
        except ImportError:
            backend = "numpy"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    preload()  # imports before the Monitor starts, so its start-up cost is its own
    data = cfg["data"]
    print(
        f"runlens demo: training a {cfg['model']['hidden']}-unit MLP with {backend} for "
        f"{cfg['train']['steps']} steps; {data['num_workers']} DataLoader workers, "
        f"batch {data['batch_size']}, peak learning rate {cfg['optimizer']['learning_rate']}",
        flush=True,
    )
    with runlens.Monitor(name=cfg.get("name") or "demo", config=args.config) as mon:
        result = (train_torch if backend == "torch" else train_numpy)(cfg, out, mon)
        result["job_id"] = mon.job_id
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
