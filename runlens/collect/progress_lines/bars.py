"""Progress bars: tqdm (with its postfix metrics), Lightning's bar, Keras's Progbar and Ultralytics' table rows.

A bar is redrawn in place with ``\\r``; the parser keeps the last redraw of each count (Lightning draws the new
count, then sets the postfix it computed for it: the first redraw of a count shows the previous step's loss) and
hands a step on once the count moves on or the line ends.

A bar's count is the step within its epoch; ``EpochSteps`` makes it global. A bar without a loss in its postfix is
no step (a dataset's ``Map: 100%|...|``, a download); the parser still reads its count to number the log dicts
a Hugging Face Trainer prints beside its bar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runlens.collect.progress_lines.common import NUM, Context
from runlens.collect.progress_lines.records import EPOCH_OFFSET, PrintedEval, PrintedStep, Record
from runlens.collect.progress_lines.values import canonical, field_of, is_eval_key, number

# Formats drawn as bars: the last redraw of each count is the step, whether redraws come as "\r" (live) or as one
# line each (a saved log).
BAR_FORMATS = frozenset({"lightning", "tqdm", "keras", "ultralytics"})

# tqdm's default bar_format: "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
# l_bar = "{desc}: {percentage:3.0f}%|"; without a total: "{desc}: {n_fmt}{unit} [{elapsed}, {rate_fmt}{postfix}]".
_TQDM = re.compile(r"^(?P<desc>.*?)(?::\s*)?\s*(?P<pct>\d{1,3})%\|(?P<bar>[^|]*)\|\s*(?P<n>[\d.]+[kM]?)/(?P<total>[\d.]+[kM]?|\?)"
                   r"\s*\[(?P<info>[^\]]*)\]?")
_TQDM_NOTOTAL = re.compile(r"^(?P<desc>.*?):?\s*(?P<n>\d+)(?P<unit>[a-zA-Z]*) \[(?P<info>\d[^\]]*(?:it/s|s/it)[^\]]*)\]")
_RATE = re.compile(r"(?:[\d.]+|\?)\s*(?:[a-zA-Z]+/s|s/[a-zA-Z]+)")
_EPOCH_DESC = re.compile(r"\bEpoch\s*(\d+)(/\d+)?\b", re.I)
_EVAL_DESC = re.compile(r"\b(Validat\w*|Sanity Checking|Test\w*|Evaluat\w*|Predict\w*|eval\w*|val)\b", re.I)
# Loss keys of a postfix, in the order they are preferred (Lightning's per-step value before its epoch mean).
_LOSS_KEYS = ("train_loss_step", "loss", "train_loss", "loss_step", "train/loss", "training_loss", "tr_loss")


@dataclass(slots=True)
class Bar:
    """One redraw of a tqdm bar."""

    desc: str
    n: int
    total: int | None
    postfix: dict[str, str]
    elapsed: float | None


def _count(text: str) -> int | None:
    v = number(text.rstrip("kM"))
    if v is None:
        return None
    return int(v * (1000 if text.endswith("k") else 1_000_000 if text.endswith("M") else 1))


def _seconds(clock: str) -> float | None:
    parts = clock.strip().split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return None
    total = 0.0
    for v in values:
        total = total * 60 + v
    return total


def parse_bar(text: str) -> Bar | None:
    """A tqdm bar's description, count, total and postfix, or None when the text is no tqdm bar."""
    if "%|" in text:
        m = _TQDM.search(text)
        if m is None:
            return None
        total = None if m.group("total") == "?" else _count(m.group("total"))
    else:
        m = _TQDM_NOTOTAL.search(text)
        if m is None:
            return None
        total = None
    n = _count(m.group("n"))
    if n is None:
        return None
    info = m.group("info") or ""
    postfix: dict[str, str] = {}
    elapsed = None
    for i, part in enumerate(info.split(", ")):
        key, sep, value = part.partition("=")
        if sep and i > 0:
            postfix[key.strip()] = value.strip()
        elif i == 0:
            elapsed = _seconds(part.split("<")[0])
    return Bar(desc=m.group("desc").strip(), n=n, total=total, postfix=postfix, elapsed=elapsed)


def is_eval_bar(bar: Bar) -> bool:
    return bool(bar.desc) and _EVAL_DESC.search(bar.desc) is not None and not _EPOCH_DESC.search(bar.desc)


