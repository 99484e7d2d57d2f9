"""runlens with Lightning: one callback, nothing else changes.

    python examples/lightning_example.py --db runlens.db --steps 40 --out runs/lightning
    runlens analyze <job id printed on the last line>

A small LightningModule and a DataModule that keeps ``batch_size`` and ``num_workers`` as hyperparameters
(``save_hyperparameters()``), validation every few steps and a ``ModelCheckpoint``. The runlens part is one
line:

    Trainer(..., callbacks=[RunlensCallback()])

It records every optimizer step (loss, learning rate, gradient norm before clipping, batch size), the
validation and checkpoint phases, and the Trainer/DataModule/model hyperparameters as the config snapshot, so
a recommendation names ``data.num_workers`` with the value this run used.

The last line printed is JSON: the job id, the Trainer's ``global_step`` and where its CSVLogger wrote the
logged metrics (tests compare them with what runlens stored).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
except ImportError:  # the older package name
    import pytorch_lightning as pl  # type: ignore[no-redef]
    from pytorch_lightning.callbacks import ModelCheckpoint  # type: ignore[no-redef]
    from pytorch_lightning.loggers import CSVLogger  # type: ignore[no-redef]

from runlens.integrations.lightning import RunlensCallback


class Regression(pl.LightningModule):  # type: ignore[misc]
    def __init__(
        self, dim: int = 32, hidden: int = 128, lr: float = 1e-2, fail_at_step: int | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step + 1 == self.hparams.fail_at_step:
            raise RuntimeError(f"injected failure at step {self.global_step + 1}")
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), prog_bar=True)

    def configure_optimizers(self) -> dict[str, object]:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class RegressionData(pl.LightningDataModule):  # type: ignore[misc]
    def __init__(self, batch_size: int = 32, num_workers: int = 2, dim: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        w = torch.randn(self.hparams.dim, 1, generator=torch.Generator().manual_seed(1234))
        g = torch.Generator().manual_seed(0)
        x = torch.randn(4096 + 512, self.hparams.dim, generator=g)
        y = x @ w + 0.1 * torch.randn(len(x), 1, generator=g)
        self.train_set = TensorDataset(x[:4096], y[:4096])
        self.val_set = TensorDataset(x[4096:], y[4096:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default=None, help="runlens store (default: $RUNLENS_DB or ./runlens.db)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps (max_steps)")
    p.add_argument("--fail-at-step", type=int, default=None, help="raise an exception at this step")
    p.add_argument("--out", default="runs/lightning", help="folder for checkpoints and the CSV log")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # 2 workers on a laptop is on purpose
    pl.seed_everything(0, verbose=False)
    every = max(1, args.steps // 2)
    runlens_cb = RunlensCallback(name="lightning-example", db=args.db)
    logger = CSVLogger(str(out), name="logs")
    trainer = pl.Trainer(
        max_steps=args.steps,
        val_check_interval=every,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        gradient_clip_val=1.0,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        default_root_dir=str(out),
        callbacks=[
            runlens_cb,
            ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=every, save_top_k=-1),
        ],
    )
    model = Regression(fail_at_step=args.fail_at_step)
    trainer.fit(model, datamodule=RegressionData(batch_size=args.batch_size, num_workers=args.num_workers))
    result = {
        "job_id": runlens_cb.job_id,
        "global_step": trainer.global_step,
        "metrics_csv": os.path.join(logger.log_dir, "metrics.csv"),
        "pid": os.getpid(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
