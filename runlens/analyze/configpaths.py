"""Where each runlens concept lives in a job's config, per dialect, and what the framework does when it is absent.

A recommendation names an exact key the user can edit ("config.process[0].datasets[0].num_workers"), the value
the run used, and where that value came from: the config snapshot, or the framework's default when the key is
not set (rendered "not set (default 2)"). Paths and defaults come from each framework's own source: ai-toolkit's
``toolkit/config_modules.py`` (https://github.com/ostris/ai-toolkit), Hugging Face ``TrainingArguments``
(transformers' ``training_args.py``) and Lightning's ``Trainer``.

Snapshot shapes:
    ai-toolkit  the job YAML as written: ``{"job": "extension", "config": {"process": [{...}]}}``.
    huggingface ``TrainingArguments.to_dict()``, flat; the key is the bare field name and is shown as
                ``TrainingArguments.<field>``.
    lightning   ``{"trainer": {...}, "model": hparams, "data": datamodule hparams}``.
    generic     anything; the user maps concepts with ``monitoring: paths: {num_workers: loader.workers}``
                (``Settings.config_paths``), else conventional key names are searched anywhere in the config.

Config paths that are not config keys carry a prefix: ``env:NAME`` (an environment variable) and ``shell:CMD``
(a shell limit such as ``ulimit -n``). A tool that applies recommendations to a config file skips those.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from runlens.core.configpath import get_path, parse_path
from runlens.core.dialects import AITOOLKIT, GENERIC, HUGGINGFACE, LIGHTNING

if TYPE_CHECKING:
    from runlens.analyze.findings import Finding
    from runlens.analyze.jobdata import JobData

Source = Literal["config", "default", "unknown"]



class _NoDefault:
    """Marks "this framework has no default we can state" (e.g. the learning rate a Lightning model hard-codes);
    distinct from a real default of None (TrainingArguments.eval_steps=None means "use logging_steps")."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


@dataclass(frozen=True)
class ConceptPath:
    """Where a concept lives in one dialect.

    ``path`` is what is shown to the user; ``lookup`` is where it is read in the snapshot when that differs
    (Hugging Face snapshots are flat). ``aliases`` are older or alternative spellings read when ``path`` is
    absent (ai-toolkit's legacy ``gradient_accumulation_steps``). ``path=None`` means the dialect has no config
    key for it; ``how`` then says where the setting is made instead.
    """

    path: str | None
    default: Any = NO_DEFAULT
    lookup: str | None = None
    aliases: tuple[str, ...] = ()
    how: str | None = None


@dataclass(frozen=True)
class ConfigRef:
    """A concept resolved against one job's config.

    Attributes:
        concept: the runlens name ("num_workers").
        path: the exact path to show and edit, or None when the dialect has no key for it.
        current_value: the value in the config, else the framework default (None if unknown).
        source: "config" (read from the snapshot), "default" (absent; the framework default applies) or
            "unknown" (absent and no default is known).
        default: the framework default, whatever the source.
        hint: for the generic dialect, how to tell runlens where the key lives; for keyless settings, where
            the setting is made instead.
    """

    concept: str
    path: str | None
    current_value: Any
    source: Source
    default: Any = None
    hint: str | None = None

    @property
    def display(self) -> str:
        """The current value as the report shows it: ``4``, or ``not set (default 2)``."""
        if self.source == "config":
            return repr(self.current_value) if isinstance(self.current_value, str) else str(self.current_value)
        if self.source == "default":
            return f"not set (default {self.default})"
        return "not set"


_P0 = "config.process[0]"

