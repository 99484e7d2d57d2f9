"""Alerts: what a state change of a run says, and delivering it to Slack or a generic JSON webhook.

Delivery never raises and never blocks the watcher for long: each POST has a 5 s timeout and three tries with
exponential backoff, and a notifier that is down only costs a log line. Webhook URLs carry their secret in the
path (Slack: ``/services/T…/B…/<secret>``) or the query, so every message that names one goes through
``redact_url``; the raw URL lives only in the notifier object.

Dedup: one alert per (job, pid, condition) while the condition lasts, cleared when the run recovers or
restarts under a new pid (a detector that never clears its key misses every stall after the first).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from runlens.core.humanize import duration
from runlens.core.redact import redact_url

log = logging.getLogger(__name__)

LOG_LINE_MAX = 300
_TAIL_BYTES = 16 * 1024
# CSI (colours, cursor moves), OSC (titles, hyperlinks) and single-character escapes, as tqdm and rich emit.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


@dataclass
class Alert:
    """One state change of one run, with what a person on call needs to act on it."""

    job_id: str
    name: str | None
    state: str
    previous_state: str | None
    reason: str | None
    host: str | None
    pid: int | None
    phase: str | None
    duration_seconds: float | None
    last_step: int | None
    last_loss: float | None
    last_log_line: str | None
    remedy: str | None
    timestamp: float

    @property
    def recovered(self) -> bool:
        return self.state == "RUNNING" and self.previous_state not in (None, "RUNNING")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> str:
        """One line: ``job: WARNING -> RUNNING: recovered`` or ``job: RUNNING -> FAILED: <reason>``."""
        arrow = f"{self.previous_state} -> {self.state}" if self.previous_state else self.state
        what = "recovered" if self.recovered else (self.reason or "")
        return f"{self.job_id}: {arrow}" + (f": {what}" if what else "")

    def summary_line(self) -> str:
        """The headline plus step, host and pid: what ``runlens watch`` prints for each transition."""
        parts = [self.headline()]
        if self.last_step is not None:
            loss = f" loss {self.last_loss:.4g}" if self.last_loss is not None else ""
            parts.append(f"step {self.last_step}{loss}")
        if self.host or self.pid:
            parts.append(f"host {self.host or '?'} pid {self.pid or '?'}")
        if self.remedy and not self.recovered:
            parts.append(f"fix: {self.remedy}")
        return " | ".join(parts)


# -- remedies --------------------------------------------------------------------------------------------

def _halve(value: Any) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return max(1, n // 2) if n > 1 else None


def _oom_remedy(job: Mapping[str, Any]) -> str:
    half = _halve(job.get("last_batch_size"))
    if half is not None:
        return (f"reduce batch size to {half} (from {job['last_batch_size']}), keeping the effective batch "
                f"with gradient accumulation; or enable activation checkpointing / bf16")
    return ("halve the batch size (keep the effective batch with gradient accumulation), or enable "
            "activation checkpointing / bf16")


def _host_oom_remedy(job: Mapping[str, Any]) -> str:
    half = _halve(job.get("last_worker_count"))
    workers = f"reduce DataLoader num_workers to {half}" if half else "use fewer DataLoader workers"
    return (f"{workers} (each holds its own copy of what it touches) and a smaller prefetch_factor; "
            f"check `dmesg | grep -i oom`")


# Matched in order against "<cause> <reason>"; the first hit gives the remedy. Causes come from
# runlens.watch.status (cuda_oom, host_oom, nccl_timeout, ...), reasons from the collectors' own words.
def _stall_remedy(job: Mapping[str, Any]) -> str:
    pid = job.get("pid") or "PID"
    return (f"see where it is stuck: `py-spy dump --pid {pid}`, or the stacks runlens took "
            f"(`runlens analyze {job.get('job_id', 'JOB')}`)")


_REMEDIES: list[tuple[re.Pattern[str], Callable[[Mapping[str, Any]], str]]] = [
    (re.compile(r"killed_by_runlens|killed by runlens", re.IGNORECASE), _stall_remedy),
    (re.compile(r"cuda_oom|CUDA out of memory|OutOfMemoryError", re.IGNORECASE), _oom_remedy),
    (re.compile(r"host_oom|oom_or_external_kill|OOM killer|SIGKILL", re.IGNORECASE), _host_oom_remedy),
    (re.compile(r"nccl_timeout|NCCL|collective", re.IGNORECASE), lambda job: (
        "find the rank that never reached the collective (runlens analyze shows each rank's stacks): uneven "
        "last batch (drop_last=True), a rank-dependent branch, or rank 0 checkpointing alone; raise the "
        "process-group timeout only for legitimately slow steps")),
    (re.compile(r"dataloader|_try_get_data|worker|shared memory|Bus error", re.IGNORECASE), lambda job: (
        "a DataLoader worker is stuck: set DataLoader(timeout=120), reproduce with num_workers=0, "
        "export OMP_NUM_THREADS=1, and run `runlens doctor` for /dev/shm and TMPDIR")),
    (re.compile(r"AF_UNIX path too long", re.IGNORECASE), lambda job: (
        "TMPDIR is too long for multiprocessing sockets: export TMPDIR=/tmp")),
    (re.compile(r"no_end_event|exited without an end event", re.IGNORECASE), lambda job: (
        "the process died without a word (SIGKILL, host OOM, or the machine went away): check "
        "`dmesg | grep -i -e oom -e killed` and the end of the log")),
    (re.compile(r"hang_suspected|stall|no_progress|no progress|no first step", re.IGNORECASE), _stall_remedy),
    (re.compile(r"heartbeat_stale|heartbeat_late|no heartbeat|heartbeat late", re.IGNORECASE), lambda job: (
        f"the process stopped reporting: is it frozen or swapping? "
        f"`py-spy dump --pid {job.get('pid') or 'PID'}`, `top -p {job.get('pid') or 'PID'}`")),
    (re.compile(r"never_started|no heartbeat and no step", re.IGNORECASE), lambda job: (
        "it never reached its first step: check the start of its log and run `runlens doctor`")),
]


def remedy_for(reason: str | None, job: Mapping[str, Any]) -> str | None:
    """The remedy for a failure or stall ``reason`` (a cause code, a sentence, or both joined), or None.

    ``job`` gives the numbers a remedy quotes: ``last_batch_size`` (CUDA OOM -> half of it),
    ``last_worker_count`` (host OOM -> half the workers), ``job_id`` and ``pid``. A table for now; the
    analyzer's rules may take this over once they can run on a live job.
    """
    if not reason:
        return None
    for pattern, remedy in _REMEDIES:
        if pattern.search(reason):
            return remedy(job)
    return None


# -- the log's last line ---------------------------------------------------------------------------------

def clean_log_line(raw: str, limit: int = LOG_LINE_MAX) -> str:
    """ANSI-stripped, last carriage-return segment (tqdm redraws), URLs redacted, at most ``limit`` chars."""
    text = _ANSI.sub("", raw).rstrip("\r\n")
    if "\r" in text:
        segments = [s for s in text.split("\r") if s.strip()]
        text = segments[-1] if segments else ""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text.strip())
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_log_line(path: str | Path | None, limit: int = LOG_LINE_MAX) -> str | None:
    """The last non-empty line of a job's log, read from its last 16 KiB only (logs can be gigabytes)."""
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            chunk = fh.read(_TAIL_BYTES)
    except OSError:
        return None
    for raw in reversed(chunk.decode("utf-8", errors="replace").splitlines()):
        line = clean_log_line(raw, limit)
        if line:
            return line
    return None


