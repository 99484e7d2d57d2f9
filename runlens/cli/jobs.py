"""``runlens jobs``: the recent jobs of a store."""

from __future__ import annotations

import json

import click

from runlens.cli import cli, db_option, handle_errors
from runlens.store import open_store
from runlens.watch.terminal import jobs_table


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
    click.echo(jobs_table(jobs))
