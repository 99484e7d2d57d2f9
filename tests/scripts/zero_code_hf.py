"""A Hugging Face Trainer run with no runlens in it: a tiny regression model built in code, no download.

    python tests/scripts/zero_code_hf.py HISTORY.json [--max-steps 40] [--logging-steps 5]

Writes ``trainer.state.log_history`` to HISTORY.json at the end, the record the printed log dicts must match.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
from torch import nn
from transformers import Trainer, TrainingArguments


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.lin(x).squeeze(-1)
        result = {"logits": out}
        if labels is not None:
            result["loss"] = nn.functional.mse_loss(out, labels)
        return result


class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(1) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("history")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--logging-steps", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=a.max_steps, logging_steps=a.logging_steps,
                                 per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=0.05,
                                 eval_strategy="steps", eval_steps=20, save_strategy="no", report_to="none",
                                 use_cpu=True, dataloader_num_workers=0, seed=0)
        trainer = Trainer(model=Tiny(), args=args, train_dataset=Data(512, 1), eval_dataset=Data(64, 2))
        trainer.train()
        with open(a.history, "w") as fh:
            json.dump(trainer.state.log_history, fh)


if __name__ == "__main__":
    main()
