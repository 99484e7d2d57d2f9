"""``runlens recommend JOB_ID [--apply CONFIG -o OUT]``: the ranked recommendations, or a tuned config copy."""

from __future__ import annotations

import sys

import click

from runlens.cli import cli, db_option, dump_json, handle_errors


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
    from runlens.report.job import current_analysis, resolve_job_id
    from runlens.report.terminal import format_applied, format_recommendations
    from runlens.store import open_store

    store = open_store(db, create=False)
    analysis = current_analysis(store, resolve_job_id(store, job_id))
    recs = list(analysis.get("recommendations") or [])

    if apply_to:
        from runlens.report.tuned_config import apply_recommendations

        result = apply_recommendations(apply_to, recs, output or "")
        if as_json:
            click.echo(dump_json({"output": str(result.output), "changes": [c.__dict__ for c in result.changes]}))
        else:
            click.echo(format_applied(result))
        return
    if as_json:
        click.echo(dump_json(recs))
        return
    click.echo(format_recommendations(recs, color=sys.stdout.isatty()))
