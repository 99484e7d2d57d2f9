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
    start = job.get("started_at") or job.get("created_at")
    if start is None:
        return "-"
    end = job.get("ended_at") if job.get("status") != "running" and job.get("ended_at") else now
    return format_duration(float(end) - float(start))


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
    """The state of one job (RUNNING, WARNING, TIMED_OUT, SUCCEEDED, FAILED, NEVER_STARTED), or of recent jobs.

    A running job whose process on this machine has died without an end record is marked failed here.
    """
    from runlens.alerts import last_log_line, remedy_for
    from runlens.status import job_status, settle_dead_jobs
    from runlens.watch import job_context, stale_seconds

    store = open_store(db, create=False)
    now = time.time()
    stale = stale_seconds(stale_minutes)
    if job_id:
        job = store.get_job(job_id)
        settle_dead_jobs(store, now=now, jobs=[job])
        job = store.get_job(job_id)
        st = job_status(store, job, now=now, stale_after=stale)
        ctx = job_context(store, job)
        remedy = None if st.state in ("RUNNING", "SUCCEEDED") else remedy_for(
            " ".join(x for x in (st.cause, st.reason) if x), ctx)
        line = last_log_line(job.get("log_path"))
        if as_json:
            click.echo(json.dumps({"job_id": job_id, "name": job.get("name"), **st.to_dict(),
                                   "host": job.get("host"), "pid": job.get("pid"), "last_step": ctx.get("last_step"),
                                   "last_loss": ctx.get("last_loss"), "heartbeat_at": job.get("heartbeat_at"),
                                   "progress_at": job.get("progress_at"), "started_at": job.get("started_at"),
                                   "ended_at": job.get("ended_at"), "remedy": remedy, "last_log_line": line},
                                  default=str, indent=2))
            return
        d = st.details
        rows = [
            ("job", job_id), ("name", job.get("name") or "-"),
            ("state", st.state), ("reason", st.reason or "-"),
            ("since", datetime.fromtimestamp(st.since).strftime("%Y-%m-%d %H:%M:%S") if st.since else "-"),
            ("host / pid", f"{job.get('host') or '-'} / {job.get('pid') or '-'}"
                           + ("" if d.get("pid_alive") is None else
                              (" (alive)" if d["pid_alive"] else " (gone)"))),
            ("duration", _duration(job, now)),
            ("last step", "-" if ctx.get("last_step") is None else str(ctx["last_step"])
                          + (f" (loss {ctx['last_loss']:.4g})" if ctx.get("last_loss") is not None else "")),
            ("last heartbeat", _age(now, job.get("heartbeat_at"))),
            ("last progress", _age(now, job.get("progress_at"))),
        ]
        if st.state in ("RUNNING", "WARNING"):
            rows.append(("progress budget", format_duration(d.get("progress_budget"))
                         + (f" (phase {d['phase']})" if d.get("phase") else "")))
        if job.get("log_path"):
            rows.append(("log", str(job["log_path"])))
        if line:
            rows.append(("last log line", line))
        if remedy:
            rows.append(("fix", remedy))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            click.echo(f"{key.ljust(width)}  {value}")
        return

    jobs = store.list_jobs(limit=limit)
    settled = settle_dead_jobs(store, now=now, jobs=jobs)
    if settled:
        jobs = store.list_jobs(limit=limit)
    out = []
    for job in jobs:
        st = job_status(store, job, now=now, stale_after=stale)
        out.append((job, st))
    if as_json:
        click.echo(json.dumps([{"job_id": j["job_id"], "name": j.get("name"), **st.to_dict(),
                                "last_step": j.get("last_step") if j.get("last_step") is not None else j.get("max_step"),
                                "heartbeat_at": j.get("heartbeat_at") or j.get("last_sample_at")}
                               for j, st in out], default=str, indent=2))
        return
    if not out:
        click.echo(f"no jobs in {store.shown_url}")
        return
    rows = []
    for j, st in out:
        step = j.get("last_step") if j.get("last_step") is not None else j.get("max_step")
        beat = j.get("heartbeat_at") or j.get("last_sample_at")
        reason = st.reason or ""
        rows.append([j["job_id"], j.get("name") or "", st.state, reason[:60] + ("…" if len(reason) > 60 else ""),
                     "-" if step is None else str(step), _age(now, beat), _duration(j, now)])
    click.echo(render_table(["JOB ID", "NAME", "STATE", "REASON", "LAST STEP", "HEARTBEAT", "DURATION"], rows))


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
    from runlens.alerts import Notifier, SlackNotifier, WebhookNotifier
    from runlens.watch import Watcher

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
        click.echo(f"watching {', '.join(job_ids) or 'recent jobs'} in {store.shown_url} every {interval:g}s; "
                   f"alerts to {targets}; Ctrl-C to stop", err=True)
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
              help="Run only this check (repeatable): threads, shm, tmpdir, nofile, disk, store, pyspy, torch, "
                   "dataloader, cuda, nccl.")
@handle_errors
def doctor_command(db: str | None, as_json: bool, workers: int | None, timeout: float,
                   checks: tuple[str, ...]) -> None:
    """Check this machine for what makes training runs hang: shared memory, TMPDIR, threads, ptrace, ...

    Every check runs in a child process with a timeout, so doctor itself cannot hang. Exit code 1 if any
    check FAILs.
    """
    from runlens.doctor import CHECKS, FAIL, run_doctor

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
