"""``runlens status [JOB_ID]``: the state of one job, or of the recent ones."""

from __future__ import annotations

import json
import time

import click

from runlens.cli import cli, db_option, handle_errors
from runlens.store import open_store

STALE_HELP = "Liveness is stale after M minutes without a heartbeat (default 0.5: 30 s)."


@cli.command("status")
@click.argument("job_id", required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--stale-minutes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="M",
              help=STALE_HELP)
@click.option("--limit", default=20, show_default=True, help="How many recent jobs to list.")
@handle_errors
def status_command(job_id: str | None, db: str | None, as_json: bool, stale_minutes: float | None,
                   limit: int) -> None:
    """The state of one job (RUNNING, WARNING, TIMED_OUT, SUCCEEDED, FAILED, NEVER_STARTED) or of recent jobs.

    A running job whose process on this machine has died without an end record is marked failed here.
    """
    from runlens.watch.status import recent_statuses
    from runlens.watch.terminal import job_status_text, status_json, status_table
    from runlens.watch.watcher import describe_job_id, stale_seconds

    store = open_store(db, create=False)
    now = time.time()
    stale = stale_seconds(stale_minutes)
    if job_id:
        info = describe_job_id(store, job_id, now=now, stale_after=stale)
        click.echo(json.dumps(info, default=str, indent=2) if as_json else job_status_text(info, now))
        return
    statuses = recent_statuses(store, now=now, stale_after=stale, limit=limit)
    if as_json:
        click.echo(json.dumps(status_json(statuses), default=str, indent=2))
    elif not statuses:
        click.echo(f"no jobs in {store.shown_url}")
    else:
        click.echo(status_table(statuses, now))
