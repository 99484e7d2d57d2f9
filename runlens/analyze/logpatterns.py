"""The line-level vocabulary of the log parser besides the categories: the prefilter, the level markers and
the context lines.

``runlens.analyze.logparse`` does the streaming, ``runlens.analyze.logfindings`` the multi-line bookkeeping
and ``runlens.analyze.logcategories`` holds the category table and its precedence; this module answers the
other questions about one clean line. The time a line states is read by ``runlens.analyze.logtime``, the
figures a finding carries by ``runlens.analyze.logdetails``.

- ``PREFILTER``: the cheap byte-level regex that picks candidate lines out of a block of the log. Everything a
  category, a level marker or a traceback needs contains one of its ``TRIGGER_WORDS``, so lines it misses can
  be skipped unread. That is what makes a multi-gigabyte log of progress bars fast.
- ``level_marker``: the explicit level of a line (``ERROR``, ``[E ...]``, glog ``E0501``, ``level=error``...),
  strict enough that "eval_error_rate", "ERROR_THRESHOLD=5" or "--log-level ERROR" are not markers.
- ``SAVE_CONTEXT``, ``SUCCESS``, ``CONFIG_FRAME``...: the context lines that change what a later finding means
  (a traceback right after "Saving checkpoint" is a failed save; a network error followed by a success recovered).
"""

from __future__ import annotations

import re

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
    # address in use, scheduler kills, signals, network and hub errors, glibc aborts, non-finite values in
    # progress lines (starting with letters the set already starts with: a new first byte slows every byte)
    "y in use", "rinuse", "ncelled at", "wallclock", "ineexceeded", "ified deadline", "eath signal", "ighup",
    "got signal", "ngup", "reset by", "refused", "route to h", "isconnected", "gated repo", "not found for url",
    "model identif", "w on resource", "inf,", "inf ", "inf}", "inf)", "inf'", "inf\"", "inf]", "inf\n",
    "rrupt", "free()", "munmap_chunk", "mashing", "n't load", "nect to host", "ndpoint", "nvalid loss", "phemeral",
) + tuple(f"[{lvl}{c}" for lvl in "ewf" for c in " 0123456789") \
  + tuple(f"\n{lvl}{m}" for lvl in "ewf" for m in "01")   # glog/c10: "[W NNPACK.cpp]", "[E1206 ", "E0501 "
# fmt: on


def trie(words: tuple[str, ...]) -> str:
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
PREFILTER = re.compile(trie(TRIGGER_WORDS).encode())

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


# A line of source code printed outside a traceback block (a traceback pasted without its header, a rich box):
# "    raise GatedRepoError(message, response) from e" names an error class but reports nothing.
SOURCE_LINE = re.compile(r"^\s+(?:raise|return|yield|await)\s|^\s*[│┃]\s*(?:❱\s*)?\d+\s*[│┃]")

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
# A line that says an OOM was survived ("CUDA OOM Error during batch execution, skipping batch."): the OOM
# reported just above it was caught.
OOM_SKIP = re.compile(
    r"\b(?:OOM|out of memory)\b.{0,80}\bskipp(?:ing|ed)\b|\bskipp(?:ing|ed)\b.{0,80}\b(?:OOM|out of memory)\b",
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
