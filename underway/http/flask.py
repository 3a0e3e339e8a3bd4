"""Flask integration: the same HTTP API as a blueprint, and background views.

    jobs = UnderwayFlask(uw, app, url_prefix="/jobs", tokens={...})

    @app.post("/render/<id>")
    @jobs.background_view()
    def render(id):                 # takes minutes
        ...
        return {"file": path}

`POST /render/42` now answers 202 at once with `Location: /jobs/status/<job id>`;
that URL answers 202 (with `Retry-After`) while the view runs on a worker, and then
the view's own response: its status, headers and body. The view runs inside a copy
of the original request's context (method, path, query, headers, body) and can
report progress through `flask.g.underway_job`. Credentials are not kept: the copy
has no `Authorization`, `Cookie` or `Proxy-Authorization` header; the principal who
started it is `flask.g.underway_principal`. The status URL applies the API's rules:
401 without a valid token when tokens are configured, 404 for another owner's job.

With `start_workers=True` the app's process runs jobs; when it ends (Ctrl-C or
SIGTERM of `flask run`, a gunicorn worker stopping), running jobs get `drain`
seconds to finish and are then handed back to the queue, as `underway serve` does.
With a `url_prefix`, the dashboard is served at `{url_prefix}/`.
"""

from __future__ import annotations

import atexit
import base64
import functools
import io
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, Response, g, request, send_file, url_for
from werkzeug.exceptions import HTTPException, NotFound

from .._util import dumps
from ..dashboard.assets import (
    MEDIA_TYPES,
    SECURITY_HEADERS,
    STATIC_PREFIX,
    render_index,
    static_file,
)
from ..errors import JobNotFound
from ..job import Job
from ..records import TERMINAL, State
from .auth import Authenticator, AuthHook, TokenSource
from .handlers import Api, ApiRequest, ApiResponse, EventStream, problem_response
from .hosts import HostCheck
from .problems import (
    Problem,
    misdirected,
    no_such_file,
    not_found_route,
    payload_too_large,
    unauthorized,
)
from .sse import HEADERS as SSE_HEADERS
from .sse import MEDIA_TYPE as SSE_MEDIA_TYPE
from .sse import iter_events
from .webhooks import WebhookDispatcher

if TYPE_CHECKING:
    from ..app import Underway
    from ..worker import Worker

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("underway.flask")
_VIEW_TASK_PREFIX = "flask-view:"
# Request headers (as WSGI environ keys) that the stored copy of a request never keeps.
_CREDENTIALS = frozenset({"HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_PROXY_AUTHORIZATION"})
# Every method a client may try reaches the API, so a wrong one is a 405 problem with
# `Allow` (werkzeug's own 405 is an HTML page).
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"]


