"""``runlens doctor``: check this machine for what makes training runs hang."""

from __future__ import annotations

import json
import sys

import click

from runlens.cli import cli, db_option, fail, handle_errors
from runlens.doctor.results import CHECKS


@cli.command("doctor")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="DataLoader workers you plan to use (for the /dev/shm and thread checks).")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True, metavar="S",
              help="Seconds each check may take before it is killed and reported FAIL.")
@click.option("--check", "checks", multiple=True, metavar="NAME",
              help=f"Run only this check (repeatable): {', '.join(CHECKS)}.")
@handle_errors
def doctor_command(db: str | None, as_json: bool, workers: int | None, timeout: float,
                   checks: tuple[str, ...]) -> None:
    """Check this machine for what makes training runs hang: shared memory, TMPDIR, threads, ptrace, ...

    Every check runs in a child process with a timeout, so doctor itself cannot hang. Exit code 1 if any
    check FAILs.
    """
    from runlens.doctor.results import FAIL, format_counts, format_table
    from runlens.doctor.runner import run_doctor

    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        fail(f"unknown check {', '.join(unknown)}; known: {', '.join(CHECKS)}", 2)
    results = run_doctor(db=db, workers=workers, timeout=timeout, checks=list(checks) or None)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        click.echo(format_table(results))
        click.echo("\n" + format_counts(results))
    if any(r.status == FAIL for r in results):
        sys.exit(1)
