"""The `underway` command line: serve, worker, demo, submit, jobs, show, watch, cancel,
delete, purge.

Job commands work on a local store (`--store URL`, `--app MODULE:ATTR` for the task
definitions) or on a remote server (`--url`, with `--token` or `UNDERWAY_TOKEN`).
Every error is one line on stderr. Exit codes: 0 done (the job succeeded), 1 the job
failed, 2 the job was cancelled, 3 the command could not do its work (bad input,
unknown task or job, unreachable server or store), 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import click

from .._util import parse_duration
from ..errors import UnderwayError
from ..records import State
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    NICE,
    CliError,
    load_app,
    lower_priority,
    parse_params,
)
from .display import Follower, print_record, print_table
from .jobs import jobs_options, open_jobs
from .server import (
    drain_option,
    log_options,
    log_to_stderr,
    plural,
    run_server,
    server_options,
    stop_workers,
)

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="underway", prog_name="underway")
def cli() -> None:
    """Long jobs for web apps: serve them, run workers, submit and watch jobs."""


@cli.command()
@click.argument("app_spec", metavar="MODULE:ATTR", envvar="UNDERWAY_APP")
@server_options
def serve(app_spec: str, **options: Any) -> int:
    """Serve the HTTP API (and run jobs) for the app MODULE:ATTR."""
    return run_server(load_app(app_spec), **options)


@cli.command()
@server_options
def demo(**options: Any) -> int:
    """Serve the built-in demo tasks and the dashboard."""
    from ..demo import uw

    options["tracebacks"] = True  # the demo shows failures in full
    return run_server(uw, banner="underway demo: dashboard at {url}/", **options)


@cli.command()
@click.argument("app_spec", metavar="MODULE:ATTR", envvar="UNDERWAY_APP")
@click.option("--store", envvar="UNDERWAY_STORE", help="Store URL shared with the web processes.")
@click.option("--workers", type=click.IntRange(min=1), help="Jobs run at once.")
@click.option(
    "--nice",
    type=click.IntRange(0, 19),
    default=NICE,
    show_default=True,
    envvar="UNDERWAY_WORKER_NICE",
    help="Run at this much lower CPU priority (0: as started), so that the jobs leave "
    "the CPU to the web processes and the store on the same machine first.",
)
@drain_option
@log_options[0]
@log_options[1]
def worker(
    app_spec: str,
    store: str | None,
    workers: int | None,
    nice: int,
    drain: float,
    log_level: str,
    log_format: str,
) -> int:
    """Run jobs of MODULE:ATTR from a shared store until SIGINT or SIGTERM."""
    # First, while this is the only thread: on Linux each thread has its own
    # priority, and threads (and child processes) start with their creator's.
    niceness = lower_priority(nice)
    uw = load_app(app_spec)
    uw.configure(store=store, workers=workers)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before the store opens: a signal that comes while it opens (and makes its
    # wake-up socket, on SQLite) stops the worker as cleanly as one that comes later.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = None
    try:
        uw.where  # noqa: B018 - fail now, as one line, if the store is unusable
        log_to_stderr(log_level, log_format)
        if not stop.is_set():
            running = uw.start()
            click.echo(
                f"underway worker: {uw.workers} workers on {uw.where}, "
                f"{plural(len(uw.tasks), 'task')}: {', '.join(uw.task_names) or 'none'}"
                + ("" if niceness is None else f", nice {niceness}"),
                err=True,
            )
        while not stop.wait(1.0):
            pass
    finally:
        # While draining, a second signal interrupts the wait (stop_workers says what
        # it leaves behind).
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        stop_workers(uw, running, drain)
        uw.close()  # the store too: its connections, and its wake-up socket
    click.echo("underway worker: stopped", err=True)
    return EXIT_OK


@cli.command()
@click.argument("task")
@click.argument("params", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--follow", "-f", is_flag=True, help="Show progress and output until it ends.")
@click.option("--yes", "-y", is_flag=True, help="On Ctrl-C, cancel without asking.")
@jobs_options
def submit(task: str, params: tuple[str, ...], follow: bool, yes: bool, **where: Any) -> int:
    """Start a job of TASK; values are JSON when they parse as JSON (n=3, tags='["a"]')."""
    values = parse_params(params)
    if not where["url"] and not where["app_spec"]:
        raise CliError(
            "submitting to a local store needs --app MODULE:ATTR or UNDERWAY_APP (to know the "
            "tasks)"
        )
    jobs = open_jobs(existing=False, **where)
    record = jobs.submit(task, values)
    if not follow:
        click.echo(record.id)
        click.echo(f"{record.state.value}; follow it with: underway watch {record.id}", err=True)
        return EXIT_OK
    return Follower(jobs, record).follow(yes=yes)


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="On Ctrl-C, cancel without asking.")
@jobs_options
def watch(job_id: str, yes: bool, **where: Any) -> int:
    """Follow a job: progress, output, and its end (exit code 0/1/2)."""
    jobs = open_jobs(existing=True, **where)
    return Follower(jobs, jobs.get(job_id)).follow(yes=yes)


@cli.command(name="jobs")
@click.option("--state", type=click.Choice([s.value for s in State]))
@click.option("--task")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON, one job per line.")
@jobs_options
def list_jobs(state: str | None, task: str | None, limit: int, as_json: bool, **where: Any) -> int:
    """The newest jobs, as a table."""
    records = open_jobs(existing=True, **where).list(state=state, task=task, limit=limit)
    if as_json:
        for record in records:
            click.echo(json.dumps(record.to_dict()))
    elif records:
        print_table(records)
    else:
        click.echo("no jobs", err=True)
    return EXIT_OK


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the job record as JSON.")
@jobs_options
def show(job_id: str, as_json: bool, **where: Any) -> int:
    """One job in detail."""
    record = open_jobs(existing=True, **where).get(job_id)
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
    else:
        print_record(record)
    return EXIT_OK


@cli.command()
@click.argument("job_id", metavar="ID")
@jobs_options
def cancel(job_id: str, **where: Any) -> int:
    """Cancel a queued or running job."""
    record = open_jobs(existing=True, **where).cancel(job_id)
    if record.state is State.CANCELLED:
        click.echo(f"job {job_id} cancelled")
    else:
        click.echo(f"job {job_id} is {record.state.value}; cancel requested")
    return EXIT_OK


@cli.command()
@click.argument("job_id", metavar="ID")
@jobs_options
def delete(job_id: str, **where: Any) -> int:
    """Delete a finished job and its output."""
    open_jobs(existing=True, **where).delete(job_id)
    click.echo(f"job {job_id} deleted")
    return EXIT_OK


@cli.command()
@click.option("--older-than", help="Delete every finished job older than this (30s, 5m, 1d).")
@jobs_options
def purge(older_than: str | None, **where: Any) -> int:
    """Delete expired jobs now (or every finished job older than --older-than)."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    count = open_jobs(existing=True, **where).purge(seconds)
    click.echo(f"purged {count} jobs")
    return EXIT_OK


# -- entry point -------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """The `underway` console script."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="underway", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        return EXIT_ERROR
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "underway"
        return _fail(f"{where}: {exc.format_message()}")
    except click.ClickException as exc:
        return _fail(exc.format_message())
    except click.Abort:
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (CliError, UnderwayError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(str(exc) or type(exc).__name__)
    except Exception as exc:
        return _fail(_describe_unexpected(exc))
    return code if isinstance(code, int) else EXIT_OK


def _describe_unexpected(exc: Exception) -> str:
    httpx = sys.modules.get("httpx")  # only loaded when a server was asked
    if httpx is not None and isinstance(exc, httpx.TransportError):
        try:
            where = str(exc.request.url.copy_with(path="/", query=None))
        except RuntimeError:  # raised before a request was made
            where = "the server"
        return f"cannot reach {where}: {exc or type(exc).__name__}"
    return f"unexpected {type(exc).__name__}: {exc}"


def _fail(message: str) -> int:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    click.echo(f"error: {first_line}", err=True)
    return EXIT_ERROR
