"""The category table of the log parser: which lines mean what, and in which order.

``runlens.analyze.logparse`` does the streaming and ``runlens.analyze.logfindings`` the multi-line bookkeeping;
this module only answers questions about text that is already one clean line (or the few lines of one
traceback). The time a line states is read by ``runlens.analyze.logtime``, the figures a finding carries by
``runlens.analyze.logdetails``.


- ``PREFILTER``: the cheap byte-level regex that picks candidate lines out of a block of the log. Everything a
  category, a level marker or a traceback needs contains one of its ``TRIGGER_WORDS``, so lines it misses can
  be skipped unread. That is what makes a multi-gigabyte log of progress bars fast.
- ``CATEGORIES``: ordered by precedence. When one finding mentions several things (``DataLoader worker ...
  killed by signal: Bus error``), the first category in this order that matches wins, and the finding keeps
  the other facts in ``details``. The order puts the root cause before its consequence:

      cuda_oom > mps_oom > cpu_oom > cuda_device_assert > cuda_illegal_memory > shm_bus_error
      > dataloader_worker_died > host_oom_kill > nccl_timeout > nccl_error > cudnn_cublas > fp16_overflow
      > nan_loss > too_many_open_files > af_unix_path_too_long > disk_full > checkpoint_save_failed
      > network_timeout > segfault > config_error   (then python_exception, error, python_warning, warning)

  e.g. an NCCL watchdog that reports "an illegal memory access" is cuda_illegal_memory (the NCCL abort is the
  consequence); a bus error in a DataLoader worker is shm_bus_error with
  ``details["dataloader_worker_died"]``; "No space left on device" while saving a checkpoint is disk_full
  with ``details["during_checkpoint_save"]``;
  a worker "killed by signal: Killed" is dataloader_worker_died with
  ``details["likely_cause"] = "host_oom_kill"``.
- ``level_marker``: the explicit level of a line (``ERROR``, ``[E ...]``, glog ``E0501``, ``level=error``...),
  strict enough that "eval_error_rate", "ERROR_THRESHOLD=5" or "--log-level ERROR" are not markers.
- ``SAVE_CONTEXT``, ``SUCCESS``, ``CONFIG_FRAME``...: the context lines that change what a later finding means
  (a traceback right after "Saving checkpoint" is a failed save; a network error followed by a success recovered).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- the prefilter -------------------------------------------------------------------------------------------

# Every category pattern, level marker, block start and context line below contains one of these substrings
# (lowercased). Each is anchored where it starts with a letter few other words start with ("eback" for
# traceback, "meout" for timeout, "pace left" for no space left): the regex engine tests every position whose
# byte could start a trigger, so fewer distinct first bytes is what makes the scan fast (measured: 187 MB/s
# for this set as a nested trie, 107 MB/s as a flat alternation, 72 MB/s with whole words).
# fmt: off
TRIGGER_WORDS: tuple[str, ...] = (
    "error", "xception", "eback", "warn", "kill", "fail", "fatal", "itical", "finite", "f loss", "nan",
    "is inf", "etected inf", "verflow", "gmentation", "egv", "gnal 11", "egal instr", "e dump", "pace left",
    "quota", "enospc", "emfile", "many open", "f_unix", "med out", "meout", "retr", "unreach", "uldn't",
    "me or service", "ving", "ucce", "ynced", "view run", "wnload complete", "f memory", "e memory",
    "pualloc", "m during tra", "bort", "erminate", "exit", "_status_", "unrecogni", "uld not override",
    "vice-side", "egal mem", "</torch_", "已杀死",
) + tuple(f"[{lvl}{c}" for lvl in "ewf" for c in " 0123456789") \
  + tuple(f"\n{lvl}{m}" for lvl in "ewf" for m in "01")   # glog/c10: "[W NNPACK.cpp]", "[E1206 ", "E0501 "
# fmt: on


def _trie(words: tuple[str, ...]) -> str:
    """A regex matching any of ``words``, nested by common prefix, so that at each position the engine
    compares one byte per level instead of trying every word."""

    def build(rests: list[str]) -> str:
        groups: dict[str, list[str]] = {}
        optional = False
        for w in rests:
            if w:
                groups.setdefault(w[0], []).append(w[1:])
            else:
                optional = True
        parts = [re.escape(first) + build(tails) for first, tails in groups.items()]
        if not parts:
            return ""
        body = parts[0] if len(parts) == 1 and not optional else "(?:" + "|".join(parts) + ")"
        return body + ("?" if optional else "")

    return build(list(words))


# Applied to a lowercased block with a leading "\n" (so the first line also has a preceding newline).
PREFILTER = re.compile(_trie(TRIGGER_WORDS).encode())

# -- the category table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """One category: its id, its default level and the phrases that anchor it.

    ``needles``: lowercase substrings, one of which every pattern's match contains; the patterns are tried
    only on a line that has one (a substring test costs ~50 ns, a regex search over a long line microseconds).
    ``strong`` phrases count even on a line an INFO/DEBUG marker calls harmless (an OOM is an OOM);
    ``downgradable`` lets an explicit WARNING marker make the finding a warning (the program said it coped).
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


