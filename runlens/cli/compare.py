"""``runlens compare JOB_A JOB_B [...] [--json]``: runs side by side, the same comparison as ``runlens ui``'s.

Exit codes: 0 printed; 1 a runlens error; 2 bad input (an unknown job, no store, fewer than two jobs).
"""

from __future__ import annotations

import click

from runlens.cli import cli, db_option, dump_json, handle_errors


@cli.command("compare")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_A JOB_B [JOB...]")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison document as JSON.")
@db_option
@handle_errors
def compare_command(job_ids: tuple[str, ...], as_json: bool, db: str | None) -> None:
    """Compare two or more runs: config differences beside peak memory, step time, goodput, final loss and health.

    Each run's stored analysis is used when it has one and has ended; otherwise one is made now (not stored).
    "latest" names the newest job.
    """
    from runlens.report.compare import MAX_RUNS, compare_runs, format_comparison, gather_runs
    from runlens.report.job import resolve_job_id
    from runlens.store import open_store

    if not 2 <= len(job_ids) <= MAX_RUNS:
        raise click.UsageError(f"give 2 to {MAX_RUNS} job ids (got {len(job_ids)})")
    store = open_store(db, create=False)
    ids = list(dict.fromkeys(resolve_job_id(store, j) for j in job_ids))
    if len(ids) < 2:
        raise click.UsageError("give two different jobs")
    doc = compare_runs(gather_runs(store, ids))
    click.echo(dump_json(doc) if as_json else format_comparison(doc))
