"""``runlens status``, ``runlens watch`` and ``runlens doctor``."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from runlens.cli import cli, db_option, fail, handle_errors
from runlens.cli.jobs import format_duration, render_table
from runlens.store import open_store

_STALE_HELP = "Liveness is stale after M minutes without a heartbeat (default 0.5: 30 s)."


def _age(now: float, t: Any) -> str:
    return "-" if t is None else format_duration(now - float(t)) + " ago"


def _duration(job: dict[str, Any], now: float) -> str:
    """Run time so far, or start to end for a finished job."""
    start = job.get("started_at") or job.get("created_at")
    if start is None:
        return "-"
    ended = job.get("ended_at")
    end = float(ended) if job.get("status") != "running" and ended is not None else now
    return format_duration(end - float(start))


@cli.command("status")
@click.argument("job_id", required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--stale-minutes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="M",
              help=_STALE_HELP)
@click.option("--limit", default=20, show_default=True, help="How many recent jobs to list.")
@handle_errors
def status_command(job_id: str | None, db: str | None, as_json: bool, stale_minutes: float | None,
                   limit: int) -> None:
    """The state of one job (RUNNING, WARNING, TIMED_OUT, SUCCEEDED, FAILED, NEVER_STARTED) or of recent jobs.

    A running job whose process on this machine has died without an end record is marked failed here.
    """
    from runlens.watch.status import job_status, settle_dead_jobs
    from runlens.watch.watcher import describe_job, stale_seconds

    store = open_store(db, create=False)
    now = time.time()
    stale = stale_seconds(stale_minutes)
    if job_id:
        settle_dead_jobs(store, now=now, jobs=[store.get_job(job_id)])
        info = describe_job(store, store.get_job(job_id), now=now, stale_after=stale)
        if as_json:
            click.echo(json.dumps(info, default=str, indent=2))
        else:
            click.echo(_job_text(info, now))
        return

    jobs = store.list_jobs(limit=limit)
    if settle_dead_jobs(store, now=now, jobs=jobs):
        jobs = store.list_jobs(limit=limit)
    out = [(job, job_status(store, job, now=now, stale_after=stale)) for job in jobs]
    if as_json:
        click.echo(json.dumps([{"job_id": j["job_id"], "name": j.get("name"), **st.to_dict(),
                                "last_step": _last_step(j), "heartbeat_at": _heartbeat(j)}
                               for j, st in out], default=str, indent=2))
        return
    if not out:
        click.echo(f"no jobs in {store.shown_url}")
        return
    table = []
    for j, st in out:
        reason = st.reason or ""
        step = _last_step(j)
        table.append([j["job_id"], j.get("name") or "", st.state,
                      reason[:60] + ("…" if len(reason) > 60 else ""), "-" if step is None else str(step),
                      _age(now, _heartbeat(j)), _duration(j, now)])
    headers = ["JOB ID", "NAME", "STATE", "REASON", "LAST STEP", "HEARTBEAT", "DURATION"]
    click.echo(render_table(headers, table))


def _last_step(job: dict[str, Any]) -> Any:
    return job.get("last_step") if job.get("last_step") is not None else job.get("max_step")


def _heartbeat(job: dict[str, Any]) -> Any:
    return job.get("heartbeat_at") or job.get("last_sample_at")


def _job_text(info: dict[str, Any], now: float) -> str:
    """``key  value`` lines for one job, the fix last."""
    alive = {True: " (alive)", False: " (gone)"}.get(info["pid_alive"], "")
    step = "-" if info["last_step"] is None else str(info["last_step"])
    if info["last_loss"] is not None:
        step += f" (loss {info['last_loss']:.4g})"
    since = datetime.fromtimestamp(info["since"]).strftime("%Y-%m-%d %H:%M:%S") if info["since"] else "-"
    rows: list[tuple[str, str]] = [
        ("job", info["job_id"]), ("name", info["name"] or "-"), ("state", info["state"]),
        ("reason", info["reason"] or "-"), ("since", since),
        ("host / pid", f"{info['host'] or '-'} / {info['pid'] or '-'}{alive}"),
        ("duration", format_duration(info["duration_seconds"])), ("last step", step),
        ("last heartbeat", _age(now, info["heartbeat_at"])),
        ("last progress", _age(now, info["progress_at"])),
    ]
    if info["state"] in ("RUNNING", "WARNING") and info["progress_budget"] is not None:
        phase = f" (phase {info['phase']})" if info["phase"] else ""
        rows.append(("progress budget", format_duration(info["progress_budget"]) + phase))
    for key, label in (("log_path", "log"), ("last_log_line", "last log line"), ("remedy", "fix")):
        if info[key]:
            rows.append((label, str(info[key])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@cli.command("watch")
@click.argument("job_ids", nargs=-1)
@db_option
@click.option("--interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="S",
              help="Seconds between polls.")
@click.option("--stale-minutes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="M",
              help=_STALE_HELP)
@click.option("--webhook", "webhooks", multiple=True, metavar="URL",
              help="POST each alert as JSON to URL (repeatable).")
@click.option("--slack-webhook", "slack_webhooks", multiple=True, metavar="URL",
              help="Send each alert to a Slack incoming webhook (repeatable).")
@click.option("--once", is_flag=True, help="Poll once and exit (scripts, tests).")
@handle_errors
def watch_command(job_ids: tuple[str, ...], db: str | None, interval: float, stale_minutes: float | None,
                  webhooks: tuple[str, ...], slack_webhooks: tuple[str, ...], once: bool) -> None:
    """Watch jobs (default: all recent ones) and alert on every change of state, recovery included.

    Each transition is printed as one line; with --webhook/--slack-webhook it is also delivered there, once
    per condition, retried with backoff. Webhook URLs are never printed in full: their secret is redacted.
    """
    from runlens.watch.alerts import Notifier, SlackNotifier, WebhookNotifier
    from runlens.watch.watcher import Watcher

    notifiers: list[Notifier] = []
    try:
        notifiers += [WebhookNotifier(u) for u in webhooks]
        notifiers += [SlackNotifier(u) for u in slack_webhooks]
    except ValueError as exc:
        fail(str(exc), 2)
    store = open_store(db, create=False)
    for job_id in job_ids:
        store.get_job(job_id)   # a typo is bad input (exit 2), not a job to wait for forever
    watcher = Watcher(store, job_ids=list(job_ids) or None, interval=interval, stale_minutes=stale_minutes,
                      notifiers=notifiers)
    if not once:
        targets = ", ".join(n.shown_url for n in notifiers) or "stdout only"
        what = ", ".join(job_ids) or "recent jobs"
        click.echo(f"watching {what} in {store.shown_url} every {interval:g}s; alerts to {targets}; "
                   f"Ctrl-C to stop", err=True)
    watcher.run(once=once)


def format_doctor_table(results: list[Any]) -> str:
    """CHECK / STATUS / DETAIL columns, with the fix on its own line under each row that is not a PASS."""
    width = max([len("CHECK")] + [len(r.name) for r in results])
    lines = [f"{'CHECK'.ljust(width)}  STATUS  DETAIL"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.detail}")
        if r.fix and r.status != "PASS":
            lines.append(f"{''.ljust(width)}          fix: {r.fix}")
    return "\n".join(lines)


@cli.command("doctor")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="DataLoader workers you plan to use (for the /dev/shm and thread checks).")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True, metavar="S",
              help="Seconds each check may take before it is killed and reported FAIL.")
@click.option("--check", "checks", multiple=True, metavar="NAME",
              help="Run only this check (repeatable): threads, shm, tmpdir, nofile, disk, store, pyspy, "
                   "torch, dataloader, cuda, nccl.")
@handle_errors
def doctor_command(db: str | None, as_json: bool, workers: int | None, timeout: float,
                   checks: tuple[str, ...]) -> None:
    """Check this machine for what makes training runs hang: shared memory, TMPDIR, threads, ptrace, ...

    Every check runs in a child process with a timeout, so doctor itself cannot hang. Exit code 1 if any
    check FAILs.
    """
    from runlens.doctor.checks import CHECKS, FAIL, run_doctor

    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        fail(f"unknown check {', '.join(unknown)}; known: {', '.join(CHECKS)}", 2)
    results = run_doctor(db=db, workers=workers, timeout=timeout, checks=list(checks) or None)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        click.echo(format_doctor_table(results))
        counts = {s: sum(r.status == s for r in results) for s in ("PASS", "WARN", "FAIL", "SKIP")}
        click.echo("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if any(r.status == FAIL for r in results):
        sys.exit(1)
