"""The line recognisers, in the order they are tried, each with the words one of which must be in a line for it
to be tried (so a line that is no progress line costs a few substring tests).

Each recogniser takes one line (ANSI colours and a rank prefix already removed) and returns the steps and
evaluation results it states, or nothing. They are built from the trainers' own format strings (cited beside each,
in ``language`` and ``vision``), not from sample output. Bars, log dicts and plain loops have their own modules.
"""

from __future__ import annotations

from collections.abc import Callable

from runlens.collect.progress_lines.common import Context
from runlens.collect.progress_lines.language import (
    deepspeed,
    fairseq,
    llama2c,
    llmc,
    megatron,
    modded,
    nanogpt,
    torchtitan,
)
from runlens.collect.progress_lines.records import Record
from runlens.collect.progress_lines.vision import (
    detectron2,
    metriclogger,
    mmengine,
    openpcdet,
    pointcept,
    pytorch_examples,
    timm,
    yolox,
)

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
    ("pytorch_examples", ("Train Epoch: ", "Test set: "), pytorch_examples),
    ("metriclogger", ("Epoch: [", "* Acc@1"), metriclogger),
]

__all__ = ["LINE_FORMATS", "Recogniser"]