def bar_step(bar: Bar, at: float, ctx: Context) -> PrintedStep | None:
    """The step a training bar with a loss in its postfix shows (Lightning: also without one, its ``v_num`` and
    ``Epoch N`` desc say it is the training loop), or None."""
    if bar.n <= 0:
        return None   # the bar before the first step
    loss_key = next((k for k in _LOSS_KEYS if k in bar.postfix), None)
    if loss_key is None:
        loss_key = next((k for k in bar.postfix if "loss" in k.lower() and not is_eval_key(k)), None)
    epoch = _EPOCH_DESC.search(bar.desc)
    lightning = epoch is not None and "v_num" in bar.postfix   # Lightning's bar names its logger's version
    if loss_key is None and not lightning:
        return None
    fmt = "lightning" if lightning else "tqdm"
    if epoch is not None:
        # Lightning counts epochs from 0 ("Epoch 0:"); "Epoch 1/3" counts from 1.
        base = 1 if epoch.group(2) else 0
        step = ctx.epochs.step("bar:" + _EPOCH_DESC.sub("", bar.desc), int(epoch.group(1)), bar.n, bar.total, base)
        s = PrintedStep(step=step, at=at, fmt=fmt, epoch=float(epoch.group(1)), numbering=EPOCH_OFFSET)
    else:
        s = PrintedStep(step=bar.n, at=at, fmt=fmt)
    if loss_key is not None:
        s.loss = number(bar.postfix[loss_key])
    for key, raw in bar.postfix.items():
        if key == loss_key or key == "v_num" or is_eval_key(key):
            continue
        v = number(raw)
        if v is None:
            continue
        name = field_of(key)
        if name in ("lr", "grad_norm") and getattr(s, name) is None:
            setattr(s, name, v)
        elif name is None and len(s.extras) < 8 and "loss" not in key.lower():
            s.extras[canonical(key)] = v
    return s


def bar_eval(bar: Bar, at: float) -> PrintedEval | None:
    """Validation metrics shown on a bar's postfix (``val_loss=0.5`` on Lightning's main bar after validation)."""
    metrics = {canonical(k): v for k, raw in bar.postfix.items() if is_eval_key(k) and (v := number(raw)) is not None}
    return PrintedEval(at=at, fmt="lightning", metrics=metrics) if metrics else None


# -- Keras ---------------------------------------------------------------------------------------------------
# keras/src/utils/progbar.py: "Epoch 3/10" then "{current}/{target} {bar} {time} {time_per_unit}/step - loss: ...
# - val_loss: ..." (Keras 3 draws "━", Keras 2 "[=====>....]", verbose=2 "1079/1079 - 21s - loss: ...").
_KERAS_EPOCH = re.compile(r"^\s*Epoch (\d+)/(\d+)\s*$")
_KERAS = re.compile(r"^\s*(\d+)/(\d+) (?:\[[=>.]*\]|━+|-)\s")
_KERAS_PER_STEP = re.compile(r"(" + NUM + r")(ms|us|µs|s)/step")
_KERAS_PAIR = re.compile(r" - ([A-Za-z][\w@/]*): (" + NUM + ")")
_KERAS_UNITS = {"ms": 1e-3, "us": 1e-6, "µs": 1e-6, "s": 1.0}


def keras(text: str, at: float, ctx: Context) -> list[Record]:
    m = _KERAS_EPOCH.match(text)
    if m:
        ctx.keras_epoch = int(m.group(1))
        return []
    m = _KERAS.match(text)
    if not m:
        return []
    values = {k: number(v) for k, v in _KERAS_PAIR.findall(text)}
    if "loss" not in values:
        return []
    count, total = int(m.group(1)), int(m.group(2))
    if ctx.keras_epoch is not None:
        step = ctx.epochs.step("keras", ctx.keras_epoch, count, total, base=1)
        s = PrintedStep(step=step, at=at, fmt="keras", epoch=float(ctx.keras_epoch), numbering=EPOCH_OFFSET)
    else:
        s = PrintedStep(step=count, at=at, fmt="keras")
    s.loss = values.pop("loss")
    if (t := _KERAS_PER_STEP.search(text)) is not None and (v := number(t.group(1))) is not None:
        s.step_time = v * _KERAS_UNITS[t.group(2)]
    evals = {canonical(k): v for k, v in values.items() if is_eval_key(k) and v is not None}
    for k, v in values.items():
        if v is not None and not is_eval_key(k) and len(s.extras) < 8:
            if field_of(k) == "lr":
                s.lr = v
            else:
                s.extras[canonical(k)] = v
    out: list[Record] = [s]
    if evals:
        out.append(PrintedEval(at=at, fmt="keras", metrics=evals, step=s.step))
    return out


