"""Recognisers for the progress lines trainers print, one per format family, built from the trainers' own format
strings (cited beside each) rather than from sample output.

Each recogniser takes one line (ANSI colours and a rank prefix already removed) and returns the steps and
evaluation results it states, or nothing. A recogniser is tried only when its ``quick`` substring is in the
line, so a line that is no progress line costs a few substring tests. Counts that restart every epoch are made
global by ``EpochSteps``: the steps of the epochs before (as seen, or the epoch's total where unseen) plus this
count.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from runlens.collect.progress_lines.records import (
    EPOCH_LEVEL,
    EPOCH_OFFSET,
    PROGRESS,
    PrintedEval,
    PrintedStep,
    Record,
)
from runlens.collect.progress_lines.values import canonical, field_of, is_eval_key, number

NUM = r"[-+]?(?:nan|inf|\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+)"
MAX_EXTRAS = 12

_TIME_UNITS = {"ms": 1e-3, "us": 1e-6, "µs": 1e-6, "s": 1.0, "": 1.0}


class EpochSteps:
    """Global step numbers from epoch-local counts: the steps of the epochs before this one (each epoch's total
    where it was printed, else the most counted in it, else this epoch's total: a resumed run) plus this count."""

    def __init__(self) -> None:
        self.most: dict[tuple[str, int], int] = {}
        self.totals: dict[tuple[str, int], int] = {}

    def step(self, key: str, epoch: int, count: int, total: int | None, base: int) -> int:
        if count > self.most.get((key, epoch), 0):
            self.most[(key, epoch)] = count
        if total:
            self.totals[(key, epoch)] = total
        offset = 0
        for e in range(base, epoch):
            offset += self.totals.get((key, e)) or self.most.get((key, e)) or (total or 0)
        return offset + count


@dataclass
class Context:
    """What recognisers remember between lines of one stream of output (see ``ProgressParser``)."""

    epochs: EpochSteps
    keras_epoch: int | None = None
    yolo_columns: list[str] | None = None
    yolo_base: int = 1
    yolo_val_columns: list[str] | None = None


def fill(step: PrintedStep, key: str, value: float | None, unit: str = "") -> None:
    """Put a printed ``key: value`` into the step field it names, or into ``extras``."""
    if value is None:
        return
    name = field_of(key)
    if name is None:
        k = canonical(key)
        if k in ("tok_per_sec", "tokens_per_s") or k.endswith(("tok/s", "tokens/s", "tokens/gpu/sec")):
            name = "tokens_per_sec"
        elif k.endswith(("samples/sec", "samples/s", "samplespersec")):
            name = "samples_per_sec"
        elif "elapsed_time_per_iteration" in k:
            step.step_time = value / 1000.0 if "(ms)" in k else value
            return
    if name is None:
        if len(step.extras) < MAX_EXTRAS and not is_eval_key(key):
            step.extras[canonical(key)] = value
        return
    if name in ("step_time", "data_time"):
        value = value * _TIME_UNITS.get(unit, 1.0)
    if getattr(step, name) is None:
        setattr(step, name, value)


_PAIR_COLON = re.compile(r"([A-Za-z][\w/.@()\- ]{0,48}?)\s*:\s*(" + NUM + r")\s*(ms|us|µs|s)?(?![\w])", re.I)
_PAIR_EQUALS = re.compile(r"([A-Za-z][\w/.@\-]{0,48})=\s*(" + NUM + r")\s*(ms|s)?(?![\w])", re.I)


def pairs(text: str, equals: bool = False) -> list[tuple[str, float | None, str]]:
    """The ``key: value`` (or ``key=value``) pairs of a line: (key, number, unit after it)."""
    rx = _PAIR_EQUALS if equals else _PAIR_COLON
    return [(m.group(1).strip(), number(m.group(2)), m.group(3) or "") for m in rx.finditer(text)]


def _eval_of(metrics: dict[str, float], at: float, fmt: str, step: int | None = None,
             duration: float | None = None) -> PrintedEval | None:
    return PrintedEval(at=at, fmt=fmt, metrics=metrics, step=step, duration=duration) if metrics else None


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
        ev = _eval_of({"train_loss": number(m.group(2)), "val_loss": number(m.group(3))}, at,  # type: ignore[dict-item]
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
        ev = _eval_of({"val_loss": number(m.group(4))}, at, "modded-nanogpt", step=step)  # type: ignore[dict-item]
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
        ev = _eval_of(metrics, at, "megatron", step=int(m.group(1)))
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


# -- MMEngine / mmcv, detectron2, YOLOX, fairseq, timm, torchvision's MetricLogger ---------------------------
# MMEngine LogProcessor: "Epoch(train)  [1][ 50/1221]  lr: ...  eta: ...  time: ...  data_time: ...  memory: ...
# loss: ..." (or "Iter(train) [ 50/80000]"); mmcv 1.x TextLoggerHook: "Epoch [1][50/7517]\tlr: 1e-02, eta: ...,
# time: 0.595, data_time: 0.032, memory: 6836, loss_rpn_cls: ..., loss: 0.4890" (or "Iter [50/80000]").
_MM_EPOCH = re.compile(r"\bEpoch(?:\((\w+)\))?\s*\[\s*(\d+)\s*\]\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_MM_ITER = re.compile(r"\bIter(?:\((\w+)\))?\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_MM_KEEP = ("lr", "base_lr", "eta", "time", "data_time", "memory", "grad_norm")


def mmengine(text: str, at: float, ctx: Context) -> list[Record]:
    m = _MM_EPOCH.search(text)
    it = None if m else _MM_ITER.search(text)
    if m is None and it is None:
        return []
    mode = ((m or it).group(1) or "train").lower()  # type: ignore[union-attr]
    rest = text[(m or it).end():]  # type: ignore[union-attr]
    found = pairs(rest)
    if mode != "train":
        metrics = {canonical(k): v for k, v, _ in found if v is not None and canonical(k) not in _MM_KEEP}
        ev = _eval_of(metrics, at, "mmengine")
        return [ev] if ev else []
    values = {canonical(k): (v, u) for k, v, u in found}
    if "loss" not in values and not any(k.startswith("loss") for k in values):
        return []
    if m is not None:
        step = ctx.epochs.step("mmengine", int(m.group(2)), int(m.group(3)), int(m.group(4)), base=1)
        s = PrintedStep(step=step, at=at, fmt="mmengine", numbering=EPOCH_OFFSET, epoch=float(m.group(2)))
    else:
        s = PrintedStep(step=int(it.group(2)), at=at, fmt="mmengine")  # type: ignore[union-attr]
    for k, (v, u) in values.items():
        if k == "loss":
            s.loss = v
        elif k == "memory" and v is not None:
            s.extras["memory_mb"] = v
        elif k == "eta":
            continue
        else:
            fill(s, k, v, u)
    if s.loss is None:   # mmdet 1.x puts the total last as "loss:"; a model with one loss term names it loss_x
        s.loss = next((v for k, (v, _) in values.items() if k.startswith("loss")), None)
    return [s]


# detectron2 CommonMetricPrinter: " eta: {eta}  iter: {iter}  total_loss: {l}  loss_cls: ...  time: {t}
# data_time: {d}  lr: {lr}  max_mem: {m}M"
_D2 = re.compile(r"\biter: (\d+)\s+total_loss: (" + NUM + ")")


def detectron2(text: str, at: float, ctx: Context) -> list[Record]:
    m = _D2.search(text)
    if not m:
        return []
    s = PrintedStep(step=int(m.group(1)), at=at, fmt="detectron2", loss=number(m.group(2)))
    for k, v, u in pairs(text[m.end():]):
        if canonical(k) == "max_mem":
            if v is not None:
                s.extras["max_mem_mb"] = v
        elif canonical(k) != "eta":
            fill(s, k, v, u)
    return [s]


# YOLOX trainer.py: "epoch: {}/{}, iter: {}/{}, mem: {:.0f}Mb, iter_time: 1.270s, data_time: ..., total_loss: ..."
_YOLOX = re.compile(r"\bepoch: (\d+)/(\d+), iter: (\d+)/(\d+),")


def yolox(text: str, at: float, ctx: Context) -> list[Record]:
    m = _YOLOX.search(text)
    if not m:
        return []
    step = ctx.epochs.step("yolox", int(m.group(1)), int(m.group(3)), int(m.group(4)), base=1)
    s = PrintedStep(step=step, at=at, fmt="yolox", numbering=EPOCH_OFFSET, epoch=float(m.group(1)))
    for k, v, u in pairs(text[m.end():]):
        if canonical(k) == "total_loss":
            s.loss = v
        elif canonical(k) not in ("mem", "eta", "size"):
            fill(s, k, v, u)
    return [s] if s.loss is not None else []


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
        ev = _eval_of(metrics, at, "fairseq")
        return [ev] if ev else []
    return []


# timm train.py: f"Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} ({pct:>3.0f}%)]  Loss: {val:#.3g}
# ({avg:#.3g})  Time: {t:.3f}s, {rate:>7.2f}/s  ({avg_t:.3f}s, {avg_rate:>7.2f}/s)  LR: {lr:.3e}  Data: {d:.3f}
# ({avg_d:.3f})"; validate(): "Test: [ {batch_idx:>4d}/{last_idx}]  ...  Loss: ... Acc@1: ... Acc@5: ..."
_TIMM = re.compile(r"\bTrain: (\d+) \[\s*(\d+)/(\d+) \(\s*\d+%\)\]\s+Loss: (" + NUM + ")")
_TIMM_TIME = re.compile(r"Time: ([\d.]+)s,\s*([\d.]+)/s")
_TIMM_LR = re.compile(r"\bLR: (" + NUM + ")")
_TIMM_DATA = re.compile(r"\bData: ([\d.]+)")
_TIMM_TEST = re.compile(r"\bTest: \[\s*(\d+)/(\d+)\]")
_TIMM_TEST_PAIR = re.compile(r"\b(Loss|Acc@1|Acc@5):\s*" + NUM + r"\s*\(\s*(" + NUM + r")\)")


def timm(text: str, at: float, ctx: Context) -> list[Record]:
    m = _TIMM.search(text)
    if m:
        step = ctx.epochs.step("timm", int(m.group(1)), int(m.group(2)) + 1, int(m.group(3)), base=0)
        s = PrintedStep(step=step, at=at, fmt="timm", loss=number(m.group(4)), epoch=float(m.group(1)),
                        numbering=EPOCH_OFFSET)
        if (t := _TIMM_TIME.search(text)) is not None:
            s.step_time, s.samples_per_sec = float(t.group(1)), float(t.group(2))
        if (t := _TIMM_LR.search(text)) is not None:
            s.lr = number(t.group(1))
        if (t := _TIMM_DATA.search(text)) is not None:
            s.data_time = float(t.group(1))
        return [s]
    m = _TIMM_TEST.search(text)
    if m and m.group(1) == m.group(2):   # the last batch carries the averages
        metrics = {"test_" + canonical(k).replace("@", ""): v for k, raw in _TIMM_TEST_PAIR.findall(text)
                   if (v := number(raw)) is not None}
        ev = _eval_of(metrics, at, "timm")
        return [ev] if ev else []
    return []


# torchvision references/classification/utils.py MetricLogger (DeiT, MAE, DINO, LLaMA2-Accessory...):
# "Epoch: [2]  [1480/1504]  eta: ...  lr: 0.000005  loss: 0.8662 (0.8558)  time: 4.3713  data: 0.0001  max mem: ..."
# and the PyTorch ImageNet example's ProgressMeter: "Epoch: [0][  10/5005]\tTime  0.345 ( 0.456)\tData ...\tLoss
# 6.9 (6.9)\tAcc@1 ..."; evaluation ends with " * Acc@1 78.836 Acc@5 94.466 loss 0.933".
_METRICLOGGER = re.compile(r"\bEpoch: \[(\d+)\]\s*\[\s*(\d+)/(\d+)\]")
_ML_PAIR = re.compile(r"([A-Za-z][\w@ ]*?):?\s+(" + NUM + r")(?:\s*\(\s*" + NUM + r"\s*\))?(?=\s|$)")
_ML_EVAL = re.compile(r"^\s*\* Acc@1 (" + NUM + r") Acc@5 (" + NUM + r")(?: loss (" + NUM + "))?")


def metriclogger(text: str, at: float, ctx: Context) -> list[Record]:
    m = _METRICLOGGER.search(text)
    if m:
        step = ctx.epochs.step("metriclogger", int(m.group(1)), int(m.group(2)) + 1, int(m.group(3)), base=0)
        s = PrintedStep(step=step, at=at, fmt="metriclogger", epoch=float(m.group(1)), numbering=EPOCH_OFFSET)
        for key, raw in _ML_PAIR.findall(text[m.end():]):
            k, v = canonical(key), number(raw)
            if k == "loss" or (s.loss is None and k.endswith("loss")):
                s.loss = v if k == "loss" or s.loss is None else s.loss
            elif k in ("max_mem", "eta"):
                continue
            else:
                fill(s, k, v)
        return [s] if s.loss is not None else []
    m = _ML_EVAL.search(text)
    if m:
        metrics = {"test_acc1": number(m.group(1)), "test_acc5": number(m.group(2))}
        if m.group(3):
            metrics["test_loss"] = number(m.group(3))
        ev = _eval_of({k: v for k, v in metrics.items() if v is not None}, at, "metriclogger")
        return [ev] if ev else []
    return []


# OpenPCDet (timm style): "Train:    1/3 ( 33%) [  49/323 ( 15%)]  Loss: 36.77 (81.7)  LR: 1.351e-04  ...
# Acc_iter 50  Data time: 0.00(0.02) ..."
_PCDET = re.compile(r"\bTrain:\s+(\d+)/(\d+) \(\s*\d+%\) \[\s*(\d+)/(\d+) \(\s*\d+%\)\]\s+Loss: (" + NUM + ")")
_PCDET_ITER = re.compile(r"\bAcc_iter (\d+)")


def openpcdet(text: str, at: float, ctx: Context) -> list[Record]:
    m = _PCDET.search(text)
    if not m:
        return []
    it = _PCDET_ITER.search(text)
    s = PrintedStep(step=int(it.group(1)) if it else None, at=at, fmt="openpcdet", loss=number(m.group(5)),
                    epoch=float(m.group(1)))
    if s.step is None:
        s.step = ctx.epochs.step("openpcdet", int(m.group(1)), int(m.group(3)) + 1, int(m.group(4)), base=1)
        s.numbering = EPOCH_OFFSET
    if (t := _TIMM_LR.search(text)) is not None:
        s.lr = number(t.group(1))
    return [s]


# Pointcept's InformationWriter (hook.py): "Train: [22/170][300/1090] Data 0.007 (0.707) Batch 0.449 (1.273)
# Remain 57:18:52 loss: 3.5152 Lr: 2.66007e-04"
_POINTCEPT = re.compile(r"\bTrain: \[(\d+)/(\d+)\]\[(\d+)/(\d+)\]")
_POINTCEPT_PAIR = re.compile(r"\b(Data|Batch) (" + NUM + r")")


def pointcept(text: str, at: float, ctx: Context) -> list[Record]:
    m = _POINTCEPT.search(text)
    if not m:
        return []
    found = {canonical(k): v for k, v, _ in pairs(text[m.end():])}
    if "loss" not in found:
        return []
    step = ctx.epochs.step("pointcept", int(m.group(1)), int(m.group(3)), int(m.group(4)), base=1)
    s = PrintedStep(step=step, at=at, fmt="pointcept", loss=found.pop("loss"), lr=found.pop("lr", None),
                    epoch=float(m.group(1)), numbering=EPOCH_OFFSET)
    for key, raw in _POINTCEPT_PAIR.findall(text):
        if key == "Data":
            s.data_time = number(raw)
        else:
            s.step_time = number(raw)
    return [s]


Recogniser = Callable[[str, float, Context], list[Record]]

# (name, substrings of which one must be in the line, recogniser), most specific first.
LINE_FORMATS: list[tuple[str, tuple[str, ...], Recogniser]] = [
    ("megatron", ("iteration",), megatron),
    ("torchtitan", ("step:",), torchtitan),
    ("modded-nanogpt", ("step:",), modded),
    ("nanogpt", ("iter ", "train loss"), nanogpt),
    ("llama2.c", (" | loss ",), llama2c),
    ("llm.c", ("step ", "val loss"), llmc),
    ("deepspeed", ("] step=",), deepspeed),
    ("mmengine", ("Epoch(", "Iter(", "Epoch [", "Iter ["), mmengine),
    ("detectron2", ("total_loss",), detectron2),
    ("yolox", ("epoch: ",), yolox),
    ("fairseq", ("epoch ", "valid on"), fairseq),
    ("timm", ("Train: ", "Test: ["), timm),
    ("openpcdet", ("Train: ",), openpcdet),
    ("pointcept", ("Train: [",), pointcept),
    ("metriclogger", ("Epoch: [", "* Acc@1"), metriclogger),
]

__all__ = ["Context", "EPOCH_LEVEL", "EpochSteps", "LINE_FORMATS", "NUM", "fill", "pairs"]
