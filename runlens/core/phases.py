"""Phase names: the one vocabulary for the non-training parts of a run (``with mon.phase("eval"):``).

The collectors use it to give a phase its hang budget, the analyzer to take evaluation and checkpoint time out
of training time. Names are matched case-insensitively; ``eval:val_loss`` and ``eval/epoch_2`` count as
``eval``.
"""

from __future__ import annotations

# Evaluation and checkpointing explain most step-time spikes in a training loop: time spent in them is not
# training, and a run that stops inside one is waiting on them, not on a step.
EVAL_PHASES = frozenset({"eval", "evaluate", "evaluation", "validate", "validation", "val", "sample", "sampling",
                         "predict", "test", "generate", "baseline_sample"})
SAVE_PHASES = frozenset({"save", "checkpoint", "checkpoint_save", "saving"})
OVERHEAD_PHASES = EVAL_PHASES | SAVE_PHASES

# Start-up phases: loading, not training; their memory is not a leak.
STATIC_PHASES = frozenset({"load", "setup", "model_load", "loading", "init"})

# Spellings that share a hang-budget key with a canonical name.
PHASE_ALIASES = {"evaluation": "eval", "evaluate": "eval", "test": "eval", "val": "validate",
                 "validation": "validate", "sampling": "sample", "generate": "sample", "saving": "save",
                 "checkpoint_save": "checkpoint", "checkpointing": "checkpoint", "prediction": "predict"}


def base_name(name: str) -> str:
    """``Eval:val_loss`` -> ``eval``: the family part of a phase name, lower-cased."""
    return name.split(":")[0].split("/")[0].strip().lower()


def is_overhead(name: str | None) -> bool:
    """True for evaluation and checkpoint phases (under any of their spellings)."""
    if not name:
        return False
    return name.lower() in OVERHEAD_PHASES or base_name(name) in OVERHEAD_PHASES
