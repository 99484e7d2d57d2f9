"""Recognisers of language-model trainers' progress lines: nanoGPT, llama2.c, llm.c, modded-nanogpt,
torchtitan, Megatron-LM, DeepSpeed, fairseq; each written from the trainer's own format string, cited beside it.
"""

from __future__ import annotations

import re

from runlens.collect.progress_lines.common import NUM, Context, eval_of, fill, pairs
from runlens.collect.progress_lines.records import EPOCH_OFFSET, PROGRESS, PrintedEval, PrintedStep, Record
from runlens.collect.progress_lines.values import canonical, number

# -- nanoGPT, llama2.c, llm.c, modded-nanogpt ----------------------------------------------------------------
# nanoGPT train.py: print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%")
# and print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
_NANOGPT = re.compile(r"\biter (\d+): loss (" + NUM + r"), time ([\d.]+)ms(?:, mfu ([-\d.]+)%)?", re.I)
_NANOGPT_EVAL = re.compile(r"\bstep (\d+): train loss (" + NUM + r"), val loss (" + NUM + ")", re.I)
# llama2.c train.py: f"{iter_num} | loss {lossf:.4f} | lr {lr:e} | {dt*1000:.2f}ms | mfu {running_mfu*100:.2f}%"
_LLAMA2C = re.compile(r"^\s*(\d+) \| loss (" + NUM + r") \| lr (" + NUM + r") \| ([\d.]+)ms(?: \| mfu ([-\d.]+)%)?")
# llm.c train_gpt2.cu: "step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | ... | %.0f tok/s"
# (older: "step %4d/%d: train loss %f norm %.4f lr %.2e (%.2f ms, %.0f tok/s)"; CPU: "step %d: train loss %f
# (took %f ms)"); "val loss %f"
_LLMC = re.compile(r"\bstep\s+(\d+)(?:/(\d+)\s*[:|]\s*(?:train )?|: train )loss (" + NUM + ")")
_LLMC_NORM = re.compile(r"\bnorm (" + NUM + ")")
_LLMC_LR = re.compile(r"\blr (" + NUM + ")")
_LLMC_MS = re.compile(r"(?:\(|\| |took )(" + NUM + r") ?ms")
_LLMC_TOKS = re.compile(r"(" + NUM + r") tok/s")
_LLMC_VAL = re.compile(r"^val loss (" + NUM + r")\s*$")
# modded-nanogpt train_gpt.py: f"step:{step+1}/{train_steps} train_time:{t:.0f}ms step_avg:{t/(step+1):.2f}ms"
# (older: "... train_loss:{loss:.4f} train_time:..."), and f"step:{step}/{train_steps} val_loss:{v:.4f} ..."
_MODDED = re.compile(r"\bstep:(\d+)/(\d+)\s+(?:(train_loss|val_loss):(" + NUM + r")\s+)?train_time:(" + NUM
                     + r")ms\s+step_avg:(" + NUM + r")ms")


def nanogpt(text: str, at: float, ctx: Context) -> list[Record]:
    m = _NANOGPT.search(text)
    if m:
        s = PrintedStep(step=int(m.group(1)), at=at, fmt="nanogpt", loss=number(m.group(2)),
                        step_time=float(m.group(3)) / 1000.0)
        if m.group(4) is not None and (mfu := number(m.group(4))) is not None and mfu >= 0:
            s.extras["mfu_percent"] = mfu
        return [s]
    m = _NANOGPT_EVAL.search(text)
    if m:
        ev = eval_of({"train_loss": number(m.group(2)), "val_loss": number(m.group(3))}, at,  # type: ignore[dict-item]
                      "nanogpt", step=int(m.group(1)))
        return [ev] if ev else []
    return []


def llama2c(text: str, at: float, ctx: Context) -> list[Record]:
    m = _LLAMA2C.search(text)
    if not m:
        return []
    return [PrintedStep(step=int(m.group(1)), at=at, fmt="llama2.c", loss=number(m.group(2)), lr=number(m.group(3)),
                        step_time=float(m.group(4)) / 1000.0)]