# -- delivery --------------------------------------------------------------------------------------------

class Notifier(Protocol):
    """Something that delivers an alert; ``send`` returns whether it got through and never raises."""

    shown_url: str

    def send(self, alert: Alert) -> bool: ...


def _scrub(text: str, url: str) -> str:
    """``text`` with the raw ``url`` (and its path) replaced by the redacted form, for log lines."""
    shown = redact_url(url)
    text = text.replace(url, shown)
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:
        path = ""
    if len(path) > 1:
        text = text.replace(path, urllib.parse.urlsplit(shown).path)
    return text


class _JsonPoster:
    """POST JSON with a timeout, retried with exponential backoff; logs failures with the URL redacted."""

    def __init__(self, url: str, *, timeout: float = 5.0, tries: int = 3, backoff: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            # urllib would also open file:// and ftp:// URLs; a webhook is HTTP.
            raise ValueError(f"webhook URL must be http(s): {redact_url(url)}")
        self._url = url
        self.shown_url = redact_url(url)
        self.timeout = timeout
        self.tries = max(1, tries)
        self.backoff = backoff
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.shown_url!r})"

    def post(self, payload: Mapping[str, Any]) -> bool:
        body = json.dumps(payload, default=str).encode()
        last = ""
        for attempt in range(self.tries):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "runlens-alerts"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read(1024)
                return True
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                exc.close()
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break   # the request itself is wrong (bad URL, revoked hook): retrying will not help
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                last = f"{type(exc).__name__}: {reason}"
        log.warning("could not deliver alert to %s after %d tries: %s", self.shown_url, attempt + 1,
                    _scrub(last, self._url))
        return False


