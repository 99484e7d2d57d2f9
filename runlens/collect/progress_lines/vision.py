"""Recognisers of vision trainers' progress lines: MMEngine/mmcv (mmdetection...), detectron2, YOLOX, timm,
torchvision's MetricLogger (DeiT, MAE, DINO...), OpenPCDet, Pointcept, the PyTorch examples' MNIST loop; each
written from the trainer's own format string, cited beside it.
"""

from __future__ import annotations

import re

from runlens.collect.progress_lines.common import NUM, Context, eval_of, fill, pairs
from runlens.collect.progress_lines.records import EPOCH_OFFSET, PrintedStep, Record
from runlens.collect.progress_lines.values import canonical, number

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
        ev = eval_of(metrics, at, "mmengine")
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
        ev = eval_of(metrics, at, "timm")
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
        ev = eval_of({k: v for k, v in metrics.items() if v is not None}, at, "metriclogger")
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


# pytorch/examples mnist/main.py (copied into countless scripts): "Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}"
# with the samples seen in the epoch, and "Test set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)". The step is
# counted in samples: the batch size is not printed.
_MNIST = re.compile(r"\bTrain Epoch: (\d+) \[(\d+)/(\d+) \(\s*\d+%\)\]\s+Loss: (" + NUM + ")")
_MNIST_TEST = re.compile(r"\bTest set: Average loss: (" + NUM + r"), Accuracy: (\d+)/(\d+)")


def pytorch_examples(text: str, at: float, ctx: Context) -> list[Record]:
    m = _MNIST.search(text)
    if m:
        step = ctx.epochs.step("mnist", int(m.group(1)), int(m.group(2)), int(m.group(3)), base=1)
        return [PrintedStep(step=step, at=at, fmt="pytorch_examples", loss=number(m.group(4)),
                            epoch=float(m.group(1)), numbering=EPOCH_OFFSET)]
    m = _MNIST_TEST.search(text)
    if m:
        metrics = {"test_loss": number(m.group(1)), "test_accuracy": int(m.group(2)) / max(1, int(m.group(3)))}
        ev = eval_of({k: v for k, v in metrics.items() if v is not None}, at, "pytorch_examples")
        return [ev] if ev else []
    return []
