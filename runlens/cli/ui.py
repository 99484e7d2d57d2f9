"""``runlens ui [--db URL] [--host 127.0.0.1] [--port 8765] [--token TOKEN]``: the local web app over a store.

Exit codes: 0 stopped with Ctrl-C or SIGTERM; 2 bad input (a store that cannot be opened, a port that cannot be
bound, a non-local host without ``--token``).
"""

from __future__ import annotations

import re

import click

from runlens.cli import cli, db_option, fail, handle_errors

_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]{16,}$")


@cli.command("ui")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything beyond this machine needs --token.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the address is printed).")
@click.option("--token", envvar="RUNLENS_UI_TOKEN", default=None, metavar="TOKEN",
              help="Shared secret every request must carry (Authorization: Bearer TOKEN or ?token=); at least 16 "
                   "of A-Z a-z 0-9 . _ ~ -. Default: $RUNLENS_UI_TOKEN.")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@handle_errors
def ui_command(db: str | None, host: str, port: int, token: str | None, access_log: bool) -> None:
    """Serve the job list, the job pages (live while a job runs), run comparison and the JSON API, read-only.

    The store is opened read-only and never written. By default only this machine can connect; to serve
    others, pass --host 0.0.0.0 with --token (e.g. from 'python -c "import secrets; print(secrets.token_urlsafe())"').
    """
    from runlens.store import open_store
    from runlens.ui.app import create_app
    from runlens.ui.server import bind_socket, is_loopback, serve, url_of

    if token is not None and not _TOKEN_CHARS.match(token):
        raise click.BadParameter("use at least 16 characters of A-Z a-z 0-9 . _ ~ -", param_hint="--token")
    if not is_loopback(host) and not token:
        raise click.UsageError(f"--host {host} lets other machines read this store; pass --token TOKEN too "
                               "(or listen on 127.0.0.1)")
    store = open_store(db, read_only=True)
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return
    click.echo(f"runlens ui: {url_of(sock)} serving {store.shown_url} (read-only; Ctrl-C stops)")
    try:
        serve(create_app(store, token=token, host=host), sock, access_log=access_log)
    finally:
        store.close()
