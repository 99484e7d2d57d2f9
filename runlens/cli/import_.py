"""``runlens import LOG [--name N] [--config FILE] [--db URL] [--progress-pattern REGEX] [--analyze/--no-analyze]``

Makes a job from the log of a run that was not recorded (``runlens.collect.log_import``) and analyses it as
``runlens collect`` would have: the steps its progress lines give, the errors in it, the time its lines state.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from runlens.cli import cli, db_option, handle_errors


@cli.command("import")
@click.argument("log", metavar="LOG")
@click.option("--name", default=None, help="Job name (default: the log file's name).")
@click.option("--config", "config", metavar="FILE", default=None,
              help="The run's config file (YAML/JSON/TOML), stored with the job, secrets redacted.")
@db_option
@click.option("--progress-pattern", "progress_pattern", metavar="REGEX", default=None,
              help="A regular expression for the run's own progress lines (named groups step, loss, lr, ...).")
@click.option("--analyze/--no-analyze", "analyze", default=True,
              help="Analyse the job once imported and print the summary (default: on).")
@handle_errors
def import_command(log: str, name: str | None, config: str | None, db: str | None, progress_pattern: str | None,
                   analyze: bool) -> None:
    """Make a job from LOG, the output of a run runlens did not record, so it can be analysed."""
    from runlens.analyze.logtime import line_time
    from runlens.cli.collect import analyze_completed
    from runlens.collect.log_import import import_log

    path = Path(log).expanduser()
    try:
        ref = datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        ref = datetime.now()
    result = import_log(path, name=name, config=config, db=db, progress_pattern=progress_pattern,
                        line_time=lambda line: line_time(line, ref))
    how = {"lines": "the times its lines state", "step_times": "its printed step times, ending at the file's time",
           "lines_counted": "one second per line (the log states no time)"}[result.times]
    formats = ", ".join(f"{k} {v}" for k, v in sorted(result.formats.items())) or "none recognised"
    click.echo(f"runlens: imported {result.job_id}: {result.steps} steps, {result.evaluations} evaluations "
               f"({formats}); times from {how}", err=True)
    if analyze:
        analyze_completed(result.job_id, result.db_url)
    else:
        click.echo(result.job_id)