class UnderwayFlask:
    """Registers the underway API on a Flask app (`init_app`) and makes background views."""

    def __init__(
        self,
        uw: Underway,
        app: Flask | None = None,
        *,
        url_prefix: str = "",
        tokens: TokenSource | None = None,
        auth: AuthHook | None = None,
        max_body: int = 1 << 20,
        max_wait: float = 30.0,
        callback_hosts: Iterable[str] = (),
        webhook_secret: str | bytes | None = None,
        webhook_options: dict[str, Any] | None = None,
        ping_interval: float = 15.0,
        poll_interval: float = 1.0,
        tracebacks: bool = False,
        start_workers: bool = False,
        allowed_hosts: Iterable[str] | None = None,
        metrics_token: str | None = None,
        drain: float = 10.0,
        dashboard: bool = True,
        name: str = "underway",
    ) -> None:
        self.uw = uw
        hosts = list(callback_hosts)
        webhooks = None
        if hosts:
            webhooks = WebhookDispatcher(
                uw, allowed_hosts=hosts, secret=webhook_secret, **(webhook_options or {})
            )
        self.api = Api(
            uw,
            authenticator=Authenticator(tokens, auth),
            webhooks=webhooks,
            max_body=max_body,
            max_wait=max_wait,
            poll_interval=poll_interval,
            tracebacks=tracebacks,
            metrics_token=metrics_token,
        )
        # As under Starlette (`underway.http.hosts`), for the blueprint's routes.
        self.hosts = HostCheck(allowed_hosts, enforce=self.api.auth.anonymous)
        self.ping_interval = ping_interval
        self.start_workers = start_workers
        self.drain = drain
        self.url_prefix = url_prefix.rstrip("/")
        self.app: Flask | None = None
        bp = Blueprint(name, __name__, url_prefix=self.url_prefix or None)
        for rule in ("/v1", "/v1/", "/v1/<path:rest>", "/healthz", "/metrics"):
            bp.add_url_rule(rule, view_func=self._endpoint, methods=_ALL_METHODS)
        bp.add_url_rule("/status/<job_id>", "view_status", self._view_status, methods=["GET"])
        # The <underway-job> element's script, at the same path as under Starlette.
        bp.add_url_rule(STATIC_PREFIX + "/<name>", "asset", _asset, methods=["GET"])
        bp.before_request(self._check_host)
        bp.after_request(_nosniff)
        # A path no rule can match (one with a newline in it) is werkzeug's HTML 404;
        # under the API's own paths it is a problem like every other error.
        bp.app_errorhandler(NotFound)(self._not_found)
        if dashboard and self.url_prefix:
            bp.add_url_rule("/", "dashboard", self._dashboard, methods=["GET"])
        self.blueprint = bp
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        app.register_blueprint(self.blueprint)
        app.extensions["underway"] = self
        self.app = app
        if self.start_workers:
            _stop_at_exit(self.uw, self.uw.start(), self.drain)
        webhooks = self.api.webhooks
        if webhooks is not None:
            # Deliveries a previous process left unfinished; in the background, so that
            # a large store does not hold up the app's start.
            threading.Thread(target=webhooks.resume, name="underway-webhooks-resume").start()

    # -- the API ---------------------------------------------------------------------
    def _not_found(self, error: NotFound) -> Response | NotFound:
        path = request.path[len(self.url_prefix) :] if self.url_prefix else request.path
        if not request.path.startswith(self.url_prefix) or not path.startswith(
            ("/v1/", "/healthz", "/metrics")
        ):
            return error  # the host application's own 404
        return _nosniff(_to_flask(problem_response(not_found_route(path), path)))

    def _check_host(self) -> Response | None:
        host = request.headers.get("Host")
        if self.hosts.allows(host):
            return None
        return _to_flask(problem_response(misdirected(host or ""), request.path))

    def _principal(self) -> str | None:
        hook = self.api.auth.hook
        if hook is None:
            return self.api.authenticate(request.headers.get("Authorization"))
        value = hook(request)
        return None if value is None else str(value)

    def _read_body(self) -> bytes:
        limit = self.api.max_body
        if request.content_length is not None and request.content_length > limit:
            raise payload_too_large(limit)
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            raise payload_too_large(limit)
        return body

    def _endpoint(self, rest: str = "") -> Response:
        root = request.script_root + self.url_prefix
        path = request.path[len(self.url_prefix) :] if self.url_prefix else request.path
        try:
            route, params = self.api.match(request.method, path)
            principal = self._principal()
            body = self._read_body() if request.method in ("POST", "PUT", "PATCH") else b""
        except Problem as problem:
            self.api.count("unmatched", problem.status)
            return _to_flask(problem_response(problem, path))
        api_request = ApiRequest(
            method=request.method,
            path=path,
            query=request.args.to_dict(flat=True),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            principal=principal,
            root=root,
        )
        outcome = self.api.dispatch(route, params, api_request)
        if isinstance(outcome, EventStream):
            stream = iter_events(self.api, outcome, ping_interval=self.ping_interval)
            response = Response(stream, mimetype=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
            response.direct_passthrough = True  # send each chunk as it comes
            return response
        if not isinstance(outcome, ApiResponse):
            outcome = self.api.wait_blocking(outcome)
        return _to_flask(outcome)

    def _dashboard(self) -> Response:
        root = request.script_root + self.url_prefix
        return Response(
            render_index(root),
            mimetype="text/html",
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
        )

    # -- background views ------------------------------------------------------------
    def background_view(
        self, *, keep_for: str | float = "1h", timeout: str | float | None = None
    ) -> Callable[[F], F]:
        """Turn a slow view into a job: 202 + `Location` now, its response later.

        Put it below `@app.route`. Finished responses are kept for `keep_for`.
        """

        def decorate(view: F) -> F:
            task_name = f"{_VIEW_TASK_PREFIX}{view.__module__}.{view.__qualname__}"

            def run_view(job: Job) -> dict[str, Any]:
                # The request copy lives in the job's meta, not its params, so that the
                # API never shows its cookies and Authorization header to anyone.
                record = self.uw.get(job.id)
                saved = record.meta["request"]
                return self._run_view(view, job, record.owner, saved["environ"], saved["body"])

            task = self.uw.task(name=task_name, keep_for=keep_for, timeout=timeout)(run_view)

            @functools.wraps(view)
            def start(*args: Any, **kwargs: Any) -> Response:
                body = request.get_data(cache=True)
                # Only plain strings survive the trip through the store; the input
                # stream is rebuilt from the body when the view runs. Credentials stay
                # out of the store: the job knows its principal as its owner.
                environ = {
                    k: v
                    for k, v in request.environ.items()
                    if isinstance(v, str) and k not in _CREDENTIALS
                }
                record = self.uw.enqueue(
                    task,
                    {},
                    owner=self._view_owner(),
                    meta={"request": {"environ": environ, "body": body.decode("latin-1")}},
                )
                location = url_for(f"{self.blueprint.name}.view_status", job_id=record.id)
                payload = {"job_id": record.id, "state": record.state.value, "status_url": location}
                return Response(
                    dumps(payload),
                    status=202,
                    mimetype="application/json",
                    headers={"Location": location, "Retry-After": str(self.api.retry_after)},
                )

            return start  # type: ignore[return-value]

        return decorate

    def _view_owner(self) -> str | None:
        """The API principal of the request, when the API has auth, so that its job is
        listed for that principal only."""
        try:
            return self._principal()
        except Problem:
            return None

    def _run_view(
        self,
        view: Callable[..., Any],
        job: Job,
        principal: str | None,
        environ: dict[str, Any],
        body: str,
    ) -> dict[str, Any]:
        app = self.app
        if app is None:
            raise RuntimeError("UnderwayFlask.init_app(app) was not called")
        env: dict[str, Any] = dict(environ)
        env["wsgi.input"] = io.BytesIO(body.encode("latin-1"))
        env["wsgi.errors"] = sys.stderr
        env.setdefault("wsgi.url_scheme", "http")
        with app.request_context(env):
            g.underway_job = job
            g.underway_principal = principal
            try:
                if request.routing_exception is not None:
                    raise request.routing_exception
                response = app.make_response(view(**(request.view_args or {})))
            except HTTPException as exc:
                response = app.make_response(app.handle_user_exception(exc))
            return _serialise(response)

    def _view_status(self, job_id: str) -> Response:
        try:
            # The API's rules: a token when tokens are configured, and only the
            # owner's jobs (another owner's is 404, as if it did not exist).
            principal = self._principal()
            if principal is None and not self.api.auth.anonymous:
                raise unauthorized()
            record = self.uw.get(job_id, owner=principal)
            if not record.task.startswith(_VIEW_TASK_PREFIX):
                raise JobNotFound(job_id)
        except Exception as exc:
            return _to_flask(problem_response(Problem.from_exception(exc), request.path))
        if record.state not in TERMINAL:
            payload = {"job_id": record.id, "state": record.state.value,
                       "progress": record.progress.to_dict()}  # fmt: skip
            return Response(
                dumps(payload),
                status=202,
                mimetype="application/json",
                headers={"Location": request.path, "Retry-After": str(self.api.retry_after)},
            )
        if record.state is State.SUCCEEDED and isinstance(record.result, dict):
            return _deserialise(record.result)
        code, status = (
            ("job-cancelled", 409) if record.state is State.CANCELLED else ("job-failed", 500)
        )
        detail = f"the view's job {record.state.value}"
        if record.error is not None and record.state is State.FAILED:
            detail += f": {record.error.type}: {record.error.message}"
        return _to_flask(problem_response(Problem(status, code, detail), request.path))


def _nosniff(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def _stop_at_exit(uw: Underway, worker: Worker, drain: float) -> None:
    """Stop the embedded workers when the process ends, as `underway serve` does.

    The hook runs before the interpreter joins its non-daemon threads (the job
    threads among them), so running jobs get `drain` seconds and the rest go back to
    the queue instead of being found lost later. SIGTERM, whose default ends the
    process without any clean-up, becomes an interrupt when nobody else handles it
    (`flask run`); gunicorn handles it itself and then exits normally.
    """

    def stop() -> None:
        running = len(worker.running_ids)
        if running:
            log.warning(
                "underway: stopping; running jobs (%d) get %gs to finish, then go back "
                "to the queue while attempts remain, else they fail with Shutdown",
                running,
                drain,
            )
        uw.stop(drain=drain)

    # threading's own exit hooks run before its threads are joined (concurrent.futures
    # uses the same); atexit's run after, too late for the job threads.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(stop)
    else:
        atexit.register(stop)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _asset(name: str) -> Response:
    path = static_file(name)
    if path is None:
        return _to_flask(problem_response(no_such_file(name), request.path))
    response = send_file(path, mimetype=MEDIA_TYPES[path.suffix], max_age=0)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _serialise(response: Response) -> dict[str, Any]:
    data = response.get_data()
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    headers = [[k, v] for k, v in response.headers.items() if k.lower() != "content-length"]
    return {"status": response.status_code, "headers": headers, "body": text, "encoding": encoding}


def _deserialise(result: dict[str, Any]) -> Response:
    body = result.get("body", "")
    data = base64.b64decode(body) if result.get("encoding") == "base64" else body.encode("utf-8")
    response = Response(data, status=int(result.get("status", 200)))
    response.headers.clear()
    for name, value in result.get("headers", []):
        response.headers.add(name, value)
    return response


def _to_flask(response: ApiResponse) -> Response:
    out = Response(
        response.body if response.status != 204 else b"",
        status=response.status,
        headers=response.headers,
    )
    if response.media_type is not None and response.status != 204:
        out.headers["Content-Type"] = response.media_type
    else:
        out.headers.pop("Content-Type", None)
    return out


__all__ = ["UnderwayFlask"]
