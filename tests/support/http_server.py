"""Real servers on free ports for the HTTP tests: uvicorn, werkzeug (Flask), a TCP
proxy that can cut live connections, and a little webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn
from werkzeug.serving import make_server

from underway.http import asgi

from .services import free_port
from .wait import wait_for


@contextmanager
def serve_asgi(app: Any, *, port: int | None = None, lifespan: str = "on") -> Iterator[str]:
    """Run `app` on uvicorn in a thread; yields its base URL. `lifespan="off"` for apps
    that refuse lifespan events (Django's)."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan=lifespan
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def serve_wsgi(app: Any) -> Iterator[str]:
    """Run a WSGI app (Flask) on werkzeug's threaded server; yields its base URL."""
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-werkzeug", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class CuttingProxy:
    """A TCP proxy in front of a server; `cut()` drops every open connection, as a
    flaky network or a restarting load balancer would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.accepted += 1
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """Records every POST; answers with the next status of `statuses` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def webhook_receiver(statuses: list[int] | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(statuses=list(statuses or []))
    lock = threading.Lock()
    arrived = threading.Condition(lock)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with arrived:
                receiver.received.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                arrived.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def until(condition: Callable[[], Any], what: str = "", timeout: float = 10.0) -> Any:
    """`wait_for` with a longer default, for conditions that cross a server."""
    return wait_for(condition, timeout=timeout, what=what)


class Gates:
    """Named one-shot gates a test opens to let a task take its next step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def get(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def open(self, name: str) -> None:
        self.get(name).set()


def register_test_tasks(uw: Any) -> Gates:
    """Tasks the HTTP tests submit: quick ones, a failing one, and gated ones whose
    every step waits for the test to open its gate."""
    from underway import Job

    gates = Gates()

    @uw.task
    def add(x: int, y: int = 1) -> int:
        """Add two integers."""
        return x + y

    @uw.task
    def noop() -> None:
        """Do nothing."""

    @uw.task
    def boom(message: str = "boom") -> None:
        """Always fails."""
        raise ValueError(message)

    @uw.task
    def stepper(job: Job, steps: int, gate: str) -> dict[str, int]:
        """One output item, progress and log line per step; step i waits for gate:i."""
        for i in range(steps):
            event = gates.get(f"{gate}:{i}")
            while not event.wait(0.02):
                job.check_cancelled()
            job.emit({"i": i})
            job.log(f"step {i}")
            job.progress(i + 1, total=steps, message=f"step {i + 1}/{steps}")
        return {"steps": steps}

    @uw.task
    def hold(job: Job, gate: str) -> str:
        """Runs until its gate opens (or it is cancelled)."""
        event = gates.get(gate)
        while not event.wait(0.02):
            job.check_cancelled()
        return "released"

    return gates


@contextmanager
def api_server(uw: Any, **options: Any) -> Iterator[str]:
    """`asgi(uw, **options)` on uvicorn with embedded workers; yields the base URL."""
    options.setdefault("start_workers", True)
    with serve_asgi(asgi(uw, **options)) as url:
        yield url