class WebhookNotifier(_JsonPoster):
    """A generic JSON webhook: the alert's fields as a JSON object, POSTed."""

    def send(self, alert: Alert) -> bool:
        try:
            return self.post(alert.to_dict())
        except Exception as exc:  # never let delivery take the watcher down
            log.warning("alert to %s failed: %s", self.shown_url, _scrub(str(exc), self._url))
            return False


_SLACK_ICON = {"RUNNING": ":large_green_circle:", "WARNING": ":warning:", "TIMED_OUT": ":hourglass:",
               "FAILED": ":x:", "NEVER_STARTED": ":grey_question:", "SUCCEEDED": ":white_check_mark:"}


def _mrkdwn(text: str) -> str:
    # Slack asks for these three escaped in mrkdwn (docs: "Formatting text for app surfaces").
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Slack incoming-webhook JSON: ``text`` (notification and fallback) and Block Kit ``blocks``.

    Limits respected: header text 150 chars, section text 3000, field text 2000, at most 10 fields.
    """
    icon = _SLACK_ICON.get(alert.state, ":information_source:")
    text = f"{icon} runlens: {alert.headline()}"
    header = f"{alert.name or alert.job_id}: {alert.state}" + (" (recovered)" if alert.recovered else "")
    fields = [("Job", alert.job_id), ("State", f"{alert.previous_state or '-'} → {alert.state}"),
              ("Host", alert.host or "-"), ("PID", str(alert.pid) if alert.pid else "-"),
              ("Phase", alert.phase or "-"), ("Duration", duration(alert.duration_seconds)),
              ("Last step", "-" if alert.last_step is None else str(alert.last_step)),
              ("Last loss", "-" if alert.last_loss is None else f"{alert.last_loss:.4g}")]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(alert.reason or alert.state)[:3000]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_mrkdwn(v)}"[:2000]}
                                       for k, v in fields][:10]},
    ]
    if alert.remedy and not alert.recovered:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"*Fix:* {_mrkdwn(alert.remedy)}"[:3000]}})
    if alert.last_log_line:
        line = alert.last_log_line.replace("`", "'")
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn",
                                                        "text": f"last log line: `{_mrkdwn(line)}`"[:2000]}]})
    return {"text": text[:3000], "blocks": blocks}


class SlackNotifier(_JsonPoster):
    """A Slack incoming webhook (``https://hooks.slack.com/services/...``)."""

    def send(self, alert: Alert) -> bool:
        try:
            return self.post(slack_payload(alert))
        except Exception as exc:  # never let delivery take the watcher down
            log.warning("alert to %s failed: %s", self.shown_url, _scrub(str(exc), self._url))
            return False


class Deduper:
    """Remembers which (job, pid, condition) alerts are active, so each is sent once while it lasts.

    ``should_send`` answers True the first time a condition is seen and False while it stays active;
    ``clear`` (on recovery, or on a new pid: a restart) re-arms every condition of that job, so the next
    stall alerts again.
    """

    def __init__(self) -> None:
        self._active: dict[str, set[tuple[Any, str]]] = {}
        self._pid: dict[str, Any] = {}

    def should_send(self, job_id: str, condition: str, pid: Any = None) -> bool:
        if job_id in self._pid and self._pid[job_id] != pid:
            self.clear(job_id)
        self._pid[job_id] = pid
        active = self._active.setdefault(job_id, set())
        key = (pid, condition)
        if key in active:
            return False
        active.add(key)
        return True

    def is_active(self, job_id: str) -> bool:
        return bool(self._active.get(job_id))

    def clear(self, job_id: str) -> None:
        self._active.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        self._active.pop(job_id, None)
        self._pid.pop(job_id, None)
