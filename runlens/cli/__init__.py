"""The ``runlens`` command line: parse, call one library function, print.

Each command lives in its own module here, named for it; this one holds the group, the shared ``--db`` option,
the JSON printer and the edge where runlens errors become one line on stderr and an exit code (0 ok, 1 runlens
error, 2 bad input).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable, TypeVar

import click

from runlens._version import __version__
from runlens.core.errors import RunlensError

F = TypeVar("F", bound=Callable[..., Any])


def db_option(fn: F) -> F:
    """Every command takes ``--db URL`` (a SQLAlchemy URL or a SQLite path); default RUNLENS_DB or ./runlens.db."""
    return click.option("--db", "db", metavar="URL", default=None,
                        help="Store URL or SQLite path (default: $RUNLENS_DB or ./runlens.db).")(fn)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit with ``code``."""
    click.echo(f"runlens: {message}", err=True)
    sys.exit(code)


def dump_json(doc: Any) -> str:
    """An analysis document (or part of one) as indented JSON for stdout."""
    # allow_nan=False: the document is JSON-safe by construction; a NaN here is a bug worth failing on.
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False)


def handle_errors(fn: F) -> F:
    """Turn runlens errors into one line on stderr and their exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RunlensError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="runlens")
@click.option("-v", "--verbose", is_flag=True, help="Show runlens's own log messages.")
def cli(verbose: bool) -> None:
    """runlens: a flight recorder and post-mortem analyst for training runs."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="runlens: %(message)s")


# Imported after the helpers above, which each command module uses; importing one adds its commands to ``cli``.
from runlens.cli import (  # noqa: E402, F401
    analyze, collect, compare, db, demo, doctor, import_, jobs, recommend, report, status, ui, watch,
)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="runlens")
