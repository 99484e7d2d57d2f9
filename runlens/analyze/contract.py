"""The analysis document: what ``runlens analyze --json`` prints, what the report renders, what a UI reads.

Versioned by ``SCHEMA_VERSION``: fields are added, never renamed or given a new meaning. Every value is plain
JSON (no NaN: missing numbers are null). Memory is GiB (2**30 bytes): every ``_gb`` field holds GiB, and every
sentence (title, action, impact, label) writes it as "GiB". The one exception is the unit code
``impact_unit: "GB"``, kept as it was first published; it too means GiB. Times are UNIX seconds, durations
seconds unless the name says minutes.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

SCHEMA_VERSION = 1

Severity = Literal["critical", "warning", "info"]
Health = Literal["good", "warning", "critical"]
SEVERITY_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}


class Goodput(TypedDict, total=False):
    ratio: float | None                 # productive step time / wall time, 0..1
    productive_seconds: float
    wall_seconds: float
    lost_seconds: dict[str, float]      # startup, data_wait, eval_and_checkpoints, stalls_and_hangs, monitoring, other
    stall_steps: int                    # steps slower than median + 5 MAD (their excess is in stalls_and_hangs)
    end_source: str                     # what ended the wall clock: "ended_at", "now" (live job), "last_seen"
    rank: int                           # several ranks: the typical rank (median ratio) these figures are of
    ranks: dict[str, Any]               # count, typical_rank, worst_rank, worst_ratio, best_ratio, by_rank
    unknown: str                        # why there is no ratio: the steps are unknown (no step source)


class Summary(TypedDict, total=False):
    health_score: Health
    peak_memory_gb: float | None        # system RAM used (total - available) at its peak, from raw samples
    total_memory_gb: float | None       # the memory the job could use: the container's limit when there is one
    memory_limit_source: Literal["cgroup", "host"]   # "cgroup": peak and total are the container's working set
                                        # (usage - inactive file) and limit; "host": RAM used and the host's RAM
    peak_memory_ratio: float | None
    peak_gpu_memory_gb: float | None
    gpu_total_memory_gb: float | None
    training_completed: bool
    status: str                         # the job's status (succeeded, failed, timed_out, running, ...)
    status_reason: str | None
    steps_completed: int
    step_source: str | None             # "monitor", "output" (read from the command's progress lines), None: unknown
    last_step: int | None
    ranks: int                          # ranks that recorded steps (1 without ranks)
    duration_minutes: float | None
    error_count: int
    warning_count: int
    goodput: Goodput
    monitoring_overhead_ratio: float | None


class ExpectedEffect(TypedDict, total=False):
    """What a recommendation is predicted to change, computed from this run's measurements for the recommended
    value (not for the best case); see runlens.analyze.effects for the metrics and how they rank."""

    metric: str                         # failure | step_time_seconds | data_wait_share | wall_share |
                                        # peak_memory_gb (of the binding pool: GPU, host or container);
                                        # rules of other families may use their own (occurrences, ...)
    current: Any                        # what this run measured (failure: true when the run fails from it)
    predicted: Any                      # for the recommended value; null when nothing measured predicts it
    unit: str                           # bool | s | ratio (0..1) | GiB | ...
    also: list[dict[str, Any]]          # other figures the change moves, same shape (e.g. the data-wait share
                                        # beside the step time, the memory a fix frees or costs)


class Recommendation(TypedDict, total=False):
    id: str                             # rule id, e.g. "memory.workers" (stable, for dedup and tests)
    severity: Severity
    title: str
    action: str                         # what to change, in one sentence
    impact: str                         # quantified from this run, saying what expected_effect says
    expected_effect: ExpectedEffect | None   # added: the prediction recommendations are ranked by: failures
                                        # first, then severity, then seconds saved per hour of training, then
                                        # GiB freed while memory is under pressure; never raw numbers of
                                        # different units against each other
    impact_value: float | None          # the number behind impact, in impact_unit
    impact_unit: str | None             # "GB" (a code: the value is GiB), "percent_time", "seconds", ...
    config_path: str | None             # in the job's dialect: "config.process[0].datasets[0].num_workers"
    current_value: Any                  # what the run used: the config snapshot's value, the framework default,
                                        # or the measured value when the run used another (a batch-size ramp)
    config_value: Any                   # added, only when it differs from a measured current_value
    current_value_source: Literal["config", "default", "measured", "unknown"]
    recommended_value: Any              # a concrete literal
    evidence: dict[str, Any]            # figures, steps, timestamps that triggered it
    primary: bool                       # the one primary memory lever of this run
    alternatives: list[str]             # ids of other recommendations that address the same problem
    category: str                       # memory | throughput | training | logs | hangs


class LogError(TypedDict, total=False):
    timestamp: float | None
    timestamp_source: Literal["line", "arrival"] | None
    level: Literal["error", "warning"]
    category: str
    message: str                        # first line, as shown
    text: str                           # the whole finding (a traceback), bounded
    line_number: int
    count: int                          # identical findings folded into one
    memory_at_time_gb: float | None
    details: dict[str, Any]             # e.g. CUDA OOM figures: tried_to_allocate_gb, total_gb, free_gb, ...


class Analysis(TypedDict, total=False):
    schema_version: int
    generated_at: float
    runlens_version: str
    job: dict[str, Any]                 # the Job row (config included, redacted), plus environment
    summary: Summary
    recommendations: list[Recommendation]
    log_errors: list[LogError]
    metrics_timeline: dict[str, Any]    # see runlens.analyze.timeline: downsampled series for drawing
    monitoring_cost: list[dict[str, Any]]   # operation, calls, total_seconds, share_of_wall, on_training_thread
    hangs: list[dict[str, Any]]         # timestamp, phase, last_step, seconds_since_progress, cause, stacks
    environment: dict[str, Any]         # host, cpu, gpus, python, torch, runlens versions
    notes: list[str]                    # what the analysis could not do (a missing log, a rule that failed)


# metrics_timeline, as built by the analyzer and drawn by the report. Each series is downsampled for drawing
# with a peak-keeping method (runlens.analyze.downsample); peaks and thresholds come from the raw data.
#
#   {
#     "start_time": float,                       # UNIX seconds of the first sample or step (x origin)
#     "memory": {name: {"x": [t...], "y": [gb...]}},   # system_used_gb, main_process_gb, workers_gb,
#                                                      # gpu_used_gb (the device's used memory, summed over
#                                                      # the job's GPUs), swap_used_gb; added: gpu_device_used_gb
#                                                      # (the fullest GPU, when there are several), gpu_job_gb
#                                                      # (the job's own processes on its GPUs, where recorded),
#                                                      # container_used_gb (the container's working set, when
#                                                      # its limit is the job's RAM limit)
#                                                      # (absent series omitted)
#     "total_memory_gb": float | None, "gpu_total_memory_gb": float | None,
#     "memory_limit_source": "cgroup" | "host",        # added: total_memory_gb is a container's limit, or RAM
#     "thresholds": {"warning_ratio": .85, "critical_ratio": .95, "warning_gb": float, "critical_gb": float},
#                                                      # the levels on system RAM (total_memory_gb)
#     "binding_resource": "host" | "gpu" | "both" | "unified" | None,   # added: the pool(s) that bind the run
#                                                      # (a CUDA OOM binds the GPU, a host OOM RAM; else the
#                                                      # pool whose peak is the largest share of its limit;
#                                                      # both when both pass 70 %; None without samples)
#     "binding_reason": str | None,                    # added: "CUDA out of memory; GPU 0 peaked at 96% of ..."
#     "zones": [{"resource": "host" | "gpu" | "unified", "series": name in "memory", "device_index": int | None,
#                "limit_gb": float, "warning_ratio": .85, "critical_ratio": .95, "warning_gb": float,
#                "critical_gb": float, "peak_gb": float, "peak_ratio": float,
#                "limit_source": "cgroup" | "host"}],   # added: the zones to draw,
#                                                      # one per binding pool with a known limit
#     "training": {name: {"x": [step...], "y": [value...]}},   # loss, learning_rate, gradient_norm,
#                                                             # step_time_seconds, data_time_seconds
#     "events": [{"timestamp": t, "type": str, "label": str, "severity": Severity}],   # at most 200
#     "peaks": {name: {"value": float, "timestamp": t}},   # each memory series' raw maximum and its time
#     "raw_counts": {"samples": int, "steps": int, "events": int},
#   }
SeriesXY = dict[str, list[float | None]]
