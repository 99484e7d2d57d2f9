"""runlens for the Hugging Face ``Trainer``: one callback, no change to the training code.

    from runlens.integrations.transformers import RunlensCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[RunlensCallback()])
    trainer.train()

or, for an existing trainer, ``attach(trainer)``; ``train(trainer)`` also records an exception that the caller
then catches (see "Exceptions" below).

What is recorded:

* every optimizer step: the loss (the sum of its micro-batches' losses, i.e. what ``Trainer`` logs with
  ``logging_steps=1``), the learning rate the step used, the gradient norm before clipping, the per-device
  batch size (``batch_size``), the effective batch size (× gradient accumulation × processes, extra
  ``effective_batch_size``), tokens when ``include_num_input_tokens_seen`` is on, the epoch, and the time the
  step waited for its batch;
* phases: ``eval`` (from the end of the step that triggers it to ``on_evaluate``), ``save`` (to ``on_save``,
  with a ``checkpoint_saved`` event naming the folder), ``predict``; evaluation metrics as an ``eval_metrics``
  event;
* the ``TrainingArguments`` (``to_dict()``, secrets redacted) as the config snapshot, dialect ``huggingface``,
  so recommendations name ``TrainingArguments.dataloader_num_workers`` and friends;
* start and end (``on_train_begin`` / ``on_train_end``), and the exception that ends a run.

Why the loop's locals: ``Trainer`` hands callbacks neither the step's loss nor its gradient norm; both live
only in the training loop's local variables (``tr_loss_step``, ``grad_norm``) and reach callbacks every
``logging_steps`` steps, averaged. Reading them once per step from the loop's frame (a few microseconds,
``_LoopView``) gives exact per-step values without subclassing or patching ``Trainer``. The names have been
stable from transformers 4.40 to 5.x; if a future version renames them, the step is still recorded (time,
batch size, learning rate) and a one-line warning says loss and gradient norm are missing. No tensor is read
on the training thread: the Monitor resolves them on its writer thread.

Exceptions: ``TrainerCallback`` has no exception hook. An exception that ends the program is still recorded
with its traceback: the Monitor's ``atexit`` hook finds it in ``sys.last_value`` and marks the job failed (and
under ``runlens collect`` the wrapper sees the exit code too). An exception the caller catches and survives is
invisible to a callback; use ``train(trainer)`` (or ``with runlens.Monitor() as mon:`` around
``trainer.train()`` with ``RunlensCallback(monitor=mon)``) to record it.

``report_to``: transformers resolves ``report_to`` names through its own ``INTEGRATION_TO_CALLBACK`` dict,
with no public way to register a new name; adding "runlens" there would mean patching transformers at import
time, which runlens does not do. Pass ``callbacks=[RunlensCallback()]`` or call ``attach(trainer)``.

Ranks: only the world's main process records unless ``all_ranks=True``; under ``runlens collect`` every rank
that records writes into the wrapper's job with its ``RANK``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Mapping

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "runlens.integrations.transformers needs Hugging Face transformers: "
        "pip install 'runlens[transformers]'"
    ) from exc

from runlens.core.dialects import HUGGINGFACE
from runlens.integrations.base import PhaseSlot, RecordingCallback

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

_perf = time.perf_counter
CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class _LoopView:
    """The Trainer training loop's local variables, read from its frame.

    The loop is the nearest caller frame whose code has both ``tr_loss_step`` and ``grad_norm`` locals (the
    names are the same in transformers 4.40 to 5.x, in ``_inner_training_loop`` or ``_run_epoch``). Its code
    object is remembered, so later lookups compare identities while walking the few frames of the callback
    handler. Nothing is written into the loop's variables (see ``_read_locals``).
    """

    __slots__ = ("_code", "failed")
    MAX_DEPTH = 8

    def __init__(self) -> None:
        self._code: Any = None
        self.failed = False

    def frame(self) -> FrameType | None:
        f: FrameType | None = sys._getframe(2)
        code = self._code
        for _ in range(self.MAX_DEPTH):
            if f is None:
                return None
            c = f.f_code
            if c is code:
                return f
            if code is None and "tr_loss_step" in c.co_varnames and "grad_norm" in c.co_varnames:
                self._code = c
                return f
            f = f.f_back
        return None

    def read(self, *names: str) -> tuple[Any, ...] | None:
        f = self.frame()
        if f is None:
            return None
        return _read_locals(f, names)


# Python <= 3.12: ``frame.f_locals`` is a dict snapshot cached on the frame until it returns, holding
# references to every local (the step's batch on the device, among them) until the next read: one extra batch
# of device memory during the next step. Clearing the snapshot after reading drops them; CPython only copies a
# snapshot back into the frame when a trace function ran, and then skips missing names. From 3.13 (PEP 667)
# f_locals is a live proxy that holds nothing and must not be cleared (that would delete the frame's
# variables).
_SNAPSHOT_LOCALS = sys.version_info < (3, 13)


def _read_locals(frame: FrameType, names: tuple[str, ...]) -> tuple[Any, ...]:
    local = frame.f_locals
    try:
        return tuple(local.get(n) for n in names)
    finally:
        if _SNAPSHOT_LOCALS:
            local.clear()


def _describe_loop() -> str:
    """ "eval" or "predict" for the evaluation loop that is running (its ``description`` argument)."""
    f: FrameType | None = sys._getframe(2)
    for _ in range(10):
        if f is None:
            break
        if f.f_code.co_name in ("evaluation_loop", "prediction_loop"):
            (description,) = _read_locals(f, ("description",))
            return "predict" if isinstance(description, str) and "predict" in description.lower() else "eval"
        f = f.f_back
    return "eval"


class RunlensCallback(RecordingCallback, TrainerCallback):  # type: ignore[misc,unused-ignore]
    """Record a ``Trainer`` run with runlens.

    Args:
        name: the job's name; default ``TrainingArguments.run_name``, else the output folder's name.
        db: store URL or SQLite path; default ``RUNLENS_DB`` or ``./runlens.db`` (ignored under
            ``runlens collect``, which hands its own store to the run).
        monitor: an already started ``runlens.Monitor`` to record into; the callback then neither starts nor
            closes it (use it to cover ``evaluate()``/``predict()`` after training, or exceptions you catch).
        all_ranks: record on every process, not only the world's main one.
        **settings: runlens settings for the Monitor (``sample_interval=1.0``, ...).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        db: str | None = None,
        monitor: Any = None,
        all_ranks: bool = False,
        **settings: Any,
    ) -> None:
        super().__init__(name, db=db, monitor=monitor, all_ranks=all_ranks, **settings)
        # A Monitor passed in records from the start: evaluate()/predict() before or after train() too.
        self._phase = PhaseSlot(monitor) if monitor is not None else None
        self._loop = _LoopView()
        self._substep_loss: Any = None
        self._lr: Any = None
        self._tokens_seen = 0
        self._planned: list[str] = []
        self._warned = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def _active(self) -> bool:
        return self._phase is not None

    def on_train_begin(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        def describe() -> tuple[str, Mapping[str, Any]]:
            name = (
                self.name
                or args.run_name
                or os.path.basename(os.path.normpath(args.output_dir or ""))
                or "hf-trainer"
            )
            return name, training_arguments_snapshot(args)

        if not self.start_recording(state.is_world_process_zero, describe, HUGGINGFACE):
            return
        self._tokens_seen = state.num_input_tokens_seen or 0
        world_size = max(1, int(args.world_size or 1))
        accumulation = max(1, int(args.gradient_accumulation_steps or 1))
        self._batch_multiplier = world_size * accumulation
        per_device = _per_device_batch(args, state)
        self.monitor.event(
            "train_begin",
            framework="transformers",
            global_step=state.global_step,
            max_steps=state.max_steps,
            num_train_epochs=state.num_train_epochs,
            per_device_batch_size=per_device,
            effective_batch_size=per_device * self._batch_multiplier if per_device else None,
            world_size=world_size,
            gradient_accumulation_steps=accumulation,
        )

    def on_train_end(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if not self._active():
            return
        self._phase.close()  # type: ignore[union-attr]
        self.monitor.event(
            "train_end", global_step=state.global_step, epoch=state.epoch, total_flos=state.total_flos
        )
        self.close_monitor()

    def record_exception(self, exc: BaseException) -> None:
        """Record ``exc`` as the exception that ended the run and close the job as failed (``train()`` calls
        it)."""
        if self.monitor is None:
            return
        self.fail(exc)

    # -- steps ---------------------------------------------------------------------------------------

    def on_epoch_begin(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if self._active():
            self.mark_idle()  # iter(train_dataloader) (worker start-up) comes next

    def on_step_begin(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if not self._active():
            return
        now = _perf()
        if self._phase.is_open:  # type: ignore[union-attr]
            self._phase.close()  # type: ignore[union-attr]  # a planned phase whose end hook never came
        # Between the last hook of the previous step and this one the loop fetched this step's batches.
        self.add_data_wait(now)
        self._substep_loss = None

    def on_substep_end(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        # A micro-batch of gradient accumulation: keep its loss (a device tensor; adding does not sync).
        if not self._active():
            return
        values = self._loop.read("tr_loss_step")
        if values is not None and values[0] is not None:
            loss = values[0]
            self._substep_loss = loss if self._substep_loss is None else self._substep_loss + loss

    def on_optimizer_step(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        # After optimizer.step(), before the scheduler steps: the learning rate this step used (what the
        # Trainer logs as learning_rate).
        if self._active():
            self._lr = _learning_rate(kwargs.get("lr_scheduler"), kwargs.get("optimizer"))

    def on_step_end(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if not self._active():
            return
        loss = grad_norm = None
        values = self._loop.read("tr_loss_step", "grad_norm")
        if values is None:
            self._warn_once()
        else:
            loss, grad_norm = values
            if self._substep_loss is not None and loss is not None:
                loss = self._substep_loss + loss
        lr = self._lr
        if lr is None:
            lr = _learning_rate(kwargs.get("lr_scheduler"), kwargs.get("optimizer"))
        self._lr = None
        tokens = None
        seen = state.num_input_tokens_seen
        if seen:
            tokens, self._tokens_seen = seen - self._tokens_seen, seen
        batch = _per_device_batch(args, state)
        self.monitor.step(
            state.global_step,
            loss=loss,
            lr=lr,
            grad_norm=grad_norm,
            batch_size=batch,
            tokens=tokens,
            effective_batch_size=batch * self._batch_multiplier if batch else None,
            epoch=state.epoch,
        )
        self._plan(control)
        self.mark_idle()

    def on_epoch_end(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if self._active():
            self._plan(control)
            self.mark_idle()

    # -- phases --------------------------------------------------------------------------------------

    def _plan(self, control: "TrainerControl") -> None:
        """What the Trainer does after this step, from the flags DefaultFlowCallback just set: log, then
        evaluate, then save. The first phase opens now, or after the log (whose ``.item()`` waits for the
        step's device work, which belongs to the step, not to the eval)."""
        self._planned = [
            p for p, flag in (("eval", control.should_evaluate), ("save", control.should_save)) if flag
        ]
        if self._planned and not control.should_log:
            self._phase.open(self._planned.pop(0))  # type: ignore[union-attr]

    def on_log(
        self,
        args: "TrainingArguments",
        state: "TrainerState",
        control: "TrainerControl",
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active():
            return
        if self._planned and logs is not None and "loss" in logs:  # the training log comes before eval/save
            self._phase.open(self._planned.pop(0))  # type: ignore[union-attr]
        self.mark_idle()

    def on_prediction_step(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        # evaluate()/predict() called outside the training loop's plan: open the phase at its first batch.
        if self._active() and not self._phase.is_open:  # type: ignore[union-attr]
            self._phase.open(_describe_loop(), unplanned=True)  # type: ignore[union-attr]

    def on_evaluate(
        self,
        args: "TrainingArguments",
        state: "TrainerState",
        control: "TrainerControl",
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active():
            return
        self._phase.close()  # type: ignore[union-attr]
        if metrics:
            self.monitor.event("eval_metrics", step=state.global_step, **_scalars(metrics))
        if self._planned and self._planned[0] == "save":
            self._phase.open(self._planned.pop(0))  # type: ignore[union-attr]
        elif control.should_save:  # save_strategy="best": decided after the evaluation
            self._phase.open("save")  # type: ignore[union-attr]
        self.mark_idle()

    def on_predict(
        self,
        args: "TrainingArguments",
        state: "TrainerState",
        control: "TrainerControl",
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active():
            return
        self._phase.close()  # type: ignore[union-attr]
        if metrics:
            self.monitor.event("predict_metrics", step=state.global_step, **_scalars(metrics))

    def on_save(
        self, args: "TrainingArguments", state: "TrainerState", control: "TrainerControl", **kwargs: Any
    ) -> None:
        if not self._active():
            return
        name = self._phase.close()  # type: ignore[union-attr]
        self._planned = []
        path = os.path.join(args.output_dir or ".", f"{CHECKPOINT_PREFIX}-{state.global_step}")
        self.monitor.event("checkpoint_saved", path=path, step=state.global_step, timed=name == "save")
        self.mark_idle()

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "runlens: this transformers version's training loop does not expose the per-step loss "
                "and gradient norm; steps are recorded without them"
            )


# -- helpers -----------------------------------------------------------------------------------------------


def training_arguments_snapshot(args: "TrainingArguments") -> dict[str, Any]:
    """``TrainingArguments.to_dict()``: flat, enums as their values, tokens already masked by transformers
    (the Monitor redacts secret-named keys again)."""
    try:
        return dict(args.to_dict())  # type: ignore[no-untyped-call,unused-ignore]
    except Exception:  # a subclass with an unserialisable field: fall back to the fields as they are
        import dataclasses

        return {f.name: getattr(args, f.name, None) for f in dataclasses.fields(args)}


def _per_device_batch(args: "TrainingArguments", state: "TrainerState") -> int | None:
    # state.train_batch_size follows auto_find_batch_size; it is the per-process batch (x n_gpu under DP).
    bs = state.train_batch_size or getattr(args, "train_batch_size", None)
    return int(bs) if bs else None


def _learning_rate(scheduler: Any, optimizer: Any) -> float | None:
    """The Trainer's own ``_get_learning_rate()``: the scheduler's last rate, else the optimizer's first
    group."""
    try:
        if scheduler is not None:
            return float(scheduler.get_last_lr()[0])
    except Exception:
        pass
    try:
        return float(optimizer.param_groups[0]["lr"])
    except Exception:
        return None


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


# -- attaching -----------------------------------------------------------------------------------------


def attach(trainer: "Trainer", **kwargs: Any) -> RunlensCallback:
    """Add a ``RunlensCallback`` to an existing ``trainer`` (or return the one it has).

    Args:
        trainer: a ``transformers.Trainer``.
        **kwargs: ``RunlensCallback`` arguments, used when a new callback is added.
    """
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, RunlensCallback):
            return cb
    callback = RunlensCallback(**kwargs)
    trainer.add_callback(callback)
    return callback


def train(
    trainer: "Trainer", *args: Any, runlens_options: Mapping[str, Any] | None = None, **kwargs: Any
) -> Any:
    """``trainer.train(*args, **kwargs)`` recorded by runlens, including an exception the caller catches.

    Args:
        trainer: a ``transformers.Trainer``; a ``RunlensCallback`` is attached if it has none.
        runlens_options: ``RunlensCallback`` arguments for the attached callback.

    Returns:
        What ``trainer.train`` returns (a ``TrainOutput``).

    Raises:
        Whatever ``trainer.train`` raises, after it is recorded with its traceback and the job marked failed.
    """
    callback = attach(trainer, **dict(runlens_options or {}))
    try:
        return trainer.train(*args, **kwargs)
    except BaseException as exc:
        callback.record_exception(exc)
        raise


__all__ = ["RunlensCallback", "attach", "train", "training_arguments_snapshot"]
