"""``runlens jobs`` and ``runlens db upgrade``."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from runlens.cli import cli, db_option, handle_errors
from runlens.core.humanize import duration as format_duration
from runlens.core.humanize import gb as format_gb
from runlens.store import open_store


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def job_duration(job: dict[str, Any], now: float | None = None) -> float | None:
    start = job.get("started_at") or job.get("created_at")
    end = job.get("ended_at") or (job.get("heartbeat_at") if job.get("status") != "running" else None)
    if start is None:
        return None
    return (end if end is not None else (now or time.time())) - start


@cli.command("jobs")
@db_option
@click.option("--limit", default=50, show_default=True, help="How many recent jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@handle_errors
def jobs_command(db: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs: id, name, status, start, duration, steps, peak memory."""
    store = open_store(db, create=False)
    jobs = store.list_jobs(limit=limit)
    if as_json:
        click.echo(json.dumps(jobs, default=str, indent=2))
        return
    if not jobs:
        click.echo(f"no jobs in {store.shown_url}")
        return
    rows = []
    for j in jobs:
        started = j.get("started_at") or j["created_at"]
        rows.append([
            j["job_id"], j["name"], j["status"],
            datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S"),
            format_duration(job_duration(j)),
            str(j.get("steps") or 0),
            format_gb(j.get("peak_memory_gb"), j.get("total_memory_gb")),
        ])
    click.echo(render_table(["JOB ID", "NAME", "STATUS", "STARTED", "DURATION", "STEPS", "PEAK MEMORY"], rows))


@cli.group("db")
def db_group() -> None:
    """Manage the runlens store."""


@db_group.command("upgrade")
@db_option
@handle_errors
def db_upgrade(db: str | None) -> None:
    """Create the store or migrate it to this runlens's schema (also done automatically on first use)."""
    from runlens.store.migrate import HEAD_REVISION

    store = open_store(db, create=True)
    click.echo(f"{store.shown_url} is at schema {HEAD_REVISION}")
