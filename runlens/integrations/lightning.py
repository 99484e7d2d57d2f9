"""runlens for Lightning: one callback, no change to the LightningModule.

    from runlens.integrations.lightning import RunlensCallback
    trainer = lightning.Trainer(..., callbacks=[RunlensCallback()])
    trainer.fit(model, datamodule=dm)

Works with ``lightning`` (``lightning.pytorch``) and the older ``pytorch_lightning`` package.

What is recorded:

* every optimizer step (a change of ``trainer.global_step``): the loss (the sum of its micro-batches' ``loss``
  outputs, which Lightning divides by ``accumulate_grad_batches``, so the mean micro-batch loss), the learning
  rate of the first parameter group as the optimizer is about to use it, the total 2-norm of the gradients
  before clipping (``on_before_optimizer_step`` runs before Lightning clips; kept as a tensor, resolved on
  runlens's writer thread, so the step never waits for the device), the micro-batch size (``batch_size``), the
  effective batch size (× ``accumulate_grad_batches`` × processes), the epoch, and the time the loop waited
  for its batches;
* phases: ``sanity_check``, ``eval`` (``on_validation_start`` .. ``on_validation_end``) and ``save``
  (``on_save_checkpoint`` until the next hook: Lightning calls it while building the checkpoint, before the
  file is written, and has no hook after the write), with a ``checkpoint_saved`` event; validation metrics as
  an ``eval_metrics`` event;
* the config snapshot ``{"trainer": Trainer arguments, "model": LightningModule hparams, "data": DataModule
  hparams}`` (dialect ``lightning``), so recommendations name ``data.num_workers`` or
  ``trainer.accumulate_grad_batches``; the train DataLoader's actual settings as a ``dataloader`` event;
* start and end (``on_fit_start`` / ``on_fit_end``) and the exception that ends ``fit`` (``on_exception``,
  with its traceback; the job is marked failed).

Only the global-zero process records unless ``all_ranks=True``. Only ``fit`` is recorded;
``validate``/``test``/``predict`` on their own are not (pass ``monitor=`` to record into a Monitor of yours).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.data import extract_batch_size
except ImportError:
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.utilities.data import extract_batch_size  # type: ignore[no-redef,unused-ignore]
    except ImportError as exc:  # pragma: no cover - exercised only without Lightning
        raise ImportError(
            "runlens.integrations.lightning needs Lightning: pip install 'runlens[lightning]'"
        ) from exc

import torch

from runlens.core.dialects import LIGHTNING
from runlens.integrations.base import RecordingCallback

log = logging.getLogger(__name__)

_perf = time.perf_counter

# Trainer attributes that make up the "trainer" section of the snapshot (the effective values: what the
# Trainer resolved its arguments to): those recommendations point at (accumulate_grad_batches, precision,
# val_check_interval, limit_train_batches...) and what explains the run's length and shape.
TRAINER_FIELDS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "precision",
    "num_devices",
    "num_nodes",
    "world_size",
    "val_check_interval",
    "check_val_every_n_epoch",
    "limit_train_batches",
    "limit_val_batches",
    "log_every_n_steps",
    "num_sanity_val_steps",
    "fast_dev_run",
    "reload_dataloaders_every_n_epochs",
    "default_root_dir",
)
# DataLoader settings worth reading off a DataModule that keeps them as attributes but not as hparams.
LOADER_FIELDS = ("batch_size", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor")


class RunlensCallback(RecordingCallback, pl.Callback):  # type: ignore[misc,unused-ignore]
    """Record a Lightning ``fit`` with runlens.

    Args:
        name: the job's name; default the LightningModule's class name.
        db: store URL or SQLite path; default ``RUNLENS_DB`` or ``./runlens.db`` (ignored under
            ``runlens collect``, which hands its own store to the run).
        monitor: an already started ``runlens.Monitor`` to record into; the callback then neither starts nor
            closes it.
        all_ranks: record on every process, not only global zero.
        grad_norm: compute the total gradient norm each optimizer step (one extra pass over the gradients on
            the device; turn off for very large models if it shows in the profile).
        **settings: runlens settings for the Monitor (``sample_interval=1.0``, ...).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        db: str | None = None,
        monitor: Any = None,
        all_ranks: bool = False,
        grad_norm: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(name, db=db, monitor=monitor, all_ranks=all_ranks, **settings)
        self.compute_grad_norm = grad_norm
        self._loss: Any = None
        self._lr: float | None = None
        self._grad_norm: Any = None
        self._batch_size: int | None = None
        self._last_global_step = 0
        self._save_open = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        def describe() -> tuple[str, Mapping[str, Any]]:
            return self.name or type(pl_module).__name__, lightning_snapshot(trainer, pl_module)

        if not self.start_recording(trainer.is_global_zero, describe, LIGHTNING):
            return
        self._last_global_step = trainer.global_step
        self._batch_multiplier = max(1, int(trainer.accumulate_grad_batches or 1)) * max(
            1, trainer.world_size
        )
        self.monitor.event(
            "fit_begin",
            framework="lightning",
            version=getattr(pl, "__version__", None),
            global_step=trainer.global_step,
            max_steps=trainer.max_steps,
            max_epochs=trainer.max_epochs,
            world_size=trainer.world_size,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
        )

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is None:
            return
        self._end_save(trainer)
        self._phase.close()
        self.monitor.event("fit_end", global_step=trainer.global_step, epoch=trainer.current_epoch)
        self._release()

    def on_exception(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException
    ) -> None:
        if self._phase is None:
            return
        self._save_open = False
        self.fail(exception)  # recorded with its traceback, the job failed; Lightning re-raises
        self._phase = None

    def _release(self) -> None:
        self.close_monitor()
        self._phase = None  # only fit is recorded, also into a Monitor passed in

    # -- steps ---------------------------------------------------------------------------------------

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            facts = dataloader_facts(trainer.train_dataloader)
            if facts:
                self.monitor.event("dataloader", split="train", **facts)

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            self._end_save(trainer)
            self.mark_idle()  # the epoch's iter(dataloader) (worker start-up) comes next

    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self._phase is None:
            return
        now = _perf()
        self._end_save(trainer)
        # Since the last hook of the previous batch the loop fetched this batch and moved it to the device.
        self.add_data_wait(now)
        try:
            self._batch_size = int(extract_batch_size(batch))
        except Exception:
            self._batch_size = None

    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any
    ) -> None:
        if self._phase is None:
            return
        try:
            self._lr = float(optimizer.param_groups[0]["lr"])
        except Exception:
            self._lr = None
        if self.compute_grad_norm:
            self._grad_norm = total_grad_norm(pl_module)

    def on_train_batch_end(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._phase is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss  # device ops, no sync
        step = trainer.global_step
        if step != self._last_global_step:  # an optimizer step happened in this batch
            self._last_global_step = step
            bs = self._batch_size
            self.monitor.step(
                step,
                loss=self._loss,
                lr=self._lr,
                grad_norm=self._grad_norm,
                batch_size=bs,
                effective_batch_size=bs * self._batch_multiplier if bs else None,
                epoch=trainer.current_epoch,
            )
            self._loss = self._grad_norm = self._lr = None
        self.mark_idle()

    # -- phases --------------------------------------------------------------------------------------

    def on_sanity_check_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            self._phase.open("sanity_check")

    def on_sanity_check_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            self._phase.close()

    def on_validation_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is None or trainer.sanity_checking:
            return
        self._end_save(trainer)
        self._phase.open("eval")

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is None or trainer.sanity_checking:
            return
        self._phase.close()
        metrics = _scalar_metrics(trainer.callback_metrics, "val")
        if metrics:
            self.monitor.event("eval_metrics", step=trainer.global_step, **metrics)
        self.mark_idle()

    def on_save_checkpoint(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        if self._phase is None:
            return
        # The file is written after this hook returns; the phase ends at the next hook we see.
        self._phase.open("save")
        self._save_open = True

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            self._end_save(trainer)
            self.mark_idle()

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self._phase is not None:
            self._end_save(trainer)

    def _end_save(self, trainer: "pl.Trainer") -> None:
        if not self._save_open or self._phase is None:
            return
        self._save_open = False
        if self._phase.name == "save":
            self._phase.close()
        self.monitor.event("checkpoint_saved", path=last_checkpoint_path(trainer), step=trainer.global_step)
        self.mark_idle()


# -- helpers -------------------------------------------------------------------------------------------


def total_grad_norm(module: torch.nn.Module) -> Any:
    """The 2-norm of all gradients together, as a device tensor (no ``.item()``: no sync on the training
    thread).

    ``lightning.pytorch.utilities.grad_norm`` returns per-parameter norms and builds its total with
    ``torch.tensor(list_of_tensors)``, which copies every norm to the host; this stays on the device.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    try:
        get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
        if get_total_norm is not None:
            return get_total_norm(grads, 2.0)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    except Exception as exc:  # sparse or sharded gradients this simple sum does not handle
        log.debug("runlens: gradient norm unavailable: %s", exc)
        return None


def lightning_snapshot(trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> dict[str, Any]:
    """``{"trainer": ..., "model": ..., "data": ...}``: the shape ``runlens.analyze.configpaths`` resolves
    ``data.num_workers``, ``trainer.accumulate_grad_batches`` and ``model.lr`` in."""
    trainer_section: dict[str, Any] = {}
    for field in TRAINER_FIELDS:
        try:
            trainer_section[field] = getattr(trainer, field)
        except Exception:
            continue
    trainer_section["accelerator"] = type(trainer.accelerator).__name__
    trainer_section["strategy"] = type(trainer.strategy).__name__
    trainer_section["callbacks"] = [type(cb).__name__ for cb in getattr(trainer, "callbacks", [])]
    model_section = _hparams(pl_module)
    data_section: dict[str, Any] = {}
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        data_section = _hparams(datamodule)
        for field in LOADER_FIELDS:
            if field not in data_section and isinstance(getattr(datamodule, field, None), (int, bool)):
                data_section[field] = getattr(datamodule, field)
    return {"trainer": trainer_section, "model": model_section, "data": data_section}


def _hparams(obj: Any) -> dict[str, Any]:
    hparams = getattr(obj, "hparams", None)
    try:
        return dict(hparams) if hparams is not None else {}
    except Exception:
        return {}


def dataloader_facts(loader: Any) -> dict[str, Any]:
    """The settings of the (first) train DataLoader as the run used them."""
    if isinstance(loader, (list, tuple)) and loader:
        loader = loader[0]
    elif isinstance(loader, Mapping) and loader:
        loader = next(iter(loader.values()))
    facts = {}
    for field in LOADER_FIELDS:
        value = getattr(loader, field, None)
        if isinstance(value, (int, bool)):
            facts[field] = value
    return facts


def last_checkpoint_path(trainer: "pl.Trainer") -> str | None:
    """Where the checkpoint callback just wrote, when Lightning says (None for
    ``trainer.save_checkpoint``)."""
    for cb in getattr(trainer, "checkpoint_callbacks", None) or []:
        # ModelCheckpoint keeps the file it saved last privately; its public paths are the fallback.
        for attr in ("_last_checkpoint_saved", "last_model_path", "best_model_path"):
            path = getattr(cb, attr, None)
            if path:
                return str(path)
    return None


def _scalar_metrics(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    # After validation the device work is done (Lightning has synced to reduce the metrics), so reading them
    # here costs nothing on the training path.
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not str(key).startswith(prefix):
            continue
        try:
            out[str(key)] = float(value)
        except Exception:
            continue
    return out


__all__ = ["RunlensCallback", "dataloader_facts", "lightning_snapshot", "total_grad_norm"]