def llmc(text: str, at: float, ctx: Context) -> list[Record]:
    if "val loss" in text:
        m = _LLMC_VAL.search(text.strip())
        if m:
            return [PrintedEval(at=at, fmt="llm.c", metrics={"val_loss": number(m.group(1))})]  # type: ignore[dict-item]
        return []
    m = _LLMC.search(text)
    if not m:
        return []
    s = PrintedStep(step=int(m.group(1)), at=at, fmt="llm.c", loss=number(m.group(3)))
    rest = text[m.end():]
    if (n := _LLMC_NORM.search(rest)) is not None:
        s.grad_norm = number(n.group(1))
    if (n := _LLMC_LR.search(rest)) is not None:
        s.lr = number(n.group(1))
    if (n := _LLMC_MS.search(rest)) is not None and (ms := number(n.group(1))) is not None:
        s.step_time = ms / 1000.0
    if (n := _LLMC_TOKS.search(rest)) is not None:
        s.tokens_per_sec = number(n.group(1))
    return [s]


def modded(text: str, at: float, ctx: Context) -> list[Record]:
    m = _MODDED.search(text)
    if not m:
        return []
    step = int(m.group(1))
    if m.group(3) == "val_loss":
        ev = eval_of({"val_loss": number(m.group(4))}, at, "modded-nanogpt", step=step)  # type: ignore[dict-item]
        return [ev] if ev else []
    return [PrintedStep(step=step, at=at, fmt="modded-nanogpt", loss=number(m.group(4)) if m.group(3) else None)]


# -- torchtitan, Megatron-LM, DeepSpeed ----------------------------------------------------------------------
# torchtitan train.py: f"step: {step:2}  loss: {loss:7.4f}  grad_norm: {g:7.4f}  memory: {gib:5.2f}GiB({pct:.2f}%)
#   tps: {round(tps):,}  tflops: {tflops:,.2f}  mfu: {mfu:.2f}%"
_TITAN = re.compile(r"\bstep:\s*(\d+)\s+loss:\s*(" + NUM + ")")
_TITAN_PAIR = re.compile(r"\b(grad_norm|memory|tps|tflops|mfu):\s*(" + NUM + ")")


def torchtitan(text: str, at: float, ctx: Context) -> list[Record]:
    m = _TITAN.search(text)
    if not m:
        return []
    s = PrintedStep(step=int(m.group(1)), at=at, fmt="torchtitan", loss=number(m.group(2)))
    for key, value in _TITAN_PAIR.findall(text[m.end():]):
        v = number(value)
        if key == "grad_norm":
            s.grad_norm = v
        elif key == "tps":
            s.tokens_per_sec = v
        elif v is not None:
            s.extras[{"memory": "memory_gib", "mfu": "mfu_percent"}.get(key, key)] = v
    return [s]


# Megatron-LM training.py training_log(): " iteration {:8d}/{:8d} |" then " {key}: {value} |" pairs:
# "consumed samples", "elapsed time per iteration (ms)", "learning rate", "global batch size", "lm loss",
# "loss scale", "grad norm", "number of skipped iterations", "number of nan iterations".
_MEGATRON = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_MEGATRON_VAL = re.compile(r"validation loss at iteration (\d+)")


