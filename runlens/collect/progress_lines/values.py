"""Numbers and names as trainers print them.

``number`` reads a printed value: ``2.3E+00``, ``10,050`` (thousands), ``66.91GiB`` (a unit after it),
``'2.345'`` (Hugging Face quotes its formatted floats), ``nan`` and ``inf`` (kept: a NaN loss is the news).
``field_of`` maps the many spellings of one quantity (``lm loss``, ``train_loss_step``, ``gnorm``) to the step
field it fills.
"""

from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"[-+]?(?:nan|inf(?:inity)?|(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")


def number(text: str | None) -> float | None:
    """The number at the start of ``text`` (quotes, brackets and spaces skipped), or None.

    ``nan`` and ``inf`` are kept as floats: a diverged loss printed as ``nan`` must reach the store as NaN.
    """
    if not text:
        return None
    t = text.strip().strip("'\"[(")
    m = _NUMBER.match(t)
    if m is None:
        return None
    s = m.group(0)
    if "," in s:
        if not _THOUSANDS.match(s):
            s = s.split(",")[0]   # "0.5," in a list: the first value
        else:
            s = s.replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


# Spellings of each step field, lower-cased, spaces and dashes as underscores.
_FIELDS = {
    "loss": ("loss", "lm_loss", "train_loss", "loss_step", "train_loss_step", "total_loss", "training_loss",
             "train/loss", "loss_train", "train_loss_iter", "closs"),
    "lr": ("lr", "learning_rate", "lr0", "base_lr_", "train/lr", "learning_rate_", "lr_"),
    "grad_norm": ("grad_norm", "gnorm", "norm", "gradient_norm", "train/grad_norm", "grad_norm_"),
    "epoch": ("epoch", "ep"),
    "step_time": ("step_time", "iter_time", "time", "batch_time", "step_time_s"),
    "data_time": ("data_time", "data"),
    "tokens_per_sec": ("tps", "tok/s", "tokens/s", "tokens_per_sec", "tokens_per_second", "tok_per_sec", "wps",
                       "throughput_tokens", "tokens/sec"),
    "samples_per_sec": ("samples/sec", "samples_per_second", "samples_per_sec", "samplespersec",
                        "samples/s", "train_samples_per_second", "it/s_samples"),
}
_BY_NAME = {spelling: name for name, spellings in _FIELDS.items() for spelling in spellings}


def canonical(key: str) -> str:
    """A printed key lower-cased, with spaces and dashes as underscores (``grad norm`` -> ``grad_norm``)."""
    return key.strip().strip("'\"").lower().replace(" ", "_").replace("-", "_")


def field_of(key: str) -> str | None:
    """The step field a printed key fills (``lm loss`` -> ``loss``), or None for another metric."""
    return _BY_NAME.get(canonical(key))


def is_eval_key(key: str) -> bool:
    """An evaluation metric's name: ``eval_loss``, ``val_loss``, ``valid_loss``, ``test/acc``."""
    k = canonical(key)
    return k.startswith(("eval", "val_", "val/", "valid", "test_", "test/", "validation")) or k in ("val", "test")
