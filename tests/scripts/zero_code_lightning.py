"""A Lightning run with no runlens in it: a tiny regression model built in code, no download.

    python tests/scripts/zero_code_lightning.py LOGDIR [--epochs 2]

Logs ``train_loss`` to the progress bar and, through a CSVLogger, to LOGDIR/.../metrics.csv: the record the bar's
steps must match. The bar is Lightning's tqdm bar, its default where ``rich`` is not installed (with ``rich``,
Lightning draws a Rich bar, which prints only its last frame into a pipe).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("logdir")
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    L.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(160, 8, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1)), batch_size=8)
    trainer = L.Trainer(max_epochs=a.epochs, accelerator="cpu", devices=1, logger=CSVLogger(a.logdir),
                        log_every_n_steps=1, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[TQDMProgressBar()])
    trainer.fit(Tiny(), data)


if __name__ == "__main__":
    main()
