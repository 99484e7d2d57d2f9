"""``runlens collect [--name N] [--config FILE] [--db URL] [--log FILE] -- CMD ARGS...``"""

from __future__ import annotations

import sys

import click

from runlens.cli import cli, db_option, handle_errors


@cli.command("collect", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", default=None, help="Job name (default: the command's name).")
@click.option("--config", "config", metavar="FILE", default=None,
              help="The run's config file (YAML/JSON/TOML), stored with the job, secrets redacted.")
@db_option
@click.option("--log", "log", metavar="FILE", default=None,
              help="Where the run's output goes (default: ./runlens-runs/<job_id>/log.txt).")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def collect_command(name: str | None, config: str | None, db: str | None, log: str | None,
                    cmd: tuple[str, ...]) -> None:
    """Run CMD as a recorded job: its output, system samples, exit status; exits with CMD's code."""
    if not cmd:
        raise click.UsageError("missing the command to run, e.g. runlens collect -- python train.py")
    from runlens.collect.wrapper import run_collect

    sys.exit(run_collect(list(cmd), name=name, config=config, db=db, log=log))
