"""Running the server and dedicated workers until Ctrl-C or SIGTERM, losing no job."""

from __future__ import annotations

import errno
import signal
import socket
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import click

from .. import Underway
from ..logs import FORMATS, LEVELS
from .common import DRAIN_SECONDS, EXIT_ERROR, EXIT_OK, C, CliError, is_loopback

if TYPE_CHECKING:
    from ..worker import Worker


class _Terminated(Exception):
    """SIGTERM, turned into an exception so that shutdown code still runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


log_options = [
    click.option(
        "--log-level",
        type=click.Choice(LEVELS),
        default="info",
        show_default=True,
        envvar="UNDERWAY_LOG_LEVEL",
        help="The least severe log lines shown (every job transition is logged at info).",
    ),
    click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default="text",
        show_default=True,
        envvar="UNDERWAY_LOG_FORMAT",
        help="Log lines as text, or as one JSON object per line.",
    ),
]

drain_option = click.option(
    "--drain",
    default=DRAIN_SECONDS,
    show_default=True,
    help="Seconds running jobs get to finish on stop before they are handed back "
    "(while attempts remain).",
)


def server_options(func: C) -> C:
    options = [
        click.option(
            "--store",
            envvar="UNDERWAY_STORE",
            help="Store URL: sqlite:///path, redis://host:port/db, memory://",
        ),
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
        click.option(
            "--allowed-host",
            "allowed_hosts",
            multiple=True,
            help="A Host name to answer besides loopback ones, e.g. jobs.example.com or "
            "*.example.com (repeatable). Without tokens, other names get 421.",
        ),
        click.option(
            "--metrics-token",
            envvar="UNDERWAY_METRICS_TOKEN",
            help="A bearer token for /metrics alone (default: the API's tokens).",
        ),
        click.option(
            "--tracebacks",
            is_flag=True,
            help="Show failed jobs' tracebacks through the API (for development).",
        ),
        drain_option,
        *log_options,
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
    tracebacks: bool = False,
    allowed_hosts: Sequence[str] = (),
    metrics_token: str | None = None,
    banner: str | None = None,
    log_level: str = "info",
    log_format: str = "text",
) -> int:
    from ..http.auth import load_tokens

    tokens = load_tokens(tokens_file)
    if not tokens and not is_loopback(host) and not insecure:
        raise CliError(
            f"refusing to listen on {host} with no tokens configured (anyone could run jobs): "
            "use --tokens-file or UNDERWAY_TOKENS, or --insecure"
        )
    try:
        import uvicorn

        from ..http.starlette import create_app
    except ImportError as exc:
        raise CliError(f"serving needs its extra: pip install 'underway[server]' ({exc})") from None
    uw.configure(store=store, workers=workers)
    uw.where  # noqa: B018 - open it now so a bad store fails before the server starts
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(
                uw,
                tokens=tokens,
                callback_hosts=callback_hosts,
                webhook_secret=webhook_secret,
                tracebacks=tracebacks,
                allowed_hosts=list(allowed_hosts) or None,
                metrics_token=metrics_token,
            ),
            host=host,
            port=port,
            log_level="info",
            # Open event streams would otherwise hold the shutdown up indefinitely.
            timeout_graceful_shutdown=3,
        )
    )
    # Bound before any worker starts: a busy port fails here, before a job could run.
    sock = _bind(host, port)
    log_to_stderr(log_level, log_format)
    where = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    mode = "no workers (enqueue only)" if no_workers else f"{uw.workers} workers"
    click.echo(f"underway: {plural(len(uw.tasks), 'task')}, {mode}, store {uw.where}", err=True)
    if banner:
        click.echo(banner.format(url=where), err=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    worker = None
    try:
        if not no_workers:
            worker = uw.start()
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):
        pass  # uvicorn has shut down; now the workers
    except SystemExit as exc:
        # uvicorn exits on its own after logging why.
        return exc.code if isinstance(exc.code, int) and exc.code else EXIT_ERROR
    finally:
        sock.close()
        try:
            stop_workers(uw, worker, drain)
            uw.close()  # the store too: its connections, and its wake-up socket
        finally:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (another server is running there? choose another with --port)"
        raise CliError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def stop_workers(uw: Underway, worker: Worker | None, drain: float) -> None:
    """Stop the workers, draining running jobs; a second Ctrl-C (or SIGTERM) stops
    waiting and says which jobs it leaves behind."""
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_terminated),
    }
    try:
        # Told only once a second Ctrl-C is caught here: one that comes as soon as the
        # notice is out still says what it leaves behind.
        if worker is not None and worker.running_ids:
            click.echo(
                f"underway: stopping; running jobs ({len(worker.running_ids)}) get {drain:g}s "
                "to finish, then go back to the queue while attempts remain, else they fail "
                "with Shutdown (Ctrl-C again to stop at once)",
                err=True,
            )
        uw.stop(drain=drain)
    except (KeyboardInterrupt, _Terminated):
        left = worker.running_ids if worker is not None else []
        if left:
            click.echo(
                f"underway: interrupted again; abandoning {plural(len(left), 'running job')} "
                f"({', '.join(left)}): they stay 'running' until their lease expires "
                f"({uw.lease:g}s), then go back to the queue (or fail with WorkerLost after "
                "their last attempt)",
                err=True,
            )
        else:
            click.echo("underway: interrupted again; no running job is abandoned", err=True)
        raise KeyboardInterrupt from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def log_to_stderr(level: str = "info", fmt: str = "text") -> None:
    from ..logs import configure

    configure(level, fmt)


# -- the commands ---------------------------------------------------------------------