def megatron(text: str, at: float, ctx: Context) -> list[Record]:
    m = _MEGATRON.search(text)
    if m:
        s = PrintedStep(step=int(m.group(1)), at=at, fmt="megatron")
        for part in text.split("|"):
            key, sep, value = part.rpartition(":")
            if not sep or not key.strip():
                continue
            k = canonical(key)
            v = number(value)
            if k in ("lm_loss", "loss") or (k.endswith("loss") and s.loss is None and "scale" not in k):
                s.loss = v if s.loss is None else s.loss
            elif k == "learning_rate":
                s.lr = v
            elif k == "grad_norm":
                s.grad_norm = v
            elif k.startswith("elapsed_time_per_iteration") and v is not None:
                s.step_time = v / 1000.0 if "(ms)" in k else v
            elif k in ("samples/sec", "samples_per_sec"):
                s.samples_per_sec = v
            elif k in ("global_batch_size", "loss_scale", "number_of_skipped_iterations", "number_of_nan_iterations",
                       "consumed_samples") and v is not None:
                s.extras[k] = v
        return [s]
    m = _MEGATRON_VAL.search(text)
    if m:
        metrics = {}
        for part in text.split("|")[1:]:
            key, sep, value = part.rpartition(":")
            if sep and (v := number(value)) is not None:
                metrics["val_" + canonical(key).removesuffix("_value")] = v
        ev = eval_of(metrics, at, "megatron", step=int(m.group(1)))
        return [ev] if ev else []
    return []


# DeepSpeed engine.py _report_progress(): log_dist(f"step={step}, skipped={skipped}, lr={lr}, mom={mom}", ranks=[0]);
# a step without a loss. Its fp16 overflow messages ("OVERFLOW! Rank 0 Skipping step. Attempted loss scale: ...")
# are not steps.
_DEEPSPEED = re.compile(r"\[Rank (\d+)\] step=(\d+), skipped=(\d+), lr=\[?(" + NUM + ")")


def deepspeed(text: str, at: float, ctx: Context) -> list[Record]:
    m = _DEEPSPEED.search(text)
    if not m:
        return []
    # "[Rank 0]" names the rank that logged (log_dist prints from rank 0), not a process prefix.
    s = PrintedStep(step=int(m.group(2)), at=at, fmt="deepspeed", lr=number(m.group(4)), level=PROGRESS)
    s.extras["skipped_steps"] = float(m.group(3))
    return [s]


# fairseq progress_bar.py SimpleProgressBar: "epoch {:03d}:{:>8d} / {} loss=..., ..., num_updates=..., lr=...,
# gnorm=..., train_wall=..." ("| epoch 001:    450 / 1891 loss=..." in older releases); validation:
# "| epoch 001 | valid on 'valid' subset | valid_loss 8.11 | ..." (or "... | loss 8.11 | ...").
_FAIRSEQ = re.compile(r"\bepoch (\d+):?\s+(\d+)\s*/\s*(\d+)\s+(\w+)=")
_FAIRSEQ_VALID = re.compile(r"valid on '[^']*' subset\s*\|")


def fairseq(text: str, at: float, ctx: Context) -> list[Record]:
    m = _FAIRSEQ.search(text)
    if m:
        found = {canonical(k): (v, u) for k, v, u in pairs(text[m.start(4):], equals=True)}
        if "loss" not in found:
            return []
        updates = found.get("num_updates", (None, ""))[0]
        if updates is not None:
            s = PrintedStep(step=int(updates), at=at, fmt="fairseq", epoch=float(m.group(1)))
        else:
            step = ctx.epochs.step("fairseq", int(m.group(1)), int(m.group(2)), int(m.group(3)), base=1)
            s = PrintedStep(step=step, at=at, fmt="fairseq", epoch=float(m.group(1)), numbering=EPOCH_OFFSET)
        for k, (v, u) in found.items():
            if k in ("num_updates", "wall", "clip", "oom", "ups"):
                continue
            if k == "train_wall" or k == "bsz":
                if v is not None:
                    s.extras[k] = v
                continue
            fill(s, k, v, u)
        return [s]
    m = _FAIRSEQ_VALID.search(text)
    if m:
        metrics: dict[str, float] = {}
        for part in text[m.end():].split("|"):
            key, _, value = part.strip().rpartition(" ")
            v = number(value)
            if key and v is not None and canonical(key) not in ("num_updates", "best"):
                k = canonical(key)
                metrics[k if k.startswith("valid") else "valid_" + k] = v
        ev = eval_of(metrics, at, "fairseq")
        return [ev] if ev else []
    return []