# -- Ultralytics YOLO ----------------------------------------------------------------------------------------
# ultralytics/engine/trainer.py: a header "Epoch  GPU_mem  box_loss  cls_loss  dfl_loss  Instances  Size", then per
# batch a tqdm bar whose description is the row "1/100  3.51G  1.234  2.345  1.123  45  640"; validation prints
# "Class  Images  Instances  Box(P  R  mAP50  mAP50-95)" and an "all" row. YOLOv5: "Epoch gpu_mem box obj cls total
# labels img_size", epochs from 0.
_YOLO_HEADER = re.compile(r"^\s*Epoch\s+(GPU_mem|gpu_mem)\s+(.*?)\s+(?:Instances|labels|targets)\s+(?:Size|img_size)\s*$")
_YOLO_ROW = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+G)\s+(.*?)\s+(\d+)\s+(\d+)\s*:")
_YOLO_VAL_HEADER = re.compile(r"^\s*Class\s+Images\s+(?:Instances|Labels|Targets)\s+(.*?)(?::|$)")
_YOLO_ALL = re.compile(r"^\s*all\s+(\d+)\s+(\d+)\s+(.*)$")


def ultralytics(text: str, at: float, ctx: Context) -> list[Record]:
    m = _YOLO_HEADER.match(text)
    if m:
        ctx.yolo_columns = m.group(2).split()
        ctx.yolo_base = 1 if m.group(1) == "GPU_mem" else 0
        return []
    if ctx.yolo_columns is None:
        return []
    m = _YOLO_VAL_HEADER.match(text)
    if m:
        ctx.yolo_val_columns = [c.strip("()") for c in re.split(r"\s+", m.group(1).replace("Box(", "Box_"))]
        return []
    m = _YOLO_ALL.match(text)
    if m and ctx.yolo_val_columns:
        values = [number(v) for v in m.group(3).split()]
        names = ctx.yolo_val_columns[-len(values):]
        metrics = {"val_" + canonical(n).replace("box_", ""): v for n, v in zip(names, values) if v is not None}
        return [PrintedEval(at=at, fmt="ultralytics", metrics=metrics)] if metrics else []
    m = _YOLO_ROW.match(text)
    if not m:
        return []
    values = [number(v) for v in m.group(4).split()]
    if len(values) != len(ctx.yolo_columns) or any(v is None for v in values):
        return []
    bar = parse_bar(text[m.end():])
    epoch = int(m.group(1))
    if bar is None:
        return []
    step = ctx.epochs.step("ultralytics", epoch, bar.n, bar.total, base=ctx.yolo_base)
    s = PrintedStep(step=step, at=at, fmt="ultralytics", epoch=float(epoch), numbering=EPOCH_OFFSET)
    losses = dict(zip(ctx.yolo_columns, values))
    if "total" in losses:
        s.loss = losses.pop("total")
    parts = {k: v for k, v in losses.items() if v is not None and (k.endswith("loss") or ctx.yolo_base == 0)}
    if s.loss is None and parts:
        s.loss = sum(parts.values())   # what the trainer minimises: the sum of its loss terms
    for k, v in parts.items():
        s.extras[canonical(k)] = v  # type: ignore[assignment]
    gpu = number(m.group(3))
    if gpu is not None:
        s.extras["gpu_mem_gb"] = gpu
    return [s]


# -- fastai --------------------------------------------------------------------------------------------------
# fastai's ProgressCallback prints, outside a notebook, a table: a header "epoch  train_loss  valid_loss  accuracy
# time" and one row per epoch "0  0.512345  0.401234  0.912000  00:10" (fastai/callback/progress.py).
_FASTAI_HEADER = re.compile(r"^\s*epoch\s+train_loss(\s+\S+)*\s*$")


def fastai(text: str, at: float, ctx: Context) -> list[Record]:
    if _FASTAI_HEADER.match(text):
        ctx.table = text.split()
        return []
    columns = ctx.table
    if columns is None:
        return []
    cells = text.split()
    if len(cells) != len(columns) or not cells[0].isdigit():
        return []
    values = dict(zip(columns, cells))
    loss = number(values.get("train_loss"))
    if loss is None and values.get("train_loss") != "#na#":
        return []
    s = PrintedStep(step=int(cells[0]), at=at, fmt="fastai", loss=loss, epoch=float(cells[0]), numbering="epoch",
                    level="epoch")
    metrics = {("val_" + k if not is_eval_key(k) else canonical(k)): v for k, raw in values.items()
               if k not in ("epoch", "train_loss", "time") and (v := number(raw)) is not None}
    elapsed = _seconds(values.get("time", ""))
    if elapsed is not None:
        s.extras["epoch_seconds"] = elapsed
    return [s, PrintedEval(at=at, fmt="fastai", metrics=metrics)] if metrics else [s]
