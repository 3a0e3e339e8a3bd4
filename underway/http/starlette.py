"""The HTTP API as a Starlette (ASGI) application: `underway.http.asgi(uw)`.

A thin adapter over `underway.http.handlers`: it reads the request (enforcing the
body limit while reading), resolves the principal, and runs the synchronous handler
on a worker thread, so that no store call blocks the event loop. `GET /v1/jobs/{id}`
of a record the cache holds unchanged runs on the loop (no store read), and every
quick read does when `inline_reads` is turned on. Waiting (long polls, `Prefer: wait`,
event streams) holds no thread: it is woken by the change feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Authenticator, AuthHook, TokenSource
from .handlers import Api, ApiRequest, ApiResponse, EventStream, Pending, problem_response
from .hosts import HostCheck
from .problems import Problem, misdirected, not_found_route, payload_too_large
from .sse import HEADERS as SSE_HEADERS
from .sse import MEDIA_TYPE as SSE_MEDIA_TYPE
from .sse import aiter_events
from .webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from ..app import Underway

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def create_app(
    uw: Underway,
    *,
    tokens: TokenSource | None = None,
    auth: AuthHook | None = None,
    max_body: int = 1 << 20,
    max_wait: float = 30.0,
    callback_hosts: Iterable[str] = (),
    webhook_secret: str | bytes | None = None,
    webhook_options: dict[str, Any] | None = None,
    ping_interval: float = 15.0,
    poll_interval: float = 1.0,
    start_workers: bool = False,
    inline_reads: bool | None = None,
    dashboard: bool = True,
    tracebacks: bool = False,
    allowed_hosts: Iterable[str] | None = None,
    metrics_token: str | None = None,
    debug: bool = False,
) -> Starlette:
    """Build the API app for `uw`.

    - `tokens`: `{token: principal}`, a token file path, or None to read
      `UNDERWAY_TOKENS`; `auth`: a hook `(request) -> principal | None` (sync or
      async) for applications that already know their user. Neither: open API.
    - `max_body`: request bodies over this many bytes get 413.
    - `callback_hosts`, `webhook_secret`: hosts a `?callback_url=` may name, and the
      HMAC key deliveries are signed with; `webhook_options` tunes retries
      (`max_attempts`, `backoff`, `backoff_max`, `timeout`).
    - `ping_interval`: seconds between SSE keep-alive comments.
    - `poll_interval`: how often waiters re-read the store without a wake-up.
    - `tracebacks`: include failed tasks' tracebacks in jobs (off: `null`).
    - `start_workers`: run embedded workers for the app's lifetime.
    - `inline_reads`: answer single-record reads on the event loop, saving a thread
      hop (default: off, so that no store call ever blocks the loop; a queued job's
      read counts its place in the queue and looks up why it waits).
    - `dashboard`: serve the dashboard at `/` once `underway.dashboard` provides one.
    - `allowed_hosts`: `Host` names answered besides loopback ones (`*.example.com`;
      `*` for any). Without tokens or a hook, other names get 421 (DNS rebinding);
      with them, names are checked only when this is given.
    - `metrics_token`: a bearer token for `/metrics` alone (for a scraper); by default
      `/metrics` takes the API's tokens, and is open only when the API is.
    """
    webhooks = None
    hosts = list(callback_hosts)
    if hosts:
        webhooks = WebhookDispatcher(
            uw, allowed_hosts=hosts, secret=webhook_secret, **(webhook_options or {})
        )
    api = Api(
        uw,
        authenticator=Authenticator(tokens, auth),
        webhooks=webhooks,
        max_body=max_body,
        max_wait=max_wait,
        poll_interval=poll_interval,
        tracebacks=tracebacks,
        metrics_token=metrics_token,
    )
    host_check = HostCheck(allowed_hosts, enforce=api.auth.anonymous)
    adapter = _Adapter(api, ping_interval=ping_interval, inline_reads=inline_reads)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_workers:
            await run_in_threadpool(uw.start)
        if webhooks is not None:
            await run_in_threadpool(webhooks.resume)
        try:
            yield
        finally:
            if webhooks is not None:
                await run_in_threadpool(webhooks.close)
            if start_workers:
                await run_in_threadpool(uw.stop)

    routes: list[BaseRoute] = [
        Route("/v1/{rest:path}", _AnyMethod(adapter.endpoint)),
        Route("/healthz", _AnyMethod(adapter.endpoint)),
        Route("/metrics", _AnyMethod(adapter.endpoint)),
    ]
    if dashboard:
        routes.extend(_dashboard_routes(uw))
    # Last, so that any other path is a 404 problem rather than Starlette's plain text.
    routes.append(Route("/{rest:path}", _AnyMethod(adapter.endpoint)))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        debug=debug,
        middleware=[Middleware(_Guard, hosts=host_check)],
        exception_handlers={HTTPException: adapter.http_error, Exception: adapter.server_error},
    )
    app.state.underway_api = api
    return app


def _dashboard_routes(uw: Underway) -> list[BaseRoute]:
    """Routes of `underway.dashboard.routes(uw)`, once that module exists; else none."""
    try:
        module = importlib.import_module("underway.dashboard")
    except ImportError:
        return []
    build: Callable[[Underway], list[BaseRoute]] | None = getattr(module, "routes", None)
    return list(build(uw)) if build is not None else []


class _Adapter:
    def __init__(self, api: Api, *, ping_interval: float, inline_reads: bool | None) -> None:
        self.api = api
        self.ping_interval = ping_interval
        self._inline_reads = inline_reads

    @property
    def inline_reads(self) -> bool:
        # Decided on first use: the store is not opened before the app serves.
        if self._inline_reads is None:
            local = self.api.uw.where.startswith(("sqlite", "memory"))
            self._inline_reads = False
            self.api.cache_records = local
        return self._inline_reads

    async def endpoint(self, request: Request) -> Response:
        scope = request.scope
        root = scope.get("root_path", "")
        path: str = scope["path"]
        if root and path.startswith(root):
            path = path[len(root) :]
        method = request.method
        try:
            route, params = self.api.match(method, path)
            principal = await self.principal(request)
            body = await self.read_body(request) if method in _BODY_METHODS else b""
        except Problem as problem:
            self.api.count("unmatched", problem.status)
            return _to_response(problem_response(problem, path))
        api_request = ApiRequest(
            method=method,
            path=path,
            query=request.query_params,
            headers=request.headers,
            body=body,
            principal=principal,
            root=root,
        )
        if route.quick and (self.inline_reads or self.api.cached(params.get("id", ""))):
            # A record the cache holds, unchanged: answered without a store read, so
            # without a thread hop either.
            outcome = self.api.dispatch(route, params, api_request)
        else:
            outcome = await run_in_threadpool(self.api.dispatch, route, params, api_request)
        if isinstance(outcome, ApiResponse):
            return _to_response(outcome)
        if isinstance(outcome, Pending):
            await self.wait(outcome)
            if self.inline_reads:
                return _to_response(outcome.respond())
            return _to_response(await run_in_threadpool(outcome.respond))
        return self.stream(outcome)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own errors (a path no route pattern can match, such as one with
        a newline in it) as problems too."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        problem = (
            not_found_route(request.url.path)
            if status == 404
            else Problem(status, "not-found" if status == 404 else f"http-{status}", str(exc))
        )
        self.api.count("unmatched", status)
        return _to_response(problem_response(problem, request.url.path))

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return _to_response(problem_response(Problem.from_exception(exc), request.url.path))

    async def principal(self, request: Request) -> str | None:
        hook = self.api.auth.hook
        if hook is None:
            return self.api.authenticate(request.headers.get("authorization"))
        value = hook(request)
        if inspect.isawaitable(value):
            value = await value
        return None if value is None else str(value)

    async def read_body(self, request: Request) -> bytes:
        limit = self.api.max_body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise payload_too_large(limit)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise payload_too_large(limit)
        return bytes(body)

    async def wait(self, pending: Pending) -> None:
        """Wait for `pending` without a thread: the notifier's callback wakes the loop."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def changed() -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)

        unsubscribe = self.api.uw.feed.subscribe(pending.job_id, changed)
        deadline = loop.time() + pending.timeout
        try:
            while True:
                wake.clear()
                if pending.until == "change" or self.inline_reads:
                    settled = self.api.is_settled(pending)
                else:
                    settled = await run_in_threadpool(self.api.is_settled, pending)
                left = deadline - loop.time()
                if settled or left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(left, self.api.poll_interval))
        finally:
            unsubscribe()

    def stream(self, events: EventStream) -> StreamingResponse:
        return StreamingResponse(
            aiter_events(
                self.api, events, ping_interval=self.ping_interval, run_sync=run_in_threadpool
            ),
            media_type=SSE_MEDIA_TYPE,
            headers=SSE_HEADERS,
        )


class _AnyMethod:
    """An endpoint as an ASGI app, which Starlette routes for every method (even
    QUERY or TRACE), so that a wrong one is the API's 405 problem with `Allow`."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.endpoint(Request(scope, receive))
        await response(scope, receive, send)


class _Guard:
    """Every answer of the app, the dashboard's too: the `Host` check (421 problem),
    and `X-Content-Type-Options: nosniff`, so that no browser reads JSON or text
    as a script or a page."""

    def __init__(self, app: ASGIApp, hosts: HostCheck) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-content-type-options" for k, _ in headers):
                    headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        if self.hosts.active:
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            name = host.decode("latin-1") if host is not None else None
            if not self.hosts.allows(name):
                response = _to_response(problem_response(misdirected(name or ""), scope["path"]))
                await response(scope, receive, send_nosniff)
                return
        await self.app(scope, receive, send_nosniff)


def _to_response(response: ApiResponse) -> Response:
    return Response(
        response.body if response.status != 204 else None,
        status_code=response.status,
        headers=response.headers,
        media_type=response.media_type,
    )
