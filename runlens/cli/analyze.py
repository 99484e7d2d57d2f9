"""``runlens analyze JOB_ID``: analyse a job, store the analysis, write the HTML report, print the summary.

Exit codes: 0 done; 1 a runlens error (the HTML report asked for with --html could not be written); 2 bad input
(unknown job, no store, unreadable --log or config); 3 ``--fail-on LEVEL`` and the run's health is at LEVEL or
worse (for CI: ``runlens analyze latest --fail-on critical`` fails the pipeline on a critical finding).
"""

from __future__ import annotations

import sys

import click

from runlens.cli import cli, db_option, dump_json, handle_errors

EXIT_HEALTH = 3


@cli.command("analyze")
@click.argument("job_id")
@click.option("--log", "log_path", metavar="FILE", default=None,
              help="Parse this log file instead of the one recorded with the job.")
@click.option("--json", "as_json", is_flag=True, help="Print only the analysis JSON document to stdout.")
@click.option("--html", "html_path", metavar="PATH", default=None,
              help="Where to write the HTML report (default: next to the job's log, else ./runlens-report-ID.html).")
@click.option("--no-html", is_flag=True, help="Do not write the HTML report.")
@click.option("--fail-on", type=click.Choice(["warning", "critical"]), default=None,
              help=f"Exit with code {EXIT_HEALTH} when the health is this level or worse (for CI).")
@db_option
@handle_errors
def analyze_command(job_id: str, log_path: str | None, as_json: bool, html_path: str | None, no_html: bool,
                    fail_on: str | None, db: str | None) -> None:
    """Analyse JOB_ID (or "latest"): health, memory, goodput, ranked recommendations; store it, write the report.

    Exit codes: 0 ok, 1 runlens error, 2 bad input, 3 health at or above --fail-on.
    """
    from runlens.report.job import analyze_job, health_at_least
    from runlens.report.terminal import format_summary
    from runlens.store import open_store

    store = open_store(db, create=False)
    result = analyze_job(store, job_id, log_path=log_path, html_path=html_path, write_html=not no_html)
    if as_json:
        click.echo(dump_json(result.analysis))
    else:
        click.echo(format_summary(result.analysis, html_path=result.html_path, color=sys.stdout.isatty()))
    if result.html_error:
        click.echo(f"runlens: no HTML report: {result.html_error}", err=True)
    if fail_on and health_at_least(result.analysis, fail_on):
        sys.exit(EXIT_HEALTH)
    if result.html_error and html_path:
        sys.exit(1)   # the report asked for by name was not written
