"""What the recognisers share: the printed number, ``key: value`` pairs, the step fields they fill, and the
global step of an epoch-local count (``EpochSteps``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runlens.collect.progress_lines.records import PrintedEval, PrintedStep
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
    table: list[str] | None = None          # fastai's results table: its column names


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


def eval_of(metrics: dict[str, float], at: float, fmt: str, step: int | None = None,
             duration: float | None = None) -> PrintedEval | None:
    return PrintedEval(at=at, fmt=fmt, metrics=metrics, step=step, duration=duration) if metrics else None
