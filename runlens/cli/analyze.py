"""``runlens analyze``, ``runlens report`` and ``runlens recommend``.

Exit codes: 0 done; 1 a runlens error (the HTML report could not be written); 2 bad input (unknown job, no
store, unreadable --log or config); 3 ``analyze --fail-on LEVEL`` and the run's health is at LEVEL or worse (for
CI: ``runlens analyze latest --fail-on critical`` fails the pipeline on a critical finding).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from runlens.cli import cli, db_option, fail, handle_errors

EXIT_HEALTH = 3
_HEALTH_RANK = {"good": 0, "warning": 1, "critical": 2}


def _dump(doc: Any) -> str:
    # allow_nan=False: the document is JSON-safe by construction; a NaN here is a bug worth failing on.
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False)


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
    from runlens.report.job import analyze_job
    from runlens.report.terminal import format_summary
    from runlens.store import open_store

    store = open_store(db, create=False)
    result = analyze_job(store, job_id, log_path=log_path, html_path=html_path, write_html=not no_html)
    if as_json:
        click.echo(_dump(result.analysis))
    else:
        click.echo(format_summary(result.analysis, html_path=result.html_path, color=sys.stdout.isatty()))
    if result.html_error:
        click.echo(f"runlens: no HTML report: {result.html_error}", err=True)
    health = str(result.analysis.get("summary", {}).get("health_score") or "good")
    if fail_on and _HEALTH_RANK.get(health, 0) >= _HEALTH_RANK[fail_on]:
        sys.exit(EXIT_HEALTH)
    if result.html_error and html_path:
        sys.exit(1)   # the report asked for by name was not written


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


@cli.command("recommend")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the recommendations as JSON.")
@click.option("--apply", "apply_to", metavar="CONFIG", default=None,
              help="Write a copy of this YAML/JSON config with the recommended values set (needs -o).")
@click.option("-o", "--output", "output", metavar="OUT", default=None, help="Where --apply writes the new config.")
@db_option
@handle_errors
def recommend_command(job_id: str, as_json: bool, apply_to: str | None, output: str | None, db: str | None) -> None:
    """Print JOB_ID's ranked recommendations; with --apply, write a tuned copy of the config.

    Uses the stored analysis of a finished job, else analyses it now (without storing). The input config is never
    modified; comments and key order are kept; settings that are not config keys (environment variables) and
    paths of another framework's config are skipped and listed.
    """
    if apply_to and not output:
        raise click.UsageError("--apply needs -o/--output: runlens never modifies the input config")
    if output and not apply_to:
        raise click.UsageError("-o/--output is only used with --apply CONFIG")
    from runlens.report.job import analyze_job, resolve_job_id
    from runlens.report.terminal import format_recommendations, format_value
    from runlens.store import open_store
    from runlens.store.frames import latest_analysis

    store = open_store(db, create=False)
    job_id = resolve_job_id(store, job_id)
    job = store.get_job(job_id)
    analysis = latest_analysis(store, job_id) if job.get("status") != "running" else None
    if analysis is None:
        analysis = analyze_job(store, job_id, save=False, write_html=False).analysis
    recs = list(analysis.get("recommendations") or [])

    if apply_to:
        from runlens.report.tuned_config import apply_recommendations

        result = apply_recommendations(apply_to, recs, output or "")
        if as_json:
            click.echo(_dump({"output": str(result.output), "changes": [c.__dict__ for c in result.changes]}))
            return
        for c in result.applied:
            click.echo(f"set {c.file_path}: {format_value(c.old_value) if c.reason != 'key added' else 'not set'}"
                       f" -> {format_value(c.new_value)}  ({c.rec_id})")
        for c in result.skipped:
            click.echo(f"skipped {c.config_path} ({c.rec_id}): {c.reason}")
        if not result.changes:
            click.echo("no recommendation of this run sets a config key")
        click.echo(f"wrote {result.output}")
        return
    if as_json:
        click.echo(_dump(recs))
        return
    click.echo(format_recommendations(recs, color=sys.stdout.isatty()))