# fmt: off
CATEGORIES: tuple[Category, ...] = (
    Category(
        "cuda_oom", "error",
        ("out of memory", "outofmemoryerror", "oom during training", "resourceexhausted"),
        rx(r"\b(?:CUDA|HIP) out of memory", r"torch\.(?:cuda\.)?OutOfMemoryError",
            r"CUDA error: out of memory",
            r"CUDA_ERROR_OUT_OF_MEMORY", r"RESOURCE_EXHAUSTED: Out of memory", r"\bOOM during training step",
            r"ResourceExhaustedError\b.*\bOOM\b"), strong=True),
    Category("mps_oom", "error", ("mps backend",), rx(r"\bMPS backend out of memory"), strong=True),
    Category(
        "cpu_oom", "error",
        ("cpuallocator", "enforce fail at", "memoryerror", "cannot allocate memory", "unable to allocate"),
        rx(r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)",
            r"\[enforce fail at (?:alloc_cpu|CPUAllocator)\.cpp", r"^(?:builtins\.)?MemoryError\b",
            r"\[Errno 12\] Cannot allocate memory",
            r"_ArrayMemoryError\b|Unable to allocate [\d.]+ [KMGT]i?B for an array"), strong=True),
    Category(
        "cuda_device_assert", "error", ("device-side assert", "assertion"),
        rx(r"device-side assert(?:ion)? triggered",
            r"\.cu:\d+: .*block: \[\d+,\d+,\d+\], thread: \[\d+,\d+,\d+\] Assertion"), strong=True),
    Category(
        "cuda_illegal_memory", "error",
        ("illegal memory access", "misaligned address", "illegal instruction was", "illegaladdress"),
        rx(r"an illegal memory access was encountered", r"CUDA error: misaligned address",
            r"an illegal instruction was encountered", r"cudaErrorIllegalAddress"), strong=True),
    Category(
        "shm_bus_error", "error", ("bus error", "shared memory", "</torch_", "/dev/shm"),
        rx(r"\bBus error\b", r"insufficient shared memory \(shm\)", r"unable to write to file </torch_",
            r"unable to open shared memory object", r"out of shared memory",
            r"/dev/shm\b.*No space left on device|No space left on device.*/dev/shm"), downgradable=False),
    Category(
        "dataloader_worker_died", "error", ("dataloader worker",),
        rx(r"DataLoader worker \(pid(?:\(s\))?[^)]*\) (?:is killed by signal|exited unexpectedly)",
            r"DataLoader worker .{0,40}killed by signal"), downgradable=False),
    Category(
        "host_oom_kill", "error",
        ("killed", "已杀死", "137", "exitcode", "sigkill", "oom", "out of memory", "exit status",
         "return code", "memory limit"),
        rx(r"^Killed\s*$", r"^\S+: line \d+:\s+\d+ Killed\b", r"^\[\d+\][+-]?\s+Killed\s", r"^已杀死\s*$",
            r"\bexit(?:ed with)?[ _]?code:? ?137\b", r"\bexit status:? ?137\b", r"\bexitcode\s*:\s*-9\b",
            r"Signal 9 \(SIGKILL\)", r"<Signals\.SIGKILL: 9>", r"\boom[-_]kill",
            r"Out of memory: Kill(?:ed)? process", r"Memory cgroup out of memory", r"\bOOMKilled\b",
            r"killed by the OOM killer", r"non-zero exit status -9\b", r"\breturn code\s*=?\s*(?:-9|137)\b",
            r"\btask \d+: Killed\b", r"Exceeded (?:job|step) memory limit"), downgradable=False),
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
        "nan_loss", "error", ("nan", "inf", "non-finite"),
        rx(r"\bloss\b.{0,60}?\b(?:is|was|became|has become|becomes) (?:nan|inf|non-finite)\b",
            r"\b(?:nan|inf) loss\b", r"\bDetected (?:NaN|inf)\b", r"\bnon-finite loss\b",
            r"NaN or Inf found in input tensor", r"\bloss\w*['\"]?\s*[:=]\s*['\"]?(?:nan|-?inf)\b",
            r"Loss became infinite or NaN", r"\bnan (?:in|detected in) (?:the )?loss\b",
            r"returned nan values in its \d+\w* output", r"found NaN in (?:local )?grad norm"),
        downgradable=False),
    Category(
        "too_many_open_files", "error", ("too many open files", "errno 24", "emfile"),
        rx(r"Too many open files", r"\[Errno 24\]", r"\bEMFILE\b")),
    Category("af_unix_path_too_long", "error", ("af_unix",), rx(r"AF_UNIX path too long")),
    Category(
        "disk_full", "error",
        ("no space left", "errno 28", "os error 28", "quota exceeded", "errno 122", "enospc", "storagefull"),
        rx(r"No space left on device", r"\[Errno 28\]", r"\bos error 28\b", r"Disk quota exceeded",
            r"\[Errno 122\]", r"\bENOSPC\b", r"\bStorageFull\b")),
    Category(
        "checkpoint_save_failed", "error",
        ("pytorchstreamwriter", "failed", "unexpected pos", "while serializing"),
        rx(r"PytorchStreamWriter failed writing file", r"\bFailed to save\b", r"unexpected pos \d+ vs \d+",
            r"Error while serializing",
            r"(?:checkpoint|state_dict|weights)\b.{0,60}\b(?:save|saving|write)\b.{0,30}\bfailed\b",
            r"failed to (?:save|write) (?:the )?(?:checkpoint|model|state|weights)")),
    Category(
        "network_timeout", "error",
        ("network error", "timeouterror", "readtimeout", "connecttimeout", "timed out", "max retries",
         "commerror", "failed to connect", "name resolution", "name or service", "requests.exceptions",
         "newconnectionerror", "couldn't connect", "unreachable"),
        rx(r"wandb: Network error", r"\bRead ?TimeoutError\b", r"\bConnectTimeoutError\b",
            r"\bReadTimeout\b", r"\bConnectTimeout\b", r"Connection timed out", r"Read timed out",
            r"Max retries exceeded with url", r"wandb\.errors\.(?:errors\.)?CommError",
            r"Run initialization has timed out", r"Failed to connect",
            r"huggingface.{0,200}timed out|timed out.{0,200}huggingface",
            r"Temporary failure in name resolution", r"Name or service not known",
            r"requests\.exceptions\.(?:ConnectionError|Timeout|ReadTimeout)", r"NewConnectionError",
            r"couldn't connect to 'https?://", r"Network is unreachable")),
    Category(
        "segfault", "error",
        ("segmentation", "sigsegv", "core dumped", "fatal python error", "signal 11", "illegal instruction"),
        rx(r"Segmentation fault", r"\bSIGSEGV\b", r"\bcore dumped\b",
            r"Fatal Python error: (?:Aborted|Bus error)", r"killed by signal: Segmentation", r"\bsignal 11\b",
            r"Illegal instruction"), downgradable=False),
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
BY_ID: dict[str, Category] = {c.id: c for c in CATEGORIES}
PRECEDENCE: dict[str, int] = {c.id: i for i, c in enumerate(CATEGORIES)}
PRECEDENCE.update({"python_exception": 100, "error": 101, "python_warning": 102, "warning": 103})

