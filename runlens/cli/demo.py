"""``runlens demo [--scenario troubled|healthy] [--db URL] [--out DIR] [--steps N]``"""

from __future__ import annotations

import sys

import click

from runlens.cli import cli, handle_errors
from runlens.demo.run import DEFAULT_OUT


@cli.command("demo")
@click.option(
    "--scenario",
    type=click.Choice(["troubled", "healthy"]),
    default="troubled",
    show_default=True,
    help="troubled: a run with real problems for runlens to find; healthy: the same run done right.",
)
@click.option(
    "--db", "db", metavar="URL", default=None, help="Store URL or SQLite path (default: <out>/runlens.db)."
)
@click.option(
    "--out",
    "out",
    metavar="DIR",
    default=DEFAULT_OUT,
    show_default=True,
    help="Folder for the config, the job's log, checkpoints and the HTML report.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=20),
    default=None,
    help="Optimizer steps (default: 400 troubled, 600 healthy).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "numpy"]),
    default="auto",
    show_default=True,
    help="Train with PyTorch, or NumPy when PyTorch is not installed.",
)
@handle_errors
def demo_command(scenario: str, db: str | None, out: str, steps: int | None, backend: str) -> None:
    """Train a small model on this CPU under `runlens collect`, analyse it and write the HTML report.

    Takes under a minute and a half. The troubled run really diverges, really waits for its data and its
    DataLoader workers really hold memory: the report's recommendations come from measuring that.
    """
    from runlens.demo.run import next_steps, run_demo
    from runlens.report.terminal import format_summary

    result = run_demo(scenario, db=db, out=out, steps=steps, backend=backend, echo=click.echo)
    click.echo("")
    click.echo(format_summary(result.analysis, html_path=result.html_path, color=sys.stdout.isatty()))
    click.echo("")
    for line in next_steps(result, scenario, db=db, out=out):
        click.echo(line)