# ai-toolkit: defaults from toolkit/config_modules.py, and toolkit/data_loader.py reads num_workers and
# prefetch_factor from datasets[0] only (https://github.com/ostris/ai-toolkit).
AITOOLKIT_PATHS: dict[str, ConceptPath] = {
    "num_workers": ConceptPath(f"{_P0}.datasets[0].num_workers", 2),
    "prefetch_factor": ConceptPath(f"{_P0}.datasets[0].prefetch_factor", 2),
    "persistent_workers": ConceptPath(None, True, how="ai-toolkit forces persistent_workers=True when workers > 0"),
    "pin_memory": ConceptPath(None, NO_DEFAULT, how="not configurable in ai-toolkit"),
    "batch_size": ConceptPath(f"{_P0}.train.batch_size", 1),
    "gradient_accumulation": ConceptPath(f"{_P0}.train.gradient_accumulation", 1,
                                         aliases=(f"{_P0}.train.gradient_accumulation_steps",)),
    "learning_rate": ConceptPath(f"{_P0}.train.lr", 1e-6),
    "max_grad_norm": ConceptPath(f"{_P0}.train.max_grad_norm", 1.0),
    "gradient_checkpointing": ConceptPath(f"{_P0}.train.gradient_checkpointing", True),
    "quantize": ConceptPath(f"{_P0}.model.quantize", False),
    "qtype": ConceptPath(f"{_P0}.model.qtype", "qfloat8"),
    "quantize_te": ConceptPath(f"{_P0}.model.quantize_te", False),
    "use_ema": ConceptPath(f"{_P0}.train.ema_config.use_ema", False),
    "resolution": ConceptPath(f"{_P0}.datasets[0].resolution", 512),
    "precision": ConceptPath(f"{_P0}.train.dtype", "fp32"),
    "cache_latents": ConceptPath(f"{_P0}.datasets[0].cache_latents", False),
    "cache_latents_to_disk": ConceptPath(f"{_P0}.datasets[0].cache_latents_to_disk", False),
    "cache_text_embeddings": ConceptPath(f"{_P0}.train.cache_text_embeddings", False),
    "eval_steps": ConceptPath(f"{_P0}.sample.sample_every", 100),
    "sample_every": ConceptPath(f"{_P0}.sample.sample_every", 100),
    "skip_first_sample": ConceptPath(f"{_P0}.train.skip_first_sample", False),
    "save_steps": ConceptPath(f"{_P0}.save.save_every", 1000),
    "save_total_limit": ConceptPath(f"{_P0}.save.max_step_saves_to_keep", 5),
    "layer_offloading": ConceptPath(f"{_P0}.model.layer_offloading", False),
    "low_vram": ConceptPath(f"{_P0}.model.low_vram", False),
    "device": ConceptPath(f"{_P0}.device", NO_DEFAULT),
    "ddp_timeout": ConceptPath(None, NO_DEFAULT, how="ai-toolkit runs one process; no collective timeout"),
    "sample_interval": ConceptPath("monitoring.sample_interval", 5.0),
}

# Hugging Face TrainingArguments: field defaults from transformers' training_args.py
# (https://github.com/huggingface/transformers/blob/main/src/transformers/training_args.py).
_HF_FIELDS: dict[str, tuple[str, Any]] = {
    "num_workers": ("dataloader_num_workers", 0),
    "prefetch_factor": ("dataloader_prefetch_factor", None),
    "persistent_workers": ("dataloader_persistent_workers", False),
    "pin_memory": ("dataloader_pin_memory", True),
    "batch_size": ("per_device_train_batch_size", 8),
    "gradient_accumulation": ("gradient_accumulation_steps", 1),
    "learning_rate": ("learning_rate", 5e-5),
    "max_grad_norm": ("max_grad_norm", 1.0),
    "gradient_checkpointing": ("gradient_checkpointing", False),
    "precision": ("bf16", False),
    "fp16": ("fp16", False),
    "eval_steps": ("eval_steps", None),
    "save_steps": ("save_steps", 500),
    "save_total_limit": ("save_total_limit", None),
    "auto_find_batch_size": ("auto_find_batch_size", False),
    "warmup_ratio": ("warmup_ratio", 0.0),
    "ddp_timeout": ("ddp_timeout", 1800),
    "torch_empty_cache_steps": ("torch_empty_cache_steps", None),
}
HUGGINGFACE_PATHS: dict[str, ConceptPath] = {
    concept: ConceptPath(f"TrainingArguments.{key}", default, lookup=key)
    for concept, (key, default) in _HF_FIELDS.items()
}
HUGGINGFACE_PATHS.update({
    "quantize": ConceptPath(None, False, how="load the model with BitsAndBytesConfig(load_in_8bit=True)"),
    "use_ema": ConceptPath(None, False, how="diffusers scripts: drop --use_ema"),
    "resolution": ConceptPath(None, NO_DEFAULT, how="model-specific (image size or max_length)"),
    "sample_interval": ConceptPath("monitoring.sample_interval", 5.0),
})