MIN_SCALE = re.compile(r"loss scale already at minimum|Minimum loss scale reached", re.IGNORECASE)
_RETRY = re.compile(r"\bretr(?:y|ying|ies)\b|entering retry loop|\bwill retry\b", re.IGNORECASE)
_SKIPPING = re.compile(r"\bskipping\b|\bretrying\b|\bwill retry\b", re.IGNORECASE)


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


def category_level(cat: Category, line: str, marker: str | None, in_traceback: bool) -> str:
    """The level of a finding of ``cat``: the table's default, adjusted by what the line and its marker say.

    - fp16 overflow lines are warnings until the scaler hits its minimum (then training cannot continue);
    - a network problem is an error only when the program says so (ERROR marker, or a traceback); retry
      messages are warnings, because a retry that later succeeds cost nothing but time;
    - "NCCL WARN" and OOMs that the trainer survives ("skipping batch") are warnings;
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
    if cat.id == "nccl_error" and "NCCL WARN" in line:
        return "warning"
    if (
        cat.id == "cuda_oom"
        and _SKIPPING.search(line)
        and not re.search(r"\baborting\b", line, re.IGNORECASE)
    ):
        return "warning"
    if marker == "warning" and cat.downgradable:
        return "warning"
    return cat.level


# -- exceptions, warnings, level markers ---------------------------------------------------------------------

# "RuntimeError: ...", "torch.OutOfMemoryError: ...", "KeyboardInterrupt": a dotted name, then ": " or end.
EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:: |:$|$)")
# The same at the start of a line outside a traceback needs an exception-like name to count as an error.
# (A bare "Error: ..." is a level word, not an exception name: level_marker reads it.)
EXC_START = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*(?:Error|Exception|Interrupt|Failure|Fault)|Exception)(?::\s|:$|$)"
)
PY_WARNING = re.compile(r"(?:^|[\s:(])([A-Z]\w*Warning):\s")
# Level words that are markers only as whole upper-case tokens (ERROR_THRESHOLD, NO_ERRORS are not).
_MARKER = re.compile(
    r"(?<![\w.\-/=])(CRITICAL|FATAL|ERROR|WARNING|WARN|INFO|DEBUG|TRACE|NOTICE)(?![\w\-/.=])"
)
_LOGFMT = re.compile(
    r"\blevel(?:name)?\"?\s*[=:]\s*\"?(critical|fatal|error|warn(?:ing)?|info|debug|trace)\b", re.IGNORECASE
)
# glog / c10 logging: "E0501 12:34:56.789 1234 file.cc:12]", "[W NNPACK.cpp:53]", "[E1206 18:44:12.7 X.cc:6]".
_GLOG = re.compile(r"^\[?([IWEF])(?:\d{3,4} \d\d:\d\d:\d\d(?:\.\d+)?(?: +\d+)?)? *[\w./<>-]+:\d+\]")
# "Error: ...", and the Unix "prog: error: message" (argparse, slurmstepd, compilers), message not a number.
_WORD_MARKER = re.compile(
    r"^(?:[\w.\-/]+: )?(Warning|Warn|Error|Fatal error)\s*:\s+(?=[A-Za-z*\[(<'\"])", re.IGNORECASE
)
_PROSE = re.compile(r"\b[a-z]{2,} [a-z]{2,}\b")
_WORDY = re.compile(r"[A-Za-z]{3}")
_MARKER_WINDOW = 220  # how far into a line a level marker may be (launchers add long prefixes)
_MARKER_PREFIX = 160
_LEVELS = {
    "critical": "error",
    "fatal": "error",
    "error": "error",
    "warning": "warning",
    "warn": "warning",
    "info": "info",
    "debug": "info",
    "trace": "info",
    "notice": "info",
    "e": "error",
    "f": "error",
    "w": "warning",
    "i": "info",
    "fatal error": "error",
}


def level_marker(line: str) -> str | None:
    """The level a line declares: "error", "warning", "info" or None.

    A marker counts only where loggers put it: near the start, after header-like material (timestamps,
    brackets, a logger name, a launcher's tag). Prose before it ("finished with ERROR ...") or a command line
    ("--log-level ERROR", "NCCL_DEBUG=WARN") disqualifies it.
    """
    found = _marker(line)
    return found[0] if found else None


def marker_says_something(line: str) -> bool:
    """Whether a level-marked line has a message after its marker (torchrun prints bare "W0501 ... run.py:7]"
    and "*****" banner lines at WARNING level; they are not warnings about anything)."""
    found = _marker(line)
    rest = line[found[1] :] if found else line
    return _WORDY.search(rest) is not None


def _marker(line: str) -> tuple[str, int] | None:
    m = _GLOG.match(line)
    if m:
        return _LEVELS[m.group(1).lower()], m.end()
    m = _WORD_MARKER.match(line)
    if m:
        return _LEVELS[m.group(1).lower()], m.end()
    head = line[:_MARKER_WINDOW]
    m = _MARKER.search(head)
    if m:
        prefix = head[: m.start()]
        if len(prefix) <= _MARKER_PREFIX and "--" not in prefix and not _PROSE.search(prefix):
            return _LEVELS[m.group(1).lower()], m.end()
    m = _LOGFMT.search(head)
    if m:
        return _LEVELS[m.group(1).lower().replace("warning", "warn")], m.end()
    return None


# -- context lines -------------------------------------------------------------------------------------------

SAVE_CONTEXT = re.compile(
    r"\bsaving\b.{0,60}\b(?:checkpoint|model|weights|state|ckpt|safetensors|lora|optimizer)"
    r"|\bsave_(?:checkpoint|pretrained|model|state)\b",
    re.IGNORECASE,
)
SAVE_FRAME = re.compile(
    r"torch/serialization\.py\", line \d+, in _?save|safetensors.{0,80}\bsave(?:_file)?\b"
    r"|\bin (?:_?save_checkpoint|save_pretrained|_save_checkpoint|save_model|save_state"
    r"|save_weights|_save)\b|[\\/]checkpoint_engine",
    re.IGNORECASE,
)
SUCCESS = re.compile(
    r"\bsuccess(?:fully)?\b|\bsucceeded\b|\bdownload(?:ed)? complete|\bconnection "
    r"(?:re-?established|restored)\b|\bwandb: (?:🚀 )?View run\b|\bwandb: Synced\b",
    re.IGNORECASE,
)
# Python frames whose function or file name says "config": a KeyError/ValueError raised there is a config
# error.
CONFIG_FRAME = re.compile(
    r"(?:config|conf|cfg|args|argparse|yaml|settings|hparams|options)\w*\.py\"|"
    r"\bin \w*(?:config|cfg|args|yaml|settings|hparams|options)\w*\s*$",
    re.IGNORECASE,
)
CONFIG_EXC = re.compile(r"^(?:[\w.]+\.)?(?:KeyError|ValueError|TypeError|AttributeError|FileNotFoundError)\b")
