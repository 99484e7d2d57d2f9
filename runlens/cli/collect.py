"""``runlens collect [--name N] [--config FILE] [--db URL] [--log FILE] [--hang-timeout SEC] [--hard-timeout SEC]
[--kill-grace SEC] [--no-output-timeout SEC] [--analyze/--no-analyze] [--progress-pattern REGEX] -- CMD ARGS...``

When CMD ends (whatever the way: success, failure, a kill), the job is analysed here, after the recording has
finished, and the summary and the report's path go to stderr: stdout stays CMD's own output, byte for byte, for
whoever pipes it. The analysis never changes the exit code; when it fails, that is one line on stderr.
"""

from __future__ import annotations

import logging
import sys

import click

from runlens.cli import cli, db_option, handle_errors
from runlens.core.errors import RunlensError

_SECONDS = click.FloatRange(min=0, min_open=True)

log = logging.getLogger(__name__)


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
@click.option("--analyze/--no-analyze", "analyze", default=None,
              help="Analyse the job when CMD ends and print the summary and the report's path on stderr "
                   "(default: on; 'monitoring: analyze_on_complete: false' in the config or "
                   "RUNLENS_ANALYZE_ON_COMPLETE=0 turns it off).")
@click.option("--progress-pattern", "progress_pattern", metavar="REGEX", default=None,
              help="A regular expression for CMD's own progress lines, with named groups step, loss (one at least) "
                   "and lr, grad_norm, epoch, step_time, tokens_per_sec...; tried before the built-in formats "
                   "(also 'monitoring: progress_pattern:' in the config).")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def collect_command(name: str | None, config: str | None, db: str | None, log: str | None,
                    hang_timeout: float | None, hard_timeout: float | None, kill_grace: float | None,
                    no_output_timeout: float | None, analyze: bool | None, progress_pattern: str | None,
                    cmd: tuple[str, ...]) -> None:
    """Run CMD as a recorded job: its output, system samples, exit status; analyse it when it ends. Exits with
    CMD's code, or 124 when runlens killed it for a hang (--hang-timeout/--hard-timeout/--no-output-timeout)."""
    if not cmd:
        raise click.UsageError("missing the command to run, e.g. runlens collect -- python train.py")
    from runlens.collect.wrapper import collect_job

    result = collect_job(list(cmd), name=name, config=config, db=db, log=log, hang_timeout=hang_timeout,
                         hard_timeout=hard_timeout, kill_grace=kill_grace, no_output_timeout=no_output_timeout,
                         analyze=analyze, progress_pattern=progress_pattern)
    if result.job_id is not None and result.db_url is not None and result.analyze:
        analyze_completed(result.job_id, result.db_url)
    sys.exit(result.exit_code)


def analyze_completed(job_id: str, db_url: str) -> None:
    """Analyse the job that just ended and print its summary and report path on stderr; never raises (the exit
    code is the child's, whatever happens here)."""
    click.echo(f"runlens: analysing {job_id} (Ctrl-C skips it; 'runlens analyze {job_id}' does it later)",
               err=True)
    try:
        from runlens.report.job import analyze_job
        from runlens.report.terminal import format_summary
        from runlens.store import open_store

        store = open_store(db_url, create=False)
        try:
            result = analyze_job(store, job_id)
        finally:
            store.close()
        summary = format_summary(result.analysis, html_path=result.html_path, color=sys.stderr.isatty())
    except KeyboardInterrupt:
        click.echo(f"runlens: analysis skipped; run 'runlens analyze {job_id}' for it", err=True)
        return
    except Exception as exc:   # the run is recorded; a failed analysis must not change how collect exits
        log.debug("analysis of %s failed", job_id, exc_info=True)
        why = str(exc) if isinstance(exc, RunlensError) else f"{type(exc).__name__}: {exc}"
        click.echo(f"runlens: could not analyse {job_id}: {why}", err=True)
        return
    click.echo("", err=True)
    click.echo(summary, err=True)
    if result.html_error:
        click.echo(f"runlens: no HTML report: {result.html_error}", err=True)
