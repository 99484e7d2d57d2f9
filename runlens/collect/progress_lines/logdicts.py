"""Metric dictionaries printed one per line: the Hugging Face Trainer's log dicts, fairseq's and Detectron's JSON
lines.

A Hugging Face Trainer prints ``{'loss': 2.345, 'grad_norm': 1.2, 'learning_rate': 5e-05, 'epoch': 0.25}`` every
``logging_steps`` (``ProgressCallback.on_log``: ``self.training_bar.write(str(logs))``; since transformers 4.5x
the floats are formatted first, ``{'loss': '2.345', ...}``). The dict carries no step number: the parser numbers
it (``runlens.collect.progress_lines.numbering``). Its evaluation dicts (``eval_loss``, ``eval_runtime``) are
evaluation results; the final summary (``train_runtime``, ``train_loss``) is neither a step nor an evaluation.
"""

from __future__ import annotations

import re

from runlens.collect.progress_lines.records import EPOCH, EPOCH_LEVEL, ORDER, PrintedEval, PrintedStep, Record
from runlens.collect.progress_lines.values import canonical, field_of, is_eval_key, number

_ITEM = re.compile(r"""['"]([^'"]{1,80})['"]\s*:\s*(?:'([^']*)'|"([^"]*)"|([^,}\s]+))""")
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
_STEP_KEYS = ("step", "global_step", "iter", "iteration", "num_updates", "steps")


def items(text: str) -> dict[str, str]:
    """The ``'key': value`` items of a printed dict, values as text."""
    return {m.group(1): next(g for g in m.groups()[1:] if g is not None) for m in _ITEM.finditer(text)}


def log_dict(text: str, at: float) -> list[Record]:
    """The step or evaluation a printed metrics dict states (see the module docstring), or nothing."""
    body = text.strip()
    brace = body.find("{")
    if brace < 0 or not body.endswith("}"):
        return []
    found = items(body[brace:])
    if not found or any(k in found for k in _SUMMARY_KEYS):
        return []
    keys = {canonical(k): k for k in found}
    out: list[Record] = []
    step = next((int(v) for k in _STEP_KEYS if k in keys and (v := number(found[keys[k]])) is not None), None)
    if any(is_eval_key(k) for k in keys):
        metrics = {canonical(k): v for k, raw in found.items() if is_eval_key(k) and (v := number(raw)) is not None
                   and not canonical(k).endswith(("_runtime", "_per_second"))}
        duration = number(found.get("eval_runtime", ""))
        if metrics:
            out.append(PrintedEval(at=at, fmt="hf_dict", metrics=metrics, step=step, duration=duration))
    loss_key = next((keys[k] for k in ("loss", "train_loss", "lm_loss") if k in keys), None)
    if loss_key is None:
        return out
    fairseq = "num_updates" in keys
    if fairseq and "update" not in keys:
        return out   # fairseq's per-epoch summary line: the epoch's means, not a step
    hf = any(k in keys for k in ("learning_rate", "grad_norm", "epoch"))
    if step is None and not hf:
        return out
    s = PrintedStep(step=step, at=at, fmt="fairseq" if fairseq else "hf_dict", loss=number(found[loss_key]))
    if step is None:
        s.numbering = ORDER   # until the parser numbers it
        if "learning_rate" not in keys and "grad_norm" not in keys and canonical(loss_key) == "train_loss":
            # {"train_lr": ..., "train_loss": ..., "epoch": 12} (DeiT's log.txt): one line per epoch.
            epoch = number(found.get(keys.get("epoch", ""), ""))
            if epoch is None:
                return out
            s.step, s.numbering, s.level = int(epoch), EPOCH, EPOCH_LEVEL
    for key, raw in found.items():
        if key == loss_key or canonical(key) in _STEP_KEYS or canonical(key) in ("update", "wall", "clip", "oom"):
            continue
        v = number(raw)
        if v is None:
            continue
        name = field_of(key)
        if name is not None and getattr(s, name) is None and name not in ("step_time", "data_time"):
            setattr(s, name, v)
        elif canonical(key) == "train_lr" and s.lr is None:
            s.lr = v
        elif len(s.extras) < 12 and not is_eval_key(key):
            s.extras[canonical(key)] = v
    return [s, *out]
