"""runlens with the Hugging Face Trainer: one callback, nothing else changes.

    python examples/hf_trainer.py --db runlens.db --steps 40 --out runs/hf
    runlens analyze <job id printed on the last line>

The model is a 2-layer GPT-2 built from a config with random weights and the data are random token ids, so
nothing is downloaded and it trains on a CPU in seconds. The runlens part is one line:

    Trainer(..., callbacks=[RunlensCallback()])

It records every optimizer step (loss, learning rate, gradient norm, batch size), the eval and checkpoint
phases, and the TrainingArguments as the config snapshot, so a recommendation names
``TrainingArguments.per_device_train_batch_size`` and the value this run used.

The last line printed is JSON: the job id, the Trainer's ``global_step`` and its ``log_history`` (tests
compare them with what runlens stored).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from runlens.integrations.transformers import RunlensCallback

VOCAB = 1000
SEQ_LEN = 32


class RandomTokens(Dataset):
    """Random token ids with a learnable pattern (every other token repeats the one before it)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, VOCAB, (n, SEQ_LEN), generator=g)
        ids[:, 1::2] = ids[:, 0::2]
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class FailAtStep(TrainerCallback):  # type: ignore[misc]
    """Raises at the end of optimizer step ``n``: a crash in the middle of training, for the tests."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.n:
            raise RuntimeError(f"injected failure at step {state.global_step}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default=None, help="runlens store (default: $RUNLENS_DB or ./runlens.db)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps (max_steps)")
    p.add_argument("--fail-at-step", type=int, default=None, help="raise an exception at this step")
    p.add_argument("--out", default="runs/hf_trainer", help="output_dir for checkpoints")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--no-runlens", action="store_true", help="train without the callback (benchmarks)")
    return p.parse_args(argv)


def build_trainer(args: argparse.Namespace, callbacks: list[TrainerCallback]) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ_LEN))
    every = max(1, args.steps // 2)
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=32,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=1e-3,
        max_grad_norm=args.max_grad_norm,
        warmup_steps=max(1, args.steps // 10),
        lr_scheduler_type="linear",
        logging_steps=args.logging_steps,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=1,
        dataloader_num_workers=args.num_workers,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=RandomTokens(2048, 0),
        eval_dataset=RandomTokens(64, 1),
        callbacks=callbacks,
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runlens_cb = None if args.no_runlens else RunlensCallback(name="hf-trainer", db=args.db)
    callbacks: list[TrainerCallback] = [cb for cb in (runlens_cb,) if cb is not None]
    if args.fail_at_step:
        callbacks.append(FailAtStep(args.fail_at_step))
    trainer = build_trainer(args, callbacks)
    output = trainer.train()
    result = {
        "job_id": runlens_cb.job_id if runlens_cb else None,
        "global_step": trainer.state.global_step,
        "train_runtime": output.metrics.get("train_runtime"),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "log_history": trainer.state.log_history,
        "pid": os.getpid(),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
