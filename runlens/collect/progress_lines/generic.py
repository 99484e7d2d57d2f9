"""The catch-all: a hand-written loop's ``step 10 ... loss 2.31`` (or ``Epoch 3 ... loss 0.42``), and the user's
own ``--progress-pattern``.

The plain recogniser wants a step word with a number and a loss with a number on one line; lines that talk about
the loss *scale* (fp16 overflow messages) or set options (``logging_steps=10``) are left alone. A line that also
prints a validation loss gives an evaluation result beside the step.
"""

from __future__ import annotations

import re

from runlens.collect.progress_lines.common import NUM, Context, fill
from runlens.collect.progress_lines.records import (
    EPOCH,
    EPOCH_LEVEL,
    EPOCH_OFFSET,
    ORDER,
    PrintedEval,
    PrintedStep,
    Record,
)
from runlens.collect.progress_lines.values import canonical, is_eval_key, number
from runlens.core.errors import BadParameter

_STEP_WORD = re.compile(r"\b(global[ _]step|step|update|iteration|iter|it|batch)\b\s*[:=#]?\s*\[?\s*(\d+)(?!\.\d)"
                        r"(?:\s*/\s*(\d+))?", re.I)
_EPOCH_WORD = re.compile(r"\bepoch\b\s*[:=#]?\s*\[?\s*(\d+)(?!\.\d)(\s*/\s*\d+)?", re.I)
_LOSS = re.compile(r"\b((?:train(?:ing)?[ _/]|val(?:id(?:ation)?)?[ _/]|eval[ _/]|test[ _/])?loss)"
                   r"(?: train)?(?: \(curr\))?\s*[:=]?\s*(" + NUM + r")(?![\w.])", re.I)
# fp16 overflow messages, warnings, checkpoint and early-stopping messages that quote a step and a loss ("saved
# checkpoint at step 1000, loss 2.31"), and the summary lines of formats whose step lines have their own recogniser
# (fairseq's per-epoch "| epoch 008 | loss 6.326 | ... | num_updates 21896").
_NOT_PROGRESS = re.compile(r"loss[ _]scal|overflow|skipping|warning|nan iterations|num_updates|averaged stats|"
                           r"checkpoint|resum|\bbest\b|improved|early stopping|\bsav(?:e|ed|ing)\b|\bload", re.I)
_PAIR = re.compile(r"\b(lr|learning[ _]rate|grad[ _]norm|gnorm|norm|tok/s|tokens/s|tokens/sec|samples/s|"
                   r"(?:iter |step |batch )?time|data[ _]time|dt)\b\s*[:=]?\s*(" + NUM + r")\s*(ms|s)?", re.I)
_WORD_RANK = {"step": 0, "global_step": 0, "global step": 0, "update": 0, "iteration": 1, "iter": 1, "it": 1,
              "batch": 2}


def plain(text: str, at: float, ctx: Context | None = None) -> list[Record]:
    """A hand-written loop's step line (see the module docstring), or nothing. A step counted within its epoch
    (``Epoch [2/5], Step [100/600], Loss: 0.23``) is made global with the epochs before it."""
    losses = [(m.group(1), number(m.group(2))) for m in _LOSS.finditer(text)]
    if not losses or _NOT_PROGRESS.search(text):
        return []
    words = sorted(((_WORD_RANK[m.group(1).lower()], m.start(), int(m.group(2)), m.group(3))
                    for m in _STEP_WORD.finditer(text)))
    train = [(k, v) for k, v in losses if not is_eval_key(k) and not k.lower().startswith("val")]
    evals = {canonical(k): v for k, v in losses if (is_eval_key(k) or k.lower().startswith("val")) and v is not None}
    out: list[Record] = []
    epoch = _EPOCH_WORD.search(text)
    if words and words[0][3] is not None and epoch is not None and ctx is not None:
        # "Epoch [2/5]" counts from 1, "Epoch 0" (no total) from 0.
        step = ctx.epochs.step("plain", int(epoch.group(1)), words[0][2], int(words[0][3]),
                               base=1 if epoch.group(2) else 0)
        numbering, level = EPOCH_OFFSET, "step"
    elif words:
        step, numbering, level = words[0][2], "printed", "step"
    else:
        if epoch is None:
            return []
        step, numbering, level = int(epoch.group(1)), EPOCH, EPOCH_LEVEL
    if train:
        s = PrintedStep(step=step, at=at, fmt="plain", loss=train[0][1], numbering=numbering, level=level)
        for key, raw, unit in _PAIR.findall(text):
            k = canonical(key)
            if k in ("dt", "time", "iter_time", "step_time", "batch_time"):
                k = "step_time"
            fill(s, k, number(raw), unit.lower())
        out.append(s)
    if evals:
        out.append(PrintedEval(at=at, fmt="plain", metrics=evals, step=step if numbering != EPOCH else None))
    return out


_GROUPS = {"step", "loss", "lr", "grad_norm", "epoch", "step_time", "step_time_ms", "data_time", "tokens_per_sec",
           "samples_per_sec", "rank"}


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A ``--progress-pattern``: a regular expression with named groups ``step``, ``loss``, ``lr``, ``grad_norm``,
    ``epoch``, ``step_time`` (seconds) or ``step_time_ms``, ``tokens_per_sec``, ``samples_per_sec``, ``rank``;
    other named groups holding numbers become extra scalars.

    Raises:
        BadParameter: the pattern does not compile, or has neither a ``step`` nor a ``loss`` group.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise BadParameter("--progress-pattern", f"{pattern!r} does not compile: {exc}") from None
    if "step" not in rx.groupindex and "loss" not in rx.groupindex:
        raise BadParameter("--progress-pattern", f"{pattern!r} has no (?P<step>...) or (?P<loss>...) group")
    return rx


def custom(rx: re.Pattern[str], text: str, at: float) -> list[Record]:
    """The step a user's pattern finds in ``text``, or nothing."""
    m = rx.search(text)
    if m is None:
        return []
    groups = {k: v for k, v in m.groupdict().items() if v is not None}
    step = number(groups.get("step"))
    s = PrintedStep(step=int(step) if step is not None else None, at=at, fmt="pattern",
                    numbering="printed" if step is not None else ORDER)
    for key, raw in groups.items():
        v = number(raw)
        if key == "step" or v is None:
            continue
        if key == "rank":
            s.rank = int(v)
        elif key == "step_time_ms":
            s.step_time = v / 1000.0
        elif key in _GROUPS:
            setattr(s, key, v)
        elif len(s.extras) < 12:
            s.extras[canonical(key)] = v
    return [s]
