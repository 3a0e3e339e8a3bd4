"""The `underway` command line: serve, worker, demo, submit, jobs, show, watch, cancel, purge.

Job commands work on a local store (`--store URL`, `--app MODULE:ATTR` for the task
definitions) or on a remote server (`--url`, with `--token` or `UNDERWAY_TOKEN`).
Every error is one line on stderr. Exit codes: 0 done (the job succeeded), 1 the job
failed, 2 the job was cancelled, 3 the command could not do its work (bad input,
unknown task or job, unreachable server or store), 130 interrupted.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from . import Underway
from ._util import parse_duration, rfc3339
from .errors import JobFinished, UnderwayError
from .job import TERMINAL, Event, JobRecord, Progress, State

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

    from .worker import Worker

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130
EXIT_FOR_STATE = {
    State.SUCCEEDED: EXIT_OK,
    State.FAILED: EXIT_FAILED,
    State.CANCELLED: EXIT_CANCELLED,
}

# Long enough for most jobs to end on their own; short enough that drain plus the
# tasks' cancel grace stays under the 30 s a container runtime waits before SIGKILL.
DRAIN_SECONDS = 10.0

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

C = TypeVar("C", bound=Callable[..., Any])


class CliError(Exception):
    """A message for the person at the terminal; printed as one line, no traceback."""


# -- loading the user's app ------------------------------------------------------------
def load_app(spec: str) -> Underway:
    """The `Underway` instance named by `module:attr` (or the only one in `module`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CliError(f"bad app {spec!r}: use MODULE:ATTR, e.g. myapp:uw")
    # Like `python -m`, let an app in the current folder be found without installing it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import {module_name!r}: no module named {exc.name!r}") from None
        raise CliError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise CliError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if attr:
        try:
            app = getattr(module, attr)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
        if not isinstance(app, Underway):
            kind = type(app).__name__
            raise CliError(f"{spec} is a {kind}, not an Underway app")
        return app
    apps = [v for v in vars(module).values() if isinstance(v, Underway)]
    if len(apps) != 1:
        found = "no" if not apps else "several"
        raise CliError(f"{found} Underway apps in {module_name!r}: name one as {module_name}:ATTR")
    return apps[0]


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` arguments; a value is JSON when it parses as JSON, else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CliError(f"bad parameter {pair!r}: use key=value (e.g. count=3 name=alice)")
        if key in params:
            raise CliError(f"parameter {key!r} is given twice")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def sqlite_file(url: str | None) -> Path | None:
    """The file a SQLite store URL names (None for other stores)."""
    if not url:
        return Path("underway.db")
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            path = path[2:]
        return Path(path) if path else None
    return None if "://" in url else Path(url)


# -- where the jobs are: a local store or a remote server ----------------------------
class Jobs(Protocol):
    """What the job commands need, from a store or over HTTP."""

    where: str

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord: ...
    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]: ...
    def cancel(self, job_id: str) -> JobRecord: ...
    def events(self, job_id: str, after: int) -> Iterator[Event]: ...
    def purge(self, older_than: float | None) -> int: ...


class LocalJobs:
    def __init__(self, app: Underway) -> None:
        self.app = app
        self.where = f"store {app.store.url}"

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord:
        return self.app.enqueue(task, params)

    def get(self, job_id: str) -> JobRecord:
        return self.app.get(job_id)

    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]:
        return self.app.list_jobs(state=state, task=task, limit=limit).jobs

    def cancel(self, job_id: str) -> JobRecord:
        return self.app.cancel(job_id)

    def events(self, job_id: str, after: int) -> Iterator[Event]:
        return self.app.job(job_id).events(after)

    def purge(self, older_than: float | None) -> int:
        return self.app.purge(older_than=older_than)


class RemoteJobs:
    def __init__(self, url: str, token: str | None) -> None:
        try:
            from .client import Client
        except ImportError as exc:
            raise CliError(
                f"the client needs its extra: pip install 'underway[server]' ({exc})"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise CliError(f"bad --url {url!r}: use http://host:port or https://...")
        self.client = Client(url, token=token)
        self.where = f"server {url}"

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord:
        return self.client.submit(task, **params).record

    def get(self, job_id: str) -> JobRecord:
        return self.client.get(job_id)

    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]:
        return self.client.list_jobs(state=state, task=task, limit=limit).jobs

    def cancel(self, job_id: str) -> JobRecord:
        return self.client.cancel(job_id)

    def events(self, job_id: str, after: int) -> Iterator[Event]:
        return self.client.events(job_id, after=after)

    def purge(self, older_than: float | None) -> int:
        raise CliError("purge works on a store, not over HTTP: use --store URL")


def open_jobs(
    *, url: str | None, token: str | None, store: str | None, app_spec: str | None, existing: bool
) -> Jobs:
    """The jobs the options point at. `existing`: a SQLite file must already be there
    (reading from a mistyped path should not leave an empty database behind)."""
    if url:
        return RemoteJobs(url, token)
    uw = load_app(app_spec) if app_spec else Underway(store)
    if store:
        uw.configure(store=store)
    if existing and isinstance(uw.store_url, str | None):
        path = sqlite_file(uw.store_url)
        if path is not None and not path.is_file():
            raise CliError(f"no job store at {path} (choose one with --store or --url)")
    uw.store  # noqa: B018 - open it now so a bad store fails here, as one line
    return LocalJobs(uw)


def jobs_options(func: C) -> C:
    options = [
        click.option("--url", envvar="UNDERWAY_URL", help="A remote server, e.g. http://host:8000"),
        click.option("--token", envvar="UNDERWAY_TOKEN", help="Bearer token for --url."),
        click.option("--store", envvar="UNDERWAY_STORE", help="A local store URL."),
        click.option("--app", "app_spec", envvar="UNDERWAY_APP", help="MODULE:ATTR of the app."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# -- showing jobs ------------------------------------------------------------------------
STATE_STYLE = {
    State.QUEUED: "cyan",
    State.RUNNING: "yellow",
    State.SUCCEEDED: "green",
    State.FAILED: "red",
    State.CANCELLED: "magenta",
}


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # Soft wrap: long output lines stay whole for copying; the terminal folds them.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe_progress(progress: Progress, *, running: bool = True) -> str:
    parts = []
    if progress.percent is not None:
        parts.append(f"{progress.percent:.0f}%")
    elif progress.current is not None:
        parts.append(f"{progress.current:g}")
    if progress.eta_s is not None and running:
        parts.append(f"ETA {format_seconds(progress.eta_s)}")
    if progress.message:
        parts.append(progress.message)
    return " ".join(parts)


def output_item(data: Any) -> Any:
    """The emitted item of an `output` event (which also carries the item's index)."""
    if isinstance(data, dict) and "index" in data and "item" in data:
        return data["item"]
    return data


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def print_table(records: list[JobRecord]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    now = time.time()
    rows = []
    for r in records:
        progress = describe_progress(r.progress, running=r.state is State.RUNNING)
        if r.state is State.QUEUED and r.position is not None:
            progress = f"#{r.position + 1} in queue"
        rows.append((r.id, r.task, r.state, progress, format_seconds(now - r.created_at)))
    # Ids and names must stay whole on a narrow terminal; the progress text gives way.
    for n, name in enumerate(("ID", "TASK", "STATE")):
        table.add_column(name, no_wrap=True, min_width=max(len(str(row[n])) for row in rows))
    table.add_column("AGE", justify="right", no_wrap=True, min_width=5)
    table.add_column("PROGRESS", no_wrap=True, overflow="ellipsis")
    for job_id, task, state, progress, age in rows:
        styled = f"[{STATE_STYLE[state]}]{state.value}[/]"
        table.add_row(job_id, escape(task), styled, age, escape(progress))
    console().print(table)


def print_record(record: JobRecord) -> None:
    from rich.markup import escape

    out = console()
    running = record.state is State.RUNNING
    rows: list[tuple[str, str]] = [
        ("id", record.id),
        ("task", record.task),
        ("state", f"[{STATE_STYLE[record.state]}]{record.state.value}[/]"),
        ("params", escape(json.dumps(record.params, ensure_ascii=False))),
        ("progress", escape(describe_progress(record.progress, running=running) or "-")),
        ("attempt", f"{record.attempt} of {record.max_attempts}"),
        ("output", f"{record.output_count} items"),
    ]
    if record.cancel_requested and record.state not in TERMINAL:
        rows.append(("cancel", "requested"))
    if record.state is State.QUEUED and record.position is not None:
        rows.append(("position", str(record.position + 1)))
    for label, ts in (
        ("created", record.created_at),
        ("started", record.started_at),
        ("finished", record.finished_at),
        ("expires", record.expires_at),
    ):
        if ts is not None:
            rows.append((label, rfc3339(ts) or ""))
    if record.started_at is not None and record.finished_at is not None:
        rows.append(("took", format_seconds(record.finished_at - record.started_at)))
    elif record.started_at is not None and running:
        rows.append(("running for", format_seconds(time.time() - record.started_at)))
    if record.owner:
        rows.append(("owner", escape(record.owner)))
    if record.result is not None:
        rows.append(("result", escape(as_text(record.result))))
    if record.error is not None:
        # A job back in the queue keeps the error of its previous attempt.
        label = "error" if record.finished else "last error"
        rows.append((label, f"[red]{escape(record.error.type)}[/]: {escape(record.error.message)}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.print(f"[bold]{label:<{width}}[/]  {value}")
    if record.error is not None and record.error.traceback:
        out.print(escape(record.error.traceback.rstrip()), style="dim")


# -- following a job -------------------------------------------------------------------
class Follower:
    """A live bar (percent, ETA, message) with output items printed above it as they come."""

    def __init__(self, jobs: Jobs, record: JobRecord) -> None:
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar

        self.jobs = jobs
        self.record = record
        self.out = console()
        self.bar: Bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[percent]:>4}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[message]}", markup=False),
            console=self.out,
            auto_refresh=True,
            refresh_per_second=8,
        )
        self.row: TaskID = self.bar.add_task("", total=None, percent="", eta="", message="")
        self.items: list[Any] = []
        self.seq = 0
        self.state = record.state
        self._show_state(record.state)
        self._show_progress(record.progress)

    def _show_state(self, state: State) -> None:
        self.state = state
        style = STATE_STYLE[state]
        self.bar.update(self.row, description=f"{self.record.task} [{style}]{state.value:<9}[/]")

    def _show_progress(self, progress: Progress) -> None:
        percent = progress.percent
        eta = progress.eta_s
        self.bar.update(
            self.row,
            total=100 if percent is not None else None,
            completed=percent or 0,
            percent=f"{percent:.0f}%" if percent is not None else "",
            eta=f"ETA {format_seconds(eta)}"
            if eta is not None and self.state is State.RUNNING
            else "",
            message=progress.message or "",
        )

    def _apply(self, event: Event) -> dict[str, Any] | None:
        """Show one event; the `done` event's data is returned."""
        self.seq = event.seq
        kind = str(event.kind)
        if kind == "state":
            self._show_state(State(event.data["state"]))
        elif kind == "progress":
            self._show_progress(Progress.from_dict(event.data))
        elif kind == "output":
            item = output_item(event.data)
            self.items.append(item)
            self.out.print(as_text(item), markup=False)
        elif kind == "log":
            self.out.print(f"· {event.data}", style="dim", markup=False)
        elif kind == "done":
            data: dict[str, Any] = event.data
            return data
        return None

    def _run_until_done(self) -> dict[str, Any]:
        while True:
            got_any = False
            for event in self.jobs.events(self.record.id, self.seq):
                got_any = True
                done = self._apply(event)
                if done is not None:
                    return done
            # The stream ended early (a dropped connection): go by the record, or resume.
            record = self.jobs.get(self.record.id)
            if record.state in TERMINAL:
                return {
                    "state": record.state.value,
                    "result": record.result,
                    "error": record.error.to_dict() if record.error else None,
                }
            if not got_any:
                time.sleep(0.5)  # back off before reconnecting to a stream that keeps closing

    def follow(self, *, yes: bool) -> int:
        # A shell starts background commands with SIGINT ignored; following is
        # interactive, so an interrupt must reach it wherever it was started.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return self._follow(yes=yes)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _follow(self, *, yes: bool) -> int:
        cancel_sent = False
        with self.bar:
            while True:
                try:
                    done = self._run_until_done()
                    break
                except KeyboardInterrupt:
                    if cancel_sent:
                        self.bar.stop()
                        self.out.print(f"stopped following job {self.record.id}", style="dim")
                        return EXIT_INTERRUPTED
                    if not yes and not self._confirm_cancel():
                        self.bar.stop()
                        self.out.print(
                            f"job {self.record.id} keeps running; follow it again with: "
                            f"underway watch {self.record.id}",
                            markup=False,
                        )
                        return EXIT_INTERRUPTED
                    cancel_sent = True
                    try:
                        self.jobs.cancel(self.record.id)
                    except JobFinished:
                        pass  # it ended meanwhile; the stream tells how
                    self.out.print(f"cancelling job {self.record.id} …", style="dim")
            state = State(done["state"])
            self._show_state(state)
            self.bar.update(self.row, eta="")
            if state is State.SUCCEEDED:
                self.bar.update(self.row, total=100, completed=100, percent="100%")
        return self._summarise(state, done)

    def _confirm_cancel(self) -> bool:
        self.bar.stop()
        try:
            answer = click.confirm(f"\ncancel job {self.record.id}?", default=True, err=True)
        except click.Abort:
            answer = False  # no terminal to ask (or Ctrl-C again): leave the job alone
        if answer:
            self.bar.start()
        return answer

    def _summarise(self, state: State, done: dict[str, Any]) -> int:
        from rich.markup import escape

        job_id = self.record.id
        if state is State.SUCCEEDED:
            result = done.get("result")
            if result is not None and result != self.items:
                self.out.print(as_text(result), markup=False)
            self.out.print(f"[green]✓[/] job {job_id} succeeded")
        elif state is State.FAILED:
            error = done.get("error") or {}
            text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            self.out.print(f"[red]✗[/] job {job_id} failed: {escape(text)}")
        else:
            self.out.print(f"[magenta]■[/] job {job_id} cancelled")
        return EXIT_FOR_STATE[state]


# -- serving -----------------------------------------------------------------------------
class _Terminated(Exception):
    """SIGTERM, turned into an exception so that shutdown code still runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


drain_option = click.option(
    "--drain",
    default=DRAIN_SECONDS,
    show_default=True,
    help="Seconds running jobs get to finish on stop before they are handed back.",
)


def server_options(func: C) -> C:
    options = [
        click.option("--store", help="Store URL: sqlite:///path, redis://host:port/db, memory://"),
        click.option("--host", default="127.0.0.1", show_default=True),
        click.option("--port", default=8000, show_default=True, type=int),
        click.option("--workers", type=click.IntRange(min=1), help="Embedded worker threads."),
        click.option("--no-workers", is_flag=True, help="Only enqueue; workers run elsewhere."),
        click.option(
            "--tokens-file", type=click.Path(dir_okay=False), help="token=principal lines."
        ),
        click.option("--insecure", is_flag=True, help="Allow a non-loopback host without tokens."),
        click.option(
            "--callback-host",
            "callback_hosts",
            multiple=True,
            help="A host that ?callback_url= may name (repeatable).",
        ),
        click.option(
            "--webhook-secret",
            envvar="UNDERWAY_WEBHOOK_SECRET",
            help="HMAC key that signs webhook deliveries.",
        ),
        drain_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_server(
    uw: Underway,
    *,
    store: str | None,
    host: str,
    port: int,
    workers: int | None,
    no_workers: bool,
    tokens_file: str | None,
    insecure: bool,
    callback_hosts: Sequence[str],
    webhook_secret: str | None,
    drain: float,
    banner: str | None = None,
) -> int:
    from .http.auth import load_tokens

    tokens = load_tokens(tokens_file)
    if not tokens and not is_loopback(host) and not insecure:
        raise CliError(
            f"refusing to listen on {host} with no tokens configured (anyone could run jobs): "
            "use --tokens-file or UNDERWAY_TOKENS, or --insecure"
        )
    try:
        import uvicorn

        from .http.starlette import create_app
    except ImportError as exc:
        raise CliError(f"serving needs its extra: pip install 'underway[server]' ({exc})") from None
    uw.configure(store=store, workers=workers)
    uw.store  # noqa: B018 - open it now so a bad store fails before the server starts
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(
                uw, tokens=tokens, callback_hosts=callback_hosts, webhook_secret=webhook_secret
            ),
            host=host,
            port=port,
            log_level="info",
            # Open event streams would otherwise hold the shutdown up indefinitely.
            timeout_graceful_shutdown=3,
        )
    )
    _log_to_stderr()
    where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    mode = "no workers (enqueue only)" if no_workers else f"{uw.workers} workers"
    click.echo(f"underway: {len(uw.tasks)} tasks, {mode}, store {uw.store.url}", err=True)
    if banner:
        click.echo(banner.format(url=where), err=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    worker = None
    try:
        if not no_workers:
            worker = uw.start()
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass  # uvicorn has shut down; now the workers
    except SystemExit as exc:
        # uvicorn exits on its own after logging why (e.g. the port is taken).
        return exc.code if isinstance(exc.code, int) and exc.code else EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_workers(uw, worker, drain)
    return EXIT_OK


def _stop_workers(uw: Underway, worker: Worker | None, drain: float) -> None:
    if worker is not None and worker.running_ids:
        click.echo(
            f"underway: stopping; {len(worker.running_ids)} running jobs get {drain:g}s to "
            "finish, then go back to the queue",
            err=True,
        )
    uw.stop(drain=drain)


def _log_to_stderr() -> None:
    logger = logging.getLogger("underway")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# -- the commands ---------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="underway", prog_name="underway")
def cli() -> None:
    """Long jobs for web apps: serve them, run workers, submit and watch jobs."""


@cli.command()
@click.argument("app_spec", metavar="MODULE:ATTR")
@server_options
def serve(app_spec: str, **options: Any) -> int:
    """Serve the HTTP API (and run jobs) for the app MODULE:ATTR."""
    return run_server(load_app(app_spec), **options)


@cli.command()
@server_options
def demo(**options: Any) -> int:
    """Serve the built-in demo tasks and the dashboard."""
    from .demo import uw

    return run_server(uw, banner="underway demo: dashboard at {url}/", **options)


@cli.command()
@click.argument("app_spec", metavar="MODULE:ATTR")
@click.option("--store", help="Store URL shared with the web processes.")
@click.option("--workers", type=click.IntRange(min=1), help="Jobs run at once.")
@drain_option
def worker(app_spec: str, store: str | None, workers: int | None, drain: float) -> int:
    """Run jobs of MODULE:ATTR from a shared store until SIGINT or SIGTERM."""
    uw = load_app(app_spec)
    uw.configure(store=store, workers=workers)
    uw.store  # noqa: B018 - fail now, as one line, if the store is unusable
    _log_to_stderr()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = None
    try:
        running = uw.start()
        click.echo(
            f"underway worker: {uw.workers} workers on {uw.store.url}, "
            f"tasks: {', '.join(uw.task_names) or 'none'}",
            err=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        _stop_workers(uw, running, drain)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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
        raise CliError("submitting to a local store needs --app MODULE:ATTR (to know the tasks)")
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
