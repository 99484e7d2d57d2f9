"""A training loop with a Monitor inside whose DataLoader worker never returns the batch with index k.

    python tests/scripts/hang_dataloader.py --stuck-at 6 [--monitor '{"hang_timeout": 2}']

``num_workers=2`` and ``timeout=0`` (torch's default: wait forever). The main thread then waits in
``_try_get_data`` while the worker sleeps in the dataset's ``__getitem__``; only py-spy of the worker process
shows where.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, Dataset

import runlens


def wait_forever_for_item(index: int) -> None:
    """The stuck data source (a dead network mount, a decoder that never returns). Tests look for this name."""
    while True:
        time.sleep(3600)


class StuckDataset(Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int, stuck_at: int) -> None:
        self.n = n
        self.stuck_at = stuck_at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == self.stuck_at:
            wait_forever_for_item(index)
        return torch.full((4,), float(index))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--stuck-at", type=int, default=6)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--monitor", default="{}", help="Monitor keyword arguments as JSON")
    args = p.parse_args()
    loader = DataLoader(StuckDataset(args.samples, args.stuck_at), batch_size=1, num_workers=2, timeout=0)
    with runlens.Monitor(name="hang-dataloader", **json.loads(args.monitor)) as mon:
        for step, batch in enumerate(mon.loader(loader)):
            time.sleep(args.step_time)
            mon.step(step, loss=float(batch.sum()), batch_size=1)


if __name__ == "__main__":
    main()
