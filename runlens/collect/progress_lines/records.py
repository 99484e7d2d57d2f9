"""What the progress parser reads out of a printed line: a training step, or an evaluation's result.

Plain data, no behaviour: the parser (``runlens.collect.progress_lines.parser``) makes them, the wrapper's
recorder (``runlens.collect.output_steps``) and ``runlens import`` turn them into ``step_metrics`` rows and
``phase_end`` events. Values are floats as printed, non-finite ones included (``loss nan`` is kept as NaN, so the
divergence rules see it); ``None`` is "not printed".
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How a step got its number.
PRINTED = "printed"            # the line states it (iter 10, step: 10, iteration 10/500, num_updates=10)
EPOCH_OFFSET = "epoch_offset"  # an epoch-local count made global: steps of earlier epochs + this count
TQDM = "tqdm"                  # a log dict numbered by the training progress bar beside it (Hugging Face)
LOGGING_STEPS = "logging_steps"  # a log dict numbered k x logging_steps from the run's config or arguments
ORDER = "order"                # a log dict numbered 1, 2, 3, ... by its order: the real step is unknown
EPOCH = "epoch"                # a line printed once per epoch: the epoch is the step

# What kind of progress a step line is.
STEP = "step"                  # a step with its loss (or the step of a format that prints no loss)
EPOCH_LEVEL = "epoch"          # one line per epoch: taken only while no finer format has spoken
PROGRESS = "progress"          # a step number without a loss (DeepSpeed's step=N lines): taken only while
                               # no format with a loss has spoken


@dataclass(slots=True)
class PrintedStep:
    """One step as a progress line printed it."""

    step: int | None
    at: float
    fmt: str
    rank: int | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    epoch: float | None = None
    step_time: float | None = None        # seconds per step, as printed
    data_time: float | None = None        # seconds per step waiting for data, as printed
    tokens_per_sec: float | None = None
    samples_per_sec: float | None = None
    extras: dict[str, float] = field(default_factory=dict)
    numbering: str = PRINTED
    level: str = STEP


@dataclass(slots=True)
class PrintedEval:
    """An evaluation's result (eval_loss, val loss, mAP): an eval-phase event, never a step."""

    at: float
    fmt: str
    metrics: dict[str, float]
    rank: int | None = None
    step: int | None = None
    duration: float | None = None         # seconds the evaluation took, where printed (eval_runtime)


Record = PrintedStep | PrintedEval