# Lightning: the integration snapshots {"trainer": {...}, "model": hparams, "data": datamodule hparams}
# (issue 5). Trainer defaults from lightning.pytorch.Trainer; DataLoader defaults for data.*.
LIGHTNING_PATHS: dict[str, ConceptPath] = {
    "num_workers": ConceptPath("data.num_workers", 0),
    "prefetch_factor": ConceptPath("data.prefetch_factor", 2),
    "persistent_workers": ConceptPath("data.persistent_workers", False),
    "pin_memory": ConceptPath("data.pin_memory", False),
    "batch_size": ConceptPath("data.batch_size", 1),
    "gradient_accumulation": ConceptPath("trainer.accumulate_grad_batches", 1),
    "learning_rate": ConceptPath("model.lr", NO_DEFAULT, aliases=("model.learning_rate",)),
    "max_grad_norm": ConceptPath("trainer.gradient_clip_val", None),
    "gradient_checkpointing": ConceptPath(
        None, False, aliases=("model.gradient_checkpointing",),
        how="model-level: model.gradient_checkpointing_enable() or FSDP activation_checkpointing_policy"),
    "precision": ConceptPath("trainer.precision", "32-true"),
    "eval_steps": ConceptPath("trainer.val_check_interval", 1.0),
    "save_steps": ConceptPath(None, NO_DEFAULT, how="ModelCheckpoint(every_n_train_steps=...)"),
    "quantize": ConceptPath(None, False, how='Trainer(plugins=BitsandbytesPrecision("int8"))'),
    "use_ema": ConceptPath(None, False, how="remove the WeightAveraging/EMA callback"),
    "resolution": ConceptPath(None, NO_DEFAULT, aliases=("data.resolution", "data.image_size")),
    "ddp_timeout": ConceptPath(None, 1800, how="DDPStrategy(timeout=timedelta(...))"),
    "sample_interval": ConceptPath("monitoring.sample_interval", 5.0),
}

# Generic: conventional key names, searched anywhere in the config (shallowest first, first match wins).
GENERIC_KEYS: dict[str, tuple[str, ...]] = {
    "num_workers": ("num_workers", "dataloader_num_workers", "workers"),
    "prefetch_factor": ("prefetch_factor", "dataloader_prefetch_factor"),
    "persistent_workers": ("persistent_workers", "dataloader_persistent_workers"),
    "pin_memory": ("pin_memory", "dataloader_pin_memory"),
    "batch_size": ("batch_size", "per_device_train_batch_size", "train_batch_size"),
    "gradient_accumulation": ("gradient_accumulation_steps", "gradient_accumulation", "accumulate_grad_batches",
                              "grad_accum"),
    "learning_rate": ("learning_rate", "lr"),
    "max_grad_norm": ("max_grad_norm", "gradient_clip_val", "clip_grad_norm", "grad_clip"),
    "gradient_checkpointing": ("gradient_checkpointing", "activation_checkpointing"),
    "quantize": ("quantize", "load_in_8bit"),
    "qtype": ("qtype",),
    "use_ema": ("use_ema", "ema"),
    "resolution": ("resolution", "image_size", "img_size"),
    "precision": ("precision", "mixed_precision", "dtype"),
    "eval_steps": ("eval_steps", "eval_every", "sample_every", "val_check_interval"),
    "sample_every": ("sample_every",),
    "save_steps": ("save_steps", "save_every", "checkpoint_every"),
    "save_total_limit": ("save_total_limit", "max_step_saves_to_keep", "keep_last"),
    "cache_latents": ("cache_latents",),
    "ddp_timeout": ("ddp_timeout", "timeout"),
    "sample_interval": ("sample_interval", "sample_interval_seconds"),
}

