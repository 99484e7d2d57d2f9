"""``runlens collect [--name N] [--config FILE] [--db URL] [--log FILE] [--hang-timeout SEC] [--hard-timeout SEC]
[--kill-grace SEC] [--no-output-timeout SEC] -- CMD ARGS...``"""

from __future__ import annotations

import sys

import click

from runlens.cli import cli, db_option, handle_errors

_SECONDS = click.FloatRange(min=0, min_open=True)


@cli.command("collect", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", default=None, help="Job name (default: the command's name).")
@click.option("--config", "config", metavar="FILE", default=None,
              help="The run's config file (YAML/JSON/TOML), stored with the job, secrets redacted.")
@db_option
@click.option("--log", "log", metavar="FILE", default=None,
              help="Where the run's output goes (default: ./runlens-runs/<job_id>/log.txt).")
@click.option("--hang-timeout", type=_SECONDS, metavar="SEC", default=None,
              help="Stall timeout: record the evidence when CMD makes no progress (a step or phase of a Monitor "
                   "inside it; its output if it never calls runlens) for SEC seconds, and kill it at the hard "
                   "timeout. Default: self-calibrating, evidence only.")
@click.option("--hard-timeout", type=_SECONDS, metavar="SEC", default=None,
              help="Kill CMD after SEC seconds without progress (default with --hang-timeout: "
                   "soft + max(soft, 300)). Exit code 124.")
@click.option("--kill-grace", type=_SECONDS, metavar="SEC", default=None,
              help="Seconds between SIGTERM and SIGKILL when killing a stalled CMD (default 30).")
@click.option("--no-output-timeout", type=_SECONDS, metavar="SEC", default=None,
              help="Kill CMD when it prints nothing for SEC seconds (off by default). Exit code 124.")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def collect_command(name: str | None, config: str | None, db: str | None, log: str | None,
                    hang_timeout: float | None, hard_timeout: float | None, kill_grace: float | None,
                    no_output_timeout: float | None, cmd: tuple[str, ...]) -> None:
    """Run CMD as a recorded job: its output, system samples, exit status; exits with CMD's code, or 124 when
    runlens killed it for a hang (--hang-timeout/--hard-timeout/--no-output-timeout)."""
    if not cmd:
        raise click.UsageError("missing the command to run, e.g. runlens collect -- python train.py")
    from runlens.collect.wrapper import run_collect

    sys.exit(run_collect(list(cmd), name=name, config=config, db=db, log=log, hang_timeout=hang_timeout,
                         hard_timeout=hard_timeout, kill_grace=kill_grace, no_output_timeout=no_output_timeout))
