"""One rule per log category: what the run's log.txt says went wrong, when it first happened, and the fix.

The log parser (runlens.analyze.logparse) finds and categorises the lines; these rules turn each category that
is present into one finding with its count, the first occurrence (time, step, memory at that moment) and the
setting that fixes it. Categories with a measured rule of their own are left to it, so nothing is reported
twice: out-of-memory to memory.oom, shared-memory errors to memory.shm, a NaN loss that the steps also show
to training.nonfinite. A NaN loss that only the log shows (a trainer's progress lines: ``loss: nan``,
``'grad_norm': nan`` beside a loss stuck at 0, ``loss=nan`` in a bar) is reported here as what it is, a
diverged training run. A stop from outside the run (a scheduler's cancellation, SIGTERM) is a warning, not
a failure of the run; a scheduler's time limit or preemption, a closed terminal (SIGHUP), a port in use or a
Hub repo the run may not read end the run and are critical.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runlens.analyze import measures as m
from runlens.analyze.configpaths import apply_ref, precision_change, resolve
from runlens.analyze.effects import failure
from runlens.analyze.findings import Finding
from runlens.analyze.jobdata import JobData
from runlens.analyze.registry import rule
from runlens.core.dialects import HUGGINGFACE
from runlens.core.humanize import gb_figure

# Categories whose evidence a measured rule already reports (see the module docstring).
OWNED = {"cuda_oom": "memory.oom", "mps_oom": "memory.oom", "cpu_oom": "memory.oom",
         "host_oom_kill": "memory.oom", "shm_bus_error": "memory.shm"}
# Errors that end or corrupt a run whatever its exit status.
FATAL = {"segfault", "cuda_device_assert", "cuda_illegal_memory", "disk_full", "nccl_timeout", "nccl_error",
         "dataloader_worker_died", "checkpoint_save_failed", "config_error", "address_in_use", "hub_access",
         "sighup", "scheduler_kill"}
# Stops someone or something outside the run chose: nothing in the run failed.
DELIBERATE_KINDS = {"cancelled", "terminated", "requeue"}
FP16_COLLAPSE = 10   # repeated overflow messages: the loss scale keeps collapsing, not a one-off skip


@dataclass(frozen=True)
class Fix:
    """The advice for one category: a title, an action, and optionally a setting (a concept resolved in the
    job's dialect, or a literal ``env:``/``shell:`` path) with its recommended value."""

    title: str
    action: str
    concept: str | None = None
    path: str | None = None
    value: Any = None
    value_fn: Callable[[JobData, Any], Any] | None = None
    action_fn: Callable[[dict[str, Any]], str | None] | None = None   # the action from the finding's details


def _double(default: float) -> Callable[[JobData, Any], Any]:
    def fn(data: JobData, current: Any) -> Any:
        base = current if isinstance(current, (int, float)) and not isinstance(current, bool) and current > 0 \
            else default
        return int(base * 2)
    return fn


FIXES: dict[str, Fix] = {
    "nccl_timeout": Fix("Collective (NCCL) timeout",
                        "Find the straggler rank (the one that did not reach the collective: a slow data shard, an "
                        "uneven eval, a rank that crashed), then raise the process-group timeout if the wait is "
                        "legitimate.", concept="ddp_timeout", value_fn=_double(1800)),
    "nccl_error": Fix("NCCL communicator error",
                      "Rerun with NCCL_DEBUG=INFO to see which rank and link failed; a rank that died first "
                      "(OOM, exception) usually causes the others' aborts.", path="env:NCCL_DEBUG", value="INFO"),
    "dataloader_worker_died": Fix("A DataLoader worker died",
                                  "Run with num_workers 0 to see the worker's own exception; if it was killed "
                                  "(shared memory, host OOM), give it more /dev/shm or memory.",
                                  concept="num_workers", value=0),
    "nan_loss": Fix("Training diverged: the log shows a NaN/Inf loss",
                    "Lower the learning rate and keep gradient clipping on; with fp16 switch to bf16.",
                    concept="learning_rate"),
    "fp16_overflow": Fix("fp16 gradient overflow / loss-scale collapse",
                         "Train in bf16: it has fp32's range, so gradients do not overflow and need no loss "
                         "scaling.", concept="precision"),
    "cuda_device_assert": Fix("CUDA device-side assert",
                              "Rerun with CUDA_LAUNCH_BLOCKING=1 to get the failing operation; it is usually an "
                              "index out of range (a label ≥ num_classes, a token id ≥ the vocabulary size).",
                              path="env:CUDA_LAUNCH_BLOCKING", value="1"),
    "cuda_illegal_memory": Fix("CUDA illegal memory access",
                               "Rerun with CUDA_LAUNCH_BLOCKING=1 to find the kernel; suspect custom kernels, "
                               "mismatched shapes, or driver/library versions.",
                               path="env:CUDA_LAUNCH_BLOCKING", value="1"),
    "cudnn_cublas": Fix("cuDNN/cuBLAS error",
                        "These often hide an out-of-memory or a version mismatch: check free GPU memory at that "
                        "moment and that torch's CUDA build matches the driver."),
    "disk_full": Fix("Disk full", "Free space on the output disk or keep fewer checkpoints.",
                     concept="save_total_limit", value=2),
    "checkpoint_save_failed": Fix("Checkpoint save failed",
                                  "Check the output directory's free space and permissions; keep fewer "
                                  "checkpoints.", concept="save_total_limit", value=2),
    "too_many_open_files": Fix("Too many open files",
                               "Raise the open-file limit (`ulimit -n 65536`) before starting the run; with "
                               "DataLoader workers, torch.multiprocessing.set_sharing_strategy('file_system') "
                               "also helps.", path="shell:ulimit -n", value=65536),
    "af_unix_path_too_long": Fix("AF_UNIX socket path too long",
                                 "Point TMPDIR at a short path (/tmp): DataLoader workers and torch.distributed "
                                 "put sockets there and the path limit is 108 bytes.", path="env:TMPDIR",
                                 value="/tmp"),
    "network_timeout": Fix("Network error or timeout",
                           "Run offline with files already cached (HF_HUB_OFFLINE=1), or retry; a logging "
                           "service can be set to offline mode.", path="env:HF_HUB_OFFLINE", value="1"),
    "segfault": Fix("Segmentation fault",
                    "Rerun with PYTHONFAULTHANDLER=1 to get the Python stack; with DataLoader workers try "
                    "num_workers 0 to see if a worker's native library crashed.",
                    path="env:PYTHONFAULTHANDLER", value="1"),
    "segfault_worker": Fix("Segmentation fault in a DataLoader worker",
                           "A native library crashed inside a DataLoader worker (image or audio decoding, a C "
                           "extension): run with num_workers 0 to get its stack in the main process, then update "
                           "or replace that library.", concept="num_workers", value=0),
    "address_in_use": Fix("Rendezvous port already in use",
                          "Another process holds the port (another job on this machine, or a run that has not "
                          "exited): give this run a free one (torchrun --master_port, MASTER_PORT, or "
                          "--rdzv-endpoint localhost:0 with --standalone) or stop the process that holds it.",
                          action_fn=lambda d: (f"Port {d['port']} is held by another process (another job on "
                                               "this machine, or a run that has not exited): give this run a free "
                                               "one (torchrun --master_port, MASTER_PORT, or --rdzv-endpoint "
                                               f"localhost:0 with --standalone) or stop it (`lsof -i :{d['port']}`)."
                                               if d.get("port") else None)),
    "hub_access": Fix("The Hugging Face Hub refused a model or dataset",
                      "Check the repo id (a local path that does not exist is taken for a Hub id); for a gated or "
                      "private repo, log in on this machine (huggingface-cli login, or HF_TOKEN in the job's "
                      "environment) with an account that has access.", action_fn=lambda d: _HUB_ACTIONS.get(
                          str(d.get("kind")), "").format(repo=d.get("repo") or "this repo") or None),
    "scheduler_kill": Fix("The scheduler ended the job",
                          "Look up why in the scheduler's record of the job (sacct -j, qstat -f, bhist -l).",
                          action_fn=lambda d: _SCHEDULER_ACTIONS.get(str(d.get("kind")))),
    "sighup": Fix("Stopped by SIGHUP: the terminal that started the run closed",
                  "Start long runs detached from the terminal: inside tmux or screen, or with `setsid nohup CMD > "
                  "log 2>&1 &` (torchrun and accelerate launch can still get SIGHUP under a plain nohup when the "
                  "session ends)."),
    "terminated": Fix("Stopped by a signal from outside the run",
                      "Something outside the run stopped it (a scheduler's limit or preemption, an orchestrator, a "
                      "person): check the scheduler's record of the job; to lose nothing next time, save a "
                      "checkpoint when SIGTERM arrives and resume from it."),
    "config_error": Fix("Configuration error", "Fix the setting the message names."),
    "python_exception": Fix("Unhandled exception", "Fix the error in the traceback."),
    "error": Fix("Errors in the log", "Read the error lines around the first one."),
    "python_warning": Fix("Python warnings", "Review the warnings; most are harmless, some predict failures."),
    "warning": Fix("Warnings in the log", "Review the warnings."),
}

_HUB_ACTIONS = {
    "gated": "The repo {repo} is gated: accept its terms on its Hub page, then log in on this machine (huggingface-cli "
             "login, or HF_TOKEN in the job's environment) with that account.",
    "not_found": "The Hub has no {repo} this run may read: check the id (a local path that does not exist is "
                 "taken for a Hub id), or log in if the repo is private.",
    "unauthorized": "The Hub refused the token for {repo}: log in again (huggingface-cli login) or set a valid "
                    "HF_TOKEN in the job's environment.",
}
_SCHEDULER_ACTIONS = {
    "time_limit": "The job reached its time limit: request more time (Slurm --time, PBS walltime, LSF -W), or "
                  "make the run resumable: have the scheduler signal it before the limit (Slurm "
                  "--signal=USR1@120), save a checkpoint on that signal and resume from it.",
    "preemption": "The job was preempted for a higher-priority one: resubmit or requeue it (Slurm --requeue) "
                  "and resume from its last checkpoint; save checkpoints more often, or use a partition or QOS "
                  "that is not preemptible.",
    "node_failure": "A node of the job failed: resume from the last checkpoint; nothing in the run caused it.",
    "cancelled": "The job was cancelled (scancel, qdel, bkill, or an administrator): nothing in the run failed.",
    "terminated": "The scheduler terminated the job's tasks: its record says why (sacct -j JOB).",
    "requeue": "The scheduler requeued the job: it resumes from its last checkpoint if the run saves one.",
}

CATEGORIES: tuple[str, ...] = (
    "cuda_oom", "mps_oom", "cpu_oom", "host_oom_kill", "nccl_timeout", "nccl_error", "dataloader_worker_died",
    "shm_bus_error", "nan_loss", "fp16_overflow", "cuda_device_assert", "cuda_illegal_memory", "cudnn_cublas",
    "disk_full", "checkpoint_save_failed", "too_many_open_files", "af_unix_path_too_long", "address_in_use",
    "hub_access", "network_timeout", "scheduler_kill", "sighup", "terminated", "segfault", "config_error",
    "python_exception", "error", "python_warning", "warning",
)


def _failed(data: JobData) -> bool:
    job = data.job
    return job.get("status") in ("failed", "timed_out") or (job.get("exit_code") not in (None, 0))


def _severity(category: str, items: list[Any], data: JobData) -> str:
    """Fatal categories are critical; a traceback or a bare ERROR line only matters when the run failed (a
    caught, logged exception in a run that finished is information); warnings are information."""
    errors = [lf for lf in items if getattr(lf, "level", "error") == "error"]
    if category in ("python_warning", "warning"):
        return "info"
    if category == "fp16_overflow":
        return "warning" if sum(int(getattr(lf, "count", 1) or 1) for lf in items) >= FP16_COLLAPSE else "info"
    if not errors:
        return "info"
    if category == "terminated" or (category == "scheduler_kill" and all(
            (getattr(lf, "details", None) or {}).get("kind") in DELIBERATE_KINDS for lf in errors)):
        return "warning"
    if category in FATAL or category == "nan_loss":
        return "critical"
    if category in ("python_exception", "error"):
        return "critical" if _failed(data) else "info"
    return "critical" if _failed(data) else "warning"


def _log_finding(category: str, data: JobData) -> list[Finding]:
    items = [lf for lf in data.log_findings if getattr(lf, "category", None) == category]
    if not items:
        return []
    if category == "nan_loss":
        from runlens.analyze.rules.training import nonfinite
        steps = m.main_rank_steps(data)
        if len(steps) and nonfinite(steps, "loss").any():
            return []   # training.nonfinite reports it from the steps, with the step and lr
    count = sum(int(getattr(lf, "count", 1) or 1) for lf in items)
    first = min(items, key=lambda lf: (getattr(lf, "timestamp", None) is None, getattr(lf, "timestamp", 0) or 0,
                                       getattr(lf, "line_number", 0) or 0))
    t = getattr(first, "timestamp", None)
    step = m.step_at(data, t)
    snap = m.sample_at(data, t)
    mem = snap.get("used_memory_gb") if snap else None
    mem = None if mem is None or m.is_nan(mem) else float(mem)
    message = str(getattr(first, "message", "") or "").strip()
    details = dict(getattr(first, "details", None) or {})
    if category == "scheduler_kill":
        # the reason that ended the job: a time limit or preemption rather than the cancellation that carried it
        fatal = [lf for lf in items if (getattr(lf, "details", None) or {}).get("kind") not in DELIBERATE_KINDS]
        details = dict(getattr(fatal[0] if fatal else first, "details", None) or {})
    for lf in items:   # what the first occurrence lacks, a later one may say (the repo, the port)
        for k, v in (getattr(lf, "details", None) or {}).items():
            details.setdefault(k, v)
    key = "segfault_worker" if category == "segfault" and details.get("dataloader_worker") else category
    fix = FIXES.get(key, Fix(category.replace("_", " ").capitalize(), "See the log."))
    when = f"first at step {step}" if step is not None else ("first before the first step" if t else "first")
    where = f"line {getattr(first, 'line_number', '?')}"
    parts = [f"{count} occurrence{'s' if count != 1 else ''}", f"{when} ({where})"]
    if mem is not None:
        parts.append(f"memory {gb_figure(mem)} GiB then")
    if category in FATAL and _failed(data):
        last = data.job.get("last_step")
        parts.append("the run stopped" + (f" at step {last}" if last is not None else ""))
    action = (fix.action_fn(details) if fix.action_fn else None) or fix.action
    if category in ("config_error", "python_exception", "error") and message:
        action = f"{fix.action.rstrip('.')}: {message[:300]}"
    ev = {"count": count, "first_timestamp": t, "first_step": step, "first_line": getattr(first, "line_number", None),
          "memory_at_time_gb": mem, "message": message[:500],
          "rank": getattr(first, "rank", None), "details": details}
    f = Finding(id=f"logs.{category}", severity=_severity(category, items, data),
                title=fix.title + (f": {message[:120]}" if category in ("config_error", "python_exception")
                                   and message else ""),
                action=action, impact="; ".join(parts), category="logs", evidence=ev,
                impact_value=float(count), impact_unit="occurrences")
    if category == "nan_loss" and f.severity == "critical":
        f.category = "training"   # a divergence, ranked with the run's failures
        f.expected_effect = failure(None, failed=True)
    return [_with_setting(f, fix, data, message)]


def _with_setting(f: Finding, fix: Fix, data: JobData, message: str) -> Finding:
    if fix.path:
        path, value = fix.path, fix.value
        if fix.path == "env:HF_HUB_OFFLINE" and re.search(r"wandb", message, re.IGNORECASE):
            path, value = "env:WANDB_MODE", "offline"
        f.config_key = path.split(":", 1)[1]
        f.config_path = path
        env = (data.job.get("environment") or {}).get("env") or {}
        cur = env.get(f.config_key) if path.startswith("env:") else None
        f.current_value, f.current_value_source = (cur, "config") if cur is not None else (None, "unknown")
        f.recommended_value = value
        return f
    if not fix.concept:
        return f
    if fix.concept == "precision":
        concept, value = precision_change(data.dialect)
        ref = resolve(data, concept)
        if ref.current_value == value:
            return f
        return apply_ref(f, ref, value)
    ref = resolve(data, fix.concept)
    if fix.concept == "learning_rate":
        cur = ref.current_value
        if not isinstance(cur, (int, float)) or isinstance(cur, bool) or cur <= 0:
            return f
        return apply_ref(f, ref, float(f"{cur / 2:.2g}"))
    if fix.concept == "num_workers":
        measured = m.measured_workers(data)
        cur = ref.current_value if ref.source == "config" else measured
        if cur == 0 or (cur is None and ref.current_value == 0):
            return f   # already 0: the advice is about the worker's own error
        return apply_ref(f, ref, 0, measured=measured or None)
    if fix.concept == "ddp_timeout" and ref.path is None and data.dialect != HUGGINGFACE:
        f.evidence["how"] = ref.hint
        return f
    value = fix.value_fn(data, ref.current_value) if fix.value_fn else fix.value
    return apply_ref(f, ref, value)


def _make(category: str) -> Callable[[JobData], list[Finding]]:
    def run(data: JobData) -> list[Finding]:
        return _log_finding(category, data)
    run.__name__ = f"log_{category}"
    run.__doc__ = f"Log category {category!r}: count, first occurrence and the fix."
    return run


for _category in CATEGORIES:
    if _category not in OWNED:
        rule(f"logs.{_category}", "logs")(_make(_category))