TABLES: dict[str, dict[str, ConceptPath]] = {
    AITOOLKIT: AITOOLKIT_PATHS,
    HUGGINGFACE: HUGGINGFACE_PATHS,
    LIGHTNING: LIGHTNING_PATHS,
}

CONCEPTS: tuple[str, ...] = tuple(sorted(set(AITOOLKIT_PATHS) | set(HUGGINGFACE_PATHS) | set(LIGHTNING_PATHS)
                                         | set(GENERIC_KEYS)))


# -- reading a path --------------------------------------------------------------------------------------

def _get(config: Any, path: str) -> tuple[bool, Any]:
    """configpath.get_path, with a malformed (user-written) path read as "not found"."""
    try:
        return get_path(config, path)
    except ValueError:
        return False, None


def _walk(config: Any) -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a nested config, shallowest first, in key order."""
    queue: deque[tuple[str, Any]] = deque([("", config)])
    while queue:
        prefix, node = queue.popleft()
        if isinstance(node, Mapping):
            for k, v in node.items():
                path = f"{prefix}.{k}" if prefix else str(k)
                yield path, str(k), v
                if isinstance(v, (Mapping, list)):
                    queue.append((path, v))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, (Mapping, list)):
                    queue.append((f"{prefix}[{i}]", v))


def find_key(config: Any, names: Sequence[str]) -> tuple[str, Any] | None:
    """The first key named one of ``names`` anywhere in ``config`` (shallowest first, ``monitoring`` skipped)."""
    if not isinstance(config, Mapping):
        return None
    wanted = {n.lower(): rank for rank, n in enumerate(names)}
    best: tuple[int, int, str, Any] | None = None
    for order, (path, key, value) in enumerate(_walk(config)):
        if path.startswith("monitoring.") or path == "monitoring":
            continue
        rank = wanted.get(key.lower())
        if rank is None or isinstance(value, (Mapping, list)) and key.lower() != "resolution":
            continue
        depth = path.count(".") + path.count("[")
        cand = (depth, rank, path, value)
        if best is None or cand[:2] < best[:2]:
            best = cand
    return (best[2], best[3]) if best else None


# -- resolving a concept ---------------------------------------------------------------------------------

def resolve(data: JobData, concept: str) -> ConfigRef:
    """Resolve ``concept`` against ``data``'s config in ``data``'s dialect.

    A user mapping in ``monitoring.paths`` (``Settings.config_paths``) wins in every dialect, so a user can
    point runlens at their own key even in a known framework.
    """
    return resolve_config(data.config, data.dialect, concept, data.settings.config_paths)


def resolve_config(config: Mapping[str, Any] | None, dialect: str, concept: str,
                   user_paths: Mapping[str, str] | None = None) -> ConfigRef:
    """``resolve`` on plain values (for callers without a JobData)."""
    cfg: Any = config or {}
    user_path = (user_paths or {}).get(concept)
    if user_path is None and isinstance(cfg, Mapping):
        mon = cfg.get("monitoring")
        if isinstance(mon, Mapping):
            paths = mon.get("paths") or mon.get("config_paths")
            if isinstance(paths, Mapping) and concept in paths:
                user_path = str(paths[concept])
    table = TABLES.get(dialect)
    entry = table.get(concept) if table else None
    default = entry.default if entry else NO_DEFAULT
    shown_default = None if default is NO_DEFAULT else default

    if user_path:
        found, value = _get(cfg, user_path)
        if found:
            return ConfigRef(concept, user_path, value, "config", shown_default)
        return _absent(concept, user_path, default)

    if entry is not None:
        for candidate in (entry.lookup or entry.path, *entry.aliases):
            if candidate is None:
                continue
            found, value = _get(cfg, candidate)
            if not found and dialect == HUGGINGFACE and entry.lookup:
                # A TrainingArguments dict nested under a key of the user's own config.
                for outer in ("TrainingArguments", "training_args", "args"):
                    found, value = _get(cfg, f"{outer}.{entry.lookup}")
                    if found:
                        break
            if found:
                shown = entry.path if candidate == (entry.lookup or entry.path) else candidate
                return ConfigRef(concept, shown, value, "config", shown_default, entry.how)
        if entry.path is None:
            if default is NO_DEFAULT:
                return ConfigRef(concept, None, None, "unknown", None, entry.how)
            return ConfigRef(concept, None, default, "default", default, entry.how)
        return _absent(concept, entry.path, default)

    # Generic dialect (or a concept the dialect's table lacks): conventional names anywhere.
    names = GENERIC_KEYS.get(concept, (concept,))
    hit = find_key(cfg, names)
    if hit is not None:
        return ConfigRef(concept, hit[0], hit[1], "config", None)
    return ConfigRef(concept, names[0], None, "unknown", None,
                     hint=f"not found in the config; map it with `monitoring: paths: {{{concept}: <path>}}`")


def _absent(concept: str, path: str, default: Any) -> ConfigRef:
    if default is NO_DEFAULT:
        return ConfigRef(concept, path, None, "unknown", None)
    return ConfigRef(concept, path, default, "default", default)


def apply_ref(finding: Finding, ref: ConfigRef, recommended: Any, *, measured: Any = None) -> Finding:
    """Fill a finding's config fields from ``ref``.

    ``measured`` is what the run actually used when runlens saw it (e.g. the live worker count); it replaces
    the value only when the config does not say (a default is a guess about the run, a measurement is not).
    """
    finding.config_key = ref.concept
    finding.config_path = ref.path
    if ref.source == "config":
        finding.current_value, finding.current_value_source = ref.current_value, "config"
    elif measured is not None:
        finding.current_value, finding.current_value_source = measured, "measured"
    else:
        finding.current_value, finding.current_value_source = ref.current_value, ref.source
    finding.recommended_value = recommended
    if ref.source == "default":
        finding.evidence.setdefault("config_note", f"{ref.path} is not set (default {ref.default})")
    if ref.hint:
        finding.evidence.setdefault("config_hint", ref.hint)
    return finding


def prefer_measured(finding: Finding, measured: Any) -> Finding:
    """Make ``measured`` the finding's current value where the run measurably used another value than its config
    says (a batch-size ramp starts from the config's value and goes on). The config's value is kept in
    ``config_value`` so the card can say both."""
    if measured is None or finding.current_value == measured:
        return finding
    if finding.current_value_source == "config":
        finding.config_value = finding.current_value
        finding.evidence.setdefault("config_note", f"the config says {finding.current_value!r}; the run used "
                                                   f"{measured!r}")
    finding.current_value, finding.current_value_source = measured, "measured"
    return finding


def precision_change(dialect: str) -> tuple[str, Any]:
    """The (concept, literal) that switches a dialect to bf16 mixed precision."""
    if dialect == AITOOLKIT:
        return "precision", "bf16"
    if dialect == HUGGINGFACE:
        return "precision", True          # TrainingArguments.bf16 = True
    if dialect == LIGHTNING:
        return "precision", "bf16-mixed"
    return "precision", "bf16"


__all__ = [
    "CONCEPTS",
    "GENERIC",
    "ConceptPath",
    "ConfigRef",
    "apply_ref",
    "find_key",
    "get_path",
    "parse_path",
    "precision_change",
    "prefer_measured",
    "resolve",
    "resolve_config",
]
