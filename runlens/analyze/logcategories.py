"""The category table of the log parser: which lines mean what failure, and which wins when one finding says
several things.

``runlens.analyze.logpatterns`` holds the cheap prefilter, the level markers and the context lines;
``runlens.analyze.logfindings`` asks this module what one clean line (or the informative lines of one
traceback) means. The patterns follow the formats of the tools that print them, not one log: Slurm's
``slurmstepd``/``srun`` messages (``src/slurmd/slurmstepd/req.c``), PBS and LSF job reports,
``torch.distributed.elastic``'s agent and ``ChildFailedError`` report, c10d's socket errors, CPython's
``faulthandler``, the shells' signal reports (bash ``line N: PID Segmentation fault``, zsh's lower-case one),
``huggingface_hub``'s error classes (``huggingface_hub/errors.py``) and the progress lines trainers print
(``loss: nan``, ``'grad_norm': nan``, ``loss=nan`` in a bar, ``[Loss] nan`` in a loguru table).

``CATEGORIES`` is ordered by precedence: when one finding mentions several things, the first category in this
order that matches wins and the finding keeps the other facts in ``details``. The order puts the root cause
before its consequence:

    cuda_oom > mps_oom > cpu_oom > cuda_device_assert > cuda_illegal_memory > too_many_open_files
    > shm_bus_error > segfault (SIGSEGV) > dataloader_worker_died > host_oom_kill > scheduler_kill > sighup
    > address_in_use > nccl_timeout > nccl_error > cudnn_cublas > fp16_overflow > nan_loss > af_unix_path_too_long
    > disk_full > checkpoint_save_failed > hub_access > network_timeout > terminated
    > segfault (abort, illegal instruction) > config_error
    (then python_exception, error, python_warning, warning)

e.g. an NCCL watchdog that reports "an illegal memory access" is cuda_illegal_memory; "unable to open shared
memory object ...: Too many open files" is too_many_open_files (the descriptors ran out, not /dev/shm); a
DataLoader worker "killed by signal: Segmentation fault" is a segfault that names the worker
(``details["dataloader_worker"]``), one "killed by signal: Bus error" is shm_bus_error, one "killed by signal:
Killed" is dataloader_worker_died with ``details["likely_cause"] = "host_oom_kill"``. ``segfault`` appears twice:
a SIGSEGV ranks early, an abort (SIGABRT, usually the end of an error reported above it) ranks late.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    """One category: its id, its default level and the phrases that anchor it.

    ``needles``: lowercase substrings, one of which every pattern's match contains; the patterns are tried
    only on a line that has one (a substring test costs ~50 ns, a regex search over a long line microseconds).
    ``strong`` phrases count even on a line an INFO/DEBUG marker calls harmless (an OOM is an OOM, and a
    trainer prints its NaN losses at INFO); ``downgradable`` lets an explicit WARNING marker make the finding
    a warning (the program said it coped).
    """

    id: str
    level: str
    needles: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    strong: bool = False
    downgradable: bool = True


def rx(*patterns: str, flags: int = re.IGNORECASE) -> tuple[re.Pattern[str], ...]:
    """The patterns compiled, case-insensitive unless ``flags`` says otherwise."""
    return tuple(re.compile(p, flags) for p in patterns)


# A shell's report of a child that died of a signal: bash "./run.sh: line 31: 11426 Segmentation fault  cmd",
# its job notice "[1]+  Hangup  cmd", zsh "14957 segmentation fault (core dumped)  cmd".
_SHELL = r"^(?:\S+: line \d+:\s+\d+\s+|\[\d+\][+-]?\s+|\d+\s+)?"

# A progress line's value for a loss: "loss: nan", "'loss': nan", "loss=nan", "avr_loss=nan", "loss_cls: nan",
# "train/loss=inf" (a key with "loss" in it, not a loss *scale*), "[Loss] nan", "Loss nan (nan)", darknet's
# "-nan, -nan avg loss".
_LOSS_KEY = r"(?<![\w/.\-])(?![\w/.\-]*scale)[\w/.\-]*loss[\w/.\-]*"
_NONFINITE = r"['\"]?(?:tensor\()?[-+]?(?:nan|inf)\b"
NAN_LOSS_PATTERNS: tuple[re.Pattern[str], ...] = rx(
    r"\bloss\b.{0,60}?\b(?:is|was|became|has become|becomes) (?:nan|inf|non-finite)\b",
    r"\b(?:nan|inf) loss\b", r"\bDetected (?:NaN|inf)\b", r"\bnon-finite loss\b",
    r"NaN or Inf found in input tensor", _LOSS_KEY + r"['\"]?\s*[:=]\s*" + _NONFINITE,
    r"\[[\w/ .\-]*loss[\w/ .\-]*\]\s*[-+]?(?:nan|inf)\b", r"\bloss\s+[-+]?(?:nan|inf)\b",
    r"\b-?(?:nan|inf)(?:,\s*-?(?:nan|inf))? avg loss\b",
    r"Loss became infinite or NaN", r"\bnan (?:in|detected in) (?:the )?loss\b",
    r"returned nan values in its \d+\w* output", r"found NaN in (?:local )?grad norm",
    r"number of nan iterations:\s*[1-9]",   # Megatron counts the iterations whose loss was NaN
    r"Invalid loss, terminating training",   # Keras' TerminateOnNaN
    r"is non-finite, so it cannot be clipped",   # clip_grad_norm_(error_if_nonfinite=True)
)
# A gradient norm that is NaN/Inf while the loss is finite is what fp16 loss scaling produces on a skipped
# step (mmcv's and the HF Trainer's logs show it routinely): a warning, unless the loss is stuck at 0 with it
# ({'loss': 0.0, 'grad_norm': nan}: the run has diverged and the logged loss is meaningless).
GRAD_NORM_NAN = rx(r"(?<![\w/.\-])[\w/.\-]*grad(?:ient)?[ _]?norm[\w/.\-]*['\"]?\s*[:=]\s*" + _NONFINITE)[0]
LOSS_ZERO = rx(r"(?<![\w/.\-])['\"]?loss['\"]?\s*[:=]\s*['\"]?[-+]?0(?:\.0+)?(?![\d.])")[0]

# fmt: off
_SIGSEGV = Category(
    "segfault", "error",
    ("segmentation", "sigsegv", "signal 11", "139", "-11"),
    rx(r"Segmentation fault", r"\bSIGSEGV\b", r"\bsignal 11\b", r"\bexit(?:ed with)?[ _]?(?:code|status):? ?139\b",
        r"\bexitcode\s*:\s*-11\b", r"non-zero exit status -11\b", r"\breturn code\s*=?\s*(?:-11|139)\b"),
    downgradable=False)
# A shell's "Aborted"/"Terminated" report is the word alone, or followed by the command after two spaces;
# "Aborted!" (click's Ctrl-C) or "Terminated 3 workers" are not.
_ALONE = r"(?:\s*$|\s{2,}\S)"
_ABORT = Category(
    "segfault", "error",
    ("core dumped", "fatal python error", "illegal instruction", "aborted", "sigabrt", "sigill", "134", "-6",
     "corrupt", "free()", "munmap_chunk", "stack smashing"),
    rx(r"\bcore dumped\b", r"Fatal Python error: (?:Aborted|Bus error|Illegal instruction)",
        r"Illegal instruction", r"\bSIGABRT\b|\bSIGILL\b", r"\bexitcode\s*:\s*-6\b",
        r"\bexit(?:ed with)?[ _]?code:? ?134\b",
        # glibc's heap checks (malloc/malloc.c's malloc_printerr) and the stack protector abort the process
        r"double free or corruption|free\(\): invalid (?:pointer|size|next size)|malloc\(\): (?:corrupted|memory "
        r"corruption|unaligned)|corrupted size vs\. prev_size|munmap_chunk\(\): invalid pointer",
        r"\*\*\* stack smashing detected \*\*\*") + rx(_SHELL + r"Aborted" + _ALONE, flags=0),
    downgradable=False)
CATEGORIES: tuple[Category, ...] = (
    Category(
        "cuda_oom", "error",
        ("out of memory", "outofmemoryerror", "oom during training", "resourceexhausted"),
        rx(r"\b(?:CUDA|HIP) out of memory", r"torch\.(?:cuda\.)?OutOfMemoryError",
            r"CUDA error: out of memory",
            r"CUDA_ERROR_OUT_OF_MEMORY", r"RESOURCE_EXHAUSTED: Out of memory", r"\bOOM during training step",
            r"ResourceExhaustedError\b.*\bOOM\b"), strong=True, downgradable=False),
    Category("mps_oom", "error", ("mps backend",), rx(r"\bMPS backend out of memory"), strong=True,
             downgradable=False),
    Category(
        "cpu_oom", "error",
        ("cpuallocator", "enforce fail at", "memoryerror", "cannot allocate memory", "unable to allocate"),
        rx(r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)",
            r"\[enforce fail at (?:alloc_cpu|CPUAllocator)\.cpp", r"^(?:builtins\.)?MemoryError\b",
            r"\[Errno 12\] Cannot allocate memory",
            r"_ArrayMemoryError\b|Unable to allocate [\d.]+ [KMGT]i?B for an array"), strong=True,
        downgradable=False),
    Category(
        "cuda_device_assert", "error", ("device-side assert", "assertion"),
        rx(r"device-side assert(?:ion)? triggered",
            r"\.cu:\d+: .*block: \[\d+,\d+,\d+\], thread: \[\d+,\d+,\d+\] Assertion"),
        strong=True, downgradable=False),
    Category(
        "cuda_illegal_memory", "error",
        ("illegal memory access", "misaligned address", "illegal instruction was", "illegaladdress"),
        rx(r"an illegal memory access was encountered", r"CUDA error: misaligned address",
            r"an illegal instruction was encountered", r"cudaErrorIllegalAddress"),
        strong=True, downgradable=False),
    Category(
        "too_many_open_files", "error", ("too many open files", "errno 24", "emfile"),
        rx(r"Too many open files", r"\[Errno 24\]", r"\bEMFILE\b")),
    Category(
        "shm_bus_error", "error", ("bus error", "shared memory", "</torch_", "/dev/shm"),
        rx(r"\bBus error\b", r"insufficient shared memory \(shm\)", r"unable to write to file </torch_",
            r"unable to open shared memory object", r"out of shared memory",
            r"/dev/shm\b.*No space left on device|No space left on device.*/dev/shm"), downgradable=False),
    _SIGSEGV,
    Category(
        "dataloader_worker_died", "error", ("dataloader worker",),
        rx(r"DataLoader worker \(pid(?:\(s\))?[^)]*\) (?:is killed by signal|exited unexpectedly)",
            r"DataLoader worker .{0,40}killed by signal"), downgradable=False),
    Category(
        "host_oom_kill", "error",
        ("killed", "已杀死", "137", "exitcode", "sigkill", "oom", "out of memory", "exit status",
         "return code", "memory limit", "low on resource: memory"),
        rx(r"^Killed\s*$", r"^\S+: line \d+:\s+\d+ Killed\b", r"^\[\d+\][+-]?\s+Killed\s", r"^已杀死\s*$",
            r"\bexit(?:ed with)?[ _]?code:? ?137\b", r"\bexit status:? ?137\b", r"\bexitcode\s*:\s*-9\b",
            r"Signal 9 \(SIGKILL\)", r"<Signals\.SIGKILL: 9>", r"\boom[-_]kill",
            r"Out of memory: Kill(?:ed)? process", r"Memory cgroup out of memory", r"\bOOMKilled\b",
            r"killed by the OOM killer", r"non-zero exit status -9\b", r"\breturn code\s*=?\s*(?:-9|137)\b",
            r"\btask \d+: Killed\b", r"Exceeded (?:job|step) memory limit",
            r"PBS: job killed: [pv]?mem \S+ exceeded limit", r"\bTERM_MEMLIMIT: job killed",
            r"The node was low on resource: memory", r"\btasks? [\d,\-]+: Out Of Memory\b"), downgradable=False),
    Category(
        "scheduler_kill", "error",
        ("cancelled at", "pbs: job killed", "term_", "wallclock", "deadline", "terminated"),
        rx(r"\*\*\* (?:JOB|STEP) \S+ (?:ON \S+ )?CANCELLED AT \S+", r"PBS: job killed: (?:walltime|cput) \d+",
            r"\bTERM_(?:RUNLIMIT|CPULIMIT|OWNER|ADMIN|FORCE_OWNER|FORCE_ADMIN|PREEMPT|REQUEUE_OWNER"
            r"|REQUEUE_ADMIN|WINDOW|DEADLINE|BUCKET_KILL)\b: job killed",
            r"job exceeded (?:its )?wallclock limit", r"exceeded hard wallclock time",
            r"^srun: error: \S+: tasks? [\d,\-]+: Terminated\b",
            r"\bDeadlineExceeded\b", r"Job was active longer than specified deadline"),
        strong=True, downgradable=False),
    Category(
        "sighup", "error", ("death signal", "closing signal sighup", "got signal: 1", "hangup", "sighup"),
        rx(r"Received (?:1|Signals\.SIGHUP) death signal", r"closing signal SIGHUP\b",
            r"\bSignalException: Process \d+ got signal: 1\b", r"<Signals\.SIGHUP: 1>",
            r"interrupted by signal 1: SIGHUP") + rx(_SHELL + r"Hangup" + _ALONE, flags=0),
        strong=True, downgradable=False),
    Category(
        "address_in_use", "error",
        ("address already in use", "eaddrinuse", "failed to listen on any local network", "errno 98",
         "errno 48"),
        rx(r"Address already in use", r"\bEADDRINUSE\b", r"failed to listen on any local network address",
            r"\[Errno (?:98|48)\]")),
    Category(
        "nccl_timeout", "error",
        ("nccl", "watchdog", "socket has timed out", "heartbeat", "diststoreerror", "tcpstore",
         "waiting for clients"),
        rx(r"Watchdog caught collective operation timeout", r"WorkNCCL\([^)]*Timeout\(ms\)=",
            r"(?:ProcessGroupNCCL|NCCL)\b.{0,200}\btimed out", r"NCCL.{0,80}\btimeout\b(?!=)",
            r"watchdog got stuck", r"Heartbeat monitor timed out",
            r"socket has timed out after \d+\w* while trying to connect",
            r"DistStoreError\b.*\b(?:timeout|timed out)", r"TCPStore.{0,80}\btimed out",
            r"Timed out after \d+ seconds waiting for clients"), strong=True),
    Category(
        "nccl_error", "error", ("nccl", "distbackenderror"),
        rx(r"\bNCCL error\b",
            r"\bnccl(?:Internal|System|UnhandledCuda|InvalidUsage|InvalidArgument|Remote)Error\b",
            r"NCCL communicator (?:was )?abort", r"\bncclCommAbort\b", r"\bNCCL WARN\b",
            r"\bDistBackendError\b",
            r"ProcessGroupNCCL.{0,120}(?:error|exception)")),
    Category(
        "cudnn_cublas", "error", ("cudnn", "cublas", "cusolver", "cufft"),
        rx(r"CUDNN_STATUS_\w+", r"CUBLAS_STATUS_\w+", r"\bcuDNN error\b", r"CUSOLVER_STATUS_\w+",
            r"\bcuFFT error\b", r"CUDNN_BACKEND_\w+.*(?:failed|error)"), strong=True),
    Category(
        "fp16_overflow", "warning", ("overflow", "loss scale", "minimum loss scale"),
        rx(r"Gradient overflow\.?\s+Skipping step", r"reducing (?:the )?loss scale to",
            r"\bloss scaler? .{0,60}reduc", r"OVERFLOW! Rank \d+ Skipping step",
            r"loss scale already at minimum", r"Minimum loss scale reached"),
        strong=True, downgradable=False),
    Category(
        "nan_loss", "error", ("nan", "inf", "non-finite", "invalid loss"), NAN_LOSS_PATTERNS + (GRAD_NORM_NAN,),
        strong=True, downgradable=False),
    Category("af_unix_path_too_long", "error", ("af_unix",), rx(r"AF_UNIX path too long")),
    Category(
        "disk_full", "error",
        ("no space left", "errno 28", "os error 28", "quota exceeded", "errno 122", "enospc", "storagefull",
         "ephemeral"),
        rx(r"No space left on device", r"\[Errno 28\]", r"\bos error 28\b", r"Disk quota exceeded",
            r"\[Errno 122\]", r"\bENOSPC\b", r"\bStorageFull\b",
            # Kubernetes evicts a pod whose scratch disk fills the node's or passes its limit
            r"low on resource: ephemeral-storage", r"ephemeral local storage usage exceeds")),
    Category(
        "checkpoint_save_failed", "error",
        ("pytorchstreamwriter", "failed", "unexpected pos", "while serializing"),
        rx(r"PytorchStreamWriter failed writing file", r"\bFailed to save\b", r"unexpected pos \d+ vs \d+",
            r"Error while serializing",
            r"(?:checkpoint|state_dict|weights)\b.{0,60}\b(?:save|saving|write)\b.{0,30}\bfailed\b",
            r"failed to (?:save|write) (?:the )?(?:checkpoint|model|state|weights)")),
    Category(
        "hub_access", "error",
        ("gatedrepoerror", "gated repo", "repositorynotfounderror", "repository not found",
         "notfounderror", "client error", "valid model identifier", "invalid user token",
         "invalid credentials", "can't load"),
        rx(r"\bGatedRepoError\b", r"Cannot access gated repo", r"You are trying to access a gated repo",
            r"\bRepositoryNotFoundError\b", r"Repository Not Found for url", r"\b(?:Revision|Entry)NotFoundError\b",
            r"Can't load (?:the )?(?:tokenizer|config|configuration|model|processor|feature extractor) for '",
            r"\b40[13] Client Error\b.{0,80}(?:huggingface\.co|hf\.co)",
            r"is not a local folder and is not a valid model identifier",
            r"Invalid user token|Invalid credentials in Authorization header")),
    Category(
        "network_timeout", "error",
        ("network error", "timeouterror", "readtimeout", "connecttimeout", "timed out", "max retries",
         "commerror", "failed to connect", "name resolution", "name or service", "requests.exceptions",
         "newconnectionerror", "couldn't connect", "unreachable", "localentrynotfounderror", "locate the file",
         "connection error, and", "connection", "couldn't reach", "server error", "429 client error",
         "proxyerror", "sslerror", "certificate_verify_failed", "gaierror", "no route to host",
         "remotedisconnected", "maxretryerror", "chunkedencodingerror", "http error 5", "cannot connect to host",
         "endpoint"),
        rx(r"wandb: Network error", r"\bRead ?TimeoutError\b", r"\bConnectTimeoutError\b",
            r"\bReadTimeout\b", r"\bConnectTimeout\b", r"Connection timed out", r"Read timed out",
            r"Max retries exceeded with url", r"wandb\.errors\.(?:errors\.)?CommError",
            r"Run initialization has timed out", r"Failed to connect",
            r"huggingface.{0,200}timed out|timed out.{0,200}huggingface",
            r"Temporary failure in name resolution", r"Name or service not known",
            r"requests\.exceptions\.(?:ConnectionError|Timeout|ReadTimeout)", r"NewConnectionError",
            r"couldn't connect to 'https?://", r"Network is unreachable",
            r"\bLocalEntryNotFoundError\b", r"error happened while trying to locate the files? on the Hub",
            r"Connection error, and we cannot find the requested files",
            r"\bConnection(?:Reset|Refused|Aborted)Error\b|Connection reset by peer|Connection refused"
            r"|'Connection aborted\.'",
            r"\b(?:ConnectionError|ProxyError|SSLError|ChunkedEncodingError|MaxRetryError)\b",
            r"Couldn't reach \S+", r"\b5\d\d Server Error\b", r"\b429 Client Error\b", r"\bsocket\.gaierror\b",
            r"No route to host", r"CERTIFICATE_VERIFY_FAILED", r"\bRemoteDisconnected\b",
            r"\bHTTP Error 5\d\d\b", r"\bClientConnectorError\b|Cannot connect to host",
            r"\bEndpointConnectionError\b|Could not connect to the endpoint URL")),
    Category(
        "terminated", "error", ("death signal", "got signal: ", "terminated"),
        rx(r"Received (?:15|2|Signals\.SIGTERM|Signals\.SIGINT) death signal",
            r"\bSignalException: Process \d+ got signal: (?:15|2)\b", _SHELL + r"Terminated" + _ALONE,
            flags=0), downgradable=False),
    _ABORT,
    Category(
        "config_error", "error",
        ("error:", "yaml", "unrecognized configuration", "unexpected keyword argument", "omegaconf",
         "configattributeerror", "configkeyerror", "missingmandatoryvalue", "hydra", "could not override",
         "error merging override", "filenotfounderror"),
        rx(r"\berror: unrecognized arguments", r"\berror: the following arguments are required",
            r"\berror: argument [-\w/ ,]+: (?:invalid|expected|ambiguous|not allowed)",
            r"\berror: invalid choice",
            r"\byaml\.(?:scanner\.ScannerError|parser\.ParserError|constructor\.ConstructorError|YAMLError)\b",
            r"\bruamel\.yaml\.\w+\.\w*Error\b", r"Unrecognized configuration class",
            r"got an unexpected keyword argument", r"\bomegaconf\.errors\.\w+",
            r"\b(?:ConfigAttributeError|ConfigKeyError|MissingMandatoryValue)\b", r"\bhydra\.errors\.\w+",
            r"Could not override '", r"Error merging override",
            r"FileNotFoundError\b.*\.(?:ya?ml|json|toml|cfg|ini|conf)'")),
)
# fmt: on
BY_ID: dict[str, Category] = {}
PRECEDENCE: dict[str, int] = {}
for _i, _cat in enumerate(CATEGORIES):
    BY_ID.setdefault(_cat.id, _cat)
    PRECEDENCE.setdefault(_cat.id, _i)  # a category listed twice ranks at its first place
PRECEDENCE.update({"python_exception": 100, "error": 101, "python_warning": 102, "warning": 103})

MIN_SCALE = re.compile(r"loss scale already at minimum|Minimum loss scale reached", re.IGNORECASE)
_RETRY = re.compile(r"\bretr(?:y|ying|ies)\b|entering retry loop|\bwill retry\b", re.IGNORECASE)
_SKIPPING = re.compile(r"\bskipp(?:ing|ed)\b|\bignoring\b|\bretrying\b|\bwill retry\b", re.IGNORECASE)
_ABORTING = re.compile(r"\baborting\b", re.IGNORECASE)


def categorize(line: str) -> tuple[Category, re.Match[str]] | None:
    """The highest-precedence category one line anchors, with the match (None for most lines)."""
    low = line.lower()
    for cat in CATEGORIES:
        if any(n in low for n in cat.needles):
            for p in cat.patterns:
                m = p.search(line)
                if m:
                    return cat, m
    return None


def best_category(lines: list[str]) -> tuple[Category, re.Match[str], str] | None:
    """Across the informative lines of one finding (exception lines, trailers): the category with the highest
    precedence, its match and the line it came from."""
    best: tuple[Category, re.Match[str], str] | None = None
    for line in lines:
        hit = categorize(line)
        if hit and (best is None or PRECEDENCE[hit[0].id] < PRECEDENCE[best[0].id]):
            best = (hit[0], hit[1], line)
    return best


def nan_is_gradient_only(line: str) -> bool:
    """Whether a nan_loss line shows only a NaN/Inf gradient norm, with no non-finite loss in it."""
    return GRAD_NORM_NAN.search(line) is not None and not any(p.search(line) for p in NAN_LOSS_PATTERNS)


def category_level(cat: Category, line: str, marker: str | None, in_traceback: bool) -> str:
    """The level of a finding of ``cat``: the table's default, adjusted by what the line and its marker say.

    - fp16 overflow lines are warnings until the scaler hits its minimum (then training cannot continue);
    - a network problem is an error only when the program says so (ERROR marker, or a traceback); retry
      messages are warnings, because a retry that later succeeds cost nothing but time;
    - a NaN/Inf gradient norm beside a finite, non-zero loss is a warning (a step fp16 loss scaling skipped);
      a NaN the trainer says it skipped is a warning;
    - "NCCL WARN" and OOMs that the trainer says it survived ("skipping batch") are warnings; an OOM that a
      program merely logs at WARNING level ("WARNING:root:CUDA out of memory ...") is not: nothing says it
      recovered;
    - otherwise a WARNING marker downgrades a downgradable category.
    """
    if cat.id == "fp16_overflow":
        return "error" if MIN_SCALE.search(line) else "warning"
    if cat.id == "network_timeout":
        if in_traceback:
            return "error"
        if _RETRY.search(line) and marker != "error":
            return "warning"
        return "error" if marker == "error" else "warning"
    if cat.id == "nan_loss":
        if nan_is_gradient_only(line):
            return "error" if LOSS_ZERO.search(line) else "warning"
        return "warning" if _SKIPPING.search(line) else "error"
    if cat.id == "nccl_error" and "NCCL WARN" in line:
        return "warning"
    if cat.id in ("cuda_oom", "mps_oom", "cpu_oom") and _SKIPPING.search(line) and not _ABORTING.search(line):
        return "warning"
    if marker == "warning" and cat.downgradable:
        return "warning"
    return cat.level
