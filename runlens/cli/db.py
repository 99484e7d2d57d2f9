"""``runlens db upgrade``: create the store or migrate it to this runlens's schema."""

from __future__ import annotations

import click

from runlens.cli import cli, db_option, handle_errors
from runlens.store import open_store
from runlens.store.migrate import HEAD_REVISION


@cli.group("db")
def db_group() -> None:
    """Manage the runlens store."""


@db_group.command("upgrade")
@db_option
@handle_errors
def db_upgrade(db: str | None) -> None:
    """Create the store or migrate it to this runlens's schema (also done automatically on first use)."""
    store = open_store(db, create=True)
    click.echo(f"{store.shown_url} is at schema {HEAD_REVISION}")
