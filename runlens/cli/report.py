"""``runlens report JOB_ID``: re-render the HTML report from the stored analysis (no re-analysis).

Exit codes: 0 written; 1 the report could not be written; 2 bad input (unknown job, no store, no stored
analysis).
"""

from __future__ import annotations

from pathlib import Path

import click

from runlens.cli import cli, db_option, fail, handle_errors


@cli.command("report")
@click.argument("job_id")
@click.option("--out", "out", metavar="PATH", default=None,
              help="Where to write the HTML report (default: next to the job's log, else ./runlens-report-ID.html).")
@db_option
@handle_errors
def report_command(job_id: str, out: str | None, db: str | None) -> None:
    """Re-render the HTML report of JOB_ID from its stored analysis (no re-analysis)."""
    from runlens.report.job import default_html_path, render_html, resolve_job_id
    from runlens.store import open_store
    from runlens.store.frames import latest_analysis

    store = open_store(db, create=False)
    job_id = resolve_job_id(store, job_id)
    job = store.get_job(job_id)
    analysis = latest_analysis(store, job_id)
    if analysis is None:
        fail(f"no analysis stored for job {job_id}; run 'runlens analyze {job_id}' first")
        return
    written, error = render_html(analysis, Path(out) if out else default_html_path(job))
    if error:
        fail(error, 1)
    click.echo(str(written))
