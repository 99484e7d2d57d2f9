"""``runlens watch [JOB_ID...]``: alert on every change of state of the watched jobs."""

from __future__ import annotations

import click

from runlens.cli import cli, db_option, fail, handle_errors
from runlens.cli.status import STALE_HELP
from runlens.store import open_store


def _print_line(line: str) -> None:
    click.echo(line)


@cli.command("watch")
@click.argument("job_ids", nargs=-1)
@db_option
@click.option("--interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="S",
              help="Seconds between polls.")
@click.option("--stale-minutes", type=click.FloatRange(min=0, min_open=True), default=None, metavar="M",
              help=STALE_HELP)
@click.option("--webhook", "webhooks", multiple=True, metavar="URL",
              help="POST each alert as JSON to URL (repeatable).")
@click.option("--slack-webhook", "slack_webhooks", multiple=True, metavar="URL",
              help="Send each alert to a Slack incoming webhook (repeatable).")
@click.option("--once", is_flag=True, help="Poll once and exit (scripts, tests).")
@handle_errors
def watch_command(job_ids: tuple[str, ...], db: str | None, interval: float, stale_minutes: float | None,
                  webhooks: tuple[str, ...], slack_webhooks: tuple[str, ...], once: bool) -> None:
    """Watch jobs (default: all recent ones) and alert on every change of state, recovery included.

    Each transition is printed as one line; with --webhook/--slack-webhook it is also delivered there, once
    per condition, retried with backoff. Webhook URLs are never printed in full: their secret is redacted.
    """
    from runlens.watch.alerts import Notifier, SlackNotifier, WebhookNotifier
    from runlens.watch.watcher import Watcher

    notifiers: list[Notifier] = []
    try:
        notifiers += [WebhookNotifier(u) for u in webhooks]
        notifiers += [SlackNotifier(u) for u in slack_webhooks]
    except ValueError as exc:
        fail(str(exc), 2)
    store = open_store(db, create=False)
    for job_id in job_ids:
        store.get_job(job_id)   # a typo is bad input (exit 2), not a job to wait for forever
    watcher = Watcher(store, job_ids=list(job_ids) or None, interval=interval, stale_minutes=stale_minutes,
                      notifiers=notifiers, out=_print_line)
    if not once:
        targets = ", ".join(n.shown_url for n in notifiers) or "stdout only"
        what = ", ".join(job_ids) or "recent jobs"
        click.echo(f"watching {what} in {store.shown_url} every {interval:g}s; alerts to {targets}; "
                   f"Ctrl-C to stop", err=True)
    watcher.run(once=once)
