"""Which training framework a config snapshot came from, so recommendations can name its exact config paths.

Pure functions on plain dicts: shared by the collectors (which record the dialect with the job) and the
analyzer (which resolves config paths in it).
"""

from __future__ import annotations

from typing import Any, Mapping

AITOOLKIT = "ai-toolkit"
HUGGINGFACE = "huggingface"
LIGHTNING = "lightning"
GENERIC = "generic"
DIALECTS = (AITOOLKIT, HUGGINGFACE, LIGHTNING, GENERIC)

_HF_KEYS = {"per_device_train_batch_size", "dataloader_num_workers", "gradient_accumulation_steps",
            "learning_rate", "output_dir", "max_grad_norm", "logging_steps", "save_steps", "eval_strategy",
            "evaluation_strategy", "num_train_epochs", "warmup_ratio"}
_PL_KEYS = {"max_epochs", "accumulate_grad_batches", "gradient_clip_val", "precision", "devices",
            "accelerator", "val_check_interval", "check_val_every_n_epoch", "limit_train_batches",
            "log_every_n_steps", "max_steps", "num_sanity_val_steps", "enable_checkpointing", "strategy",
            "num_nodes", "gradient_clip_algorithm", "limit_val_batches", "default_root_dir"}


def detect_dialect(config: Mapping[str, Any] | None) -> str:
    """Guess the dialect of a config snapshot; an explicit ``monitoring.dialect`` wins."""
    if not isinstance(config, Mapping):
        return GENERIC
    monitoring = config.get("monitoring")
    if isinstance(monitoring, Mapping) and monitoring.get("dialect") in DIALECTS:
        return str(monitoring["dialect"])
    inner = config.get("config")
    if isinstance(inner, Mapping) and isinstance(inner.get("process"), list):
        return AITOOLKIT
    if config.get("job") in ("extension", "train") and isinstance(config.get("config"), Mapping):
        return AITOOLKIT
    keys = set(config)
    if len(keys & _HF_KEYS) >= 2 or "per_device_train_batch_size" in keys:
        return HUGGINGFACE
    trainer = config.get("trainer")
    if isinstance(trainer, Mapping) and (len(set(trainer) & _PL_KEYS) >= 1 or {"model", "data"} & keys):
        return LIGHTNING   # the Lightning integration's (and LightningCLI's) {"trainer", "model", "data"} shape
    if len(keys & _PL_KEYS) >= 2:
        return LIGHTNING
    return GENERIC
