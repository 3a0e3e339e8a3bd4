"""The HTTP API without a web framework: requests in, responses (or problems) out.

Adapters (`starlette.py`, `flask.py`) turn their framework's request into an
`ApiRequest`, call `Api.handle`, and send back what comes out:

- an `ApiResponse` (status, headers, bytes);
- a `Pending` when the caller asked to wait (`Prefer: wait=N`, `?wait=N`): the adapter
  waits for the job the way its framework waits best, then calls `Pending.respond()`;
- an `EventStream` for `GET /v1/jobs/{id}/events`, which the adapter streams with
  `underway.http.sse`.

Handlers are synchronous, like the engine. Every error leaves as a `Problem`.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import pydantic

from .._util import dumps, rfc3339
from ..errors import ValidationError
from ..records import TERMINAL, JobRecord, State
from ..tasks import Task, field_errors
from .auth import Authenticator
from .output_text import output_text
from .problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    invalid_query,
    malformed_json,
    method_not_allowed,
    nested_too_deeply,
    non_finite_number,
    not_found_route,
    unauthorized,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..app import Underway
    from .sse import Watched
    from .webhooks import WebhookDispatcher

JSON_MEDIA_TYPE = "application/json"
MAX_WAIT = 30.0  # seconds a caller may hold a request open with Prefer: wait / ?wait
MAX_PAGE = 500
RECORD_CACHE_SIZE = 10_000
MAX_DEPTH = 64  # how deeply arrays and objects may nest in a request body
MAX_INT64 = (1 << 63) - 1  # the largest integer a query parameter or event id may be
OUTPUT_VIEWS = ("items", "text")  # `GET .../output?as=`: a page of items, or one text
# A cursor is the id of the last job of the previous page (a ULID); empty: the first.
CURSOR_PATTERN = r"^(?:|[0-9A-HJKMNP-TV-Z]{26})$"
_CURSOR = re.compile(CURSOR_PATTERN)

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class ApiRequest:
    """One request, as the handlers see it. Header names are lower case."""

    method: str
    path: str  # inside the API: "/v1/jobs/...", "/healthz"
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    principal: str | None = None
    root: str = ""  # where the API is mounted ("/jobs"), for Location headers


@dataclass(kw_only=True)
class ApiResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = JSON_MEDIA_TYPE


@dataclass(frozen=True, kw_only=True)
class Pending:
    """Hold the answer until the job changes (`change`) or finishes (`finished`), or
    `timeout` seconds pass; then send `respond()`. `seen` is the job's notifier
    version when the handler looked, so no change in between is missed."""

    job_id: str
    timeout: float
    until: Literal["change", "finished"]
    seen: int
    respond: Callable[[], ApiResponse]


@dataclass(frozen=True, kw_only=True)
class EventStream:
    """Stream the job's events with `seq > after` as Server-Sent Events."""

    job_id: str
    after: int


Outcome = ApiResponse | Pending | EventStream
Handler = Callable[["Api", ApiRequest, dict[str, str]], Outcome]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    name: str  # also the OpenAPI operationId and the metrics label
    handler: Handler
    public: bool = False  # answered without authentication
    quick: bool = False  # one short store read: fine to run on an event loop's thread


def json_response(status: int, data: Any, headers: dict[str, str] | None = None) -> ApiResponse:
    return ApiResponse(status=status, body=dumps(data).encode(), headers=headers or {})


def problem_response(problem: Problem, instance: str | None = None) -> ApiResponse:
    return ApiResponse(
        status=problem.status,
        body=dumps(problem.to_dict(instance)).encode(),
        headers=dict(problem.headers),
        media_type=PROBLEM_MEDIA_TYPE,
    )


class Api:
    """The framework-neutral API over one `Underway` app."""

    def __init__(
        self,
        uw: Underway,
        *,
        authenticator: Authenticator | None = None,
        webhooks: WebhookDispatcher | None = None,
        max_body: int = 1 << 20,
        max_wait: float = MAX_WAIT,
        retry_after: int = 1,
        poll_interval: float = 1.0,
        tracebacks: bool = False,
        metrics_token: str | None = None,
    ) -> None:
        self.uw = uw
        # `/metrics` shows every owner's counts: with this token, it takes only this
        # one (a scraper's); without, the API's own auth.
        self.metrics_auth = Authenticator({metrics_token: "metrics"}) if metrics_token else None
        # A failed task's traceback names files and code lines of the server; clients
        # get it only where the operator says so (a developer's own machine).
        self.tracebacks = tracebacks
        self.auth = authenticator or Authenticator({})
        self.webhooks = webhooks
        self.max_body = max_body
        self.max_wait = max_wait
        self.retry_after = retry_after
        # How often a waiter re-reads the store even without a wake-up, for stores
        # whose changes made by other processes do not reach this process's notifier.
        self.poll_interval = poll_interval
        self.started = time.time()
        self._counts: Counter[tuple[str, int]] = Counter()
        self._counts_lock = threading.Lock()
        self.sse_connections = 0  # open event streams, for /metrics
        self._metrics: CollectorRegistry | None = None
        self.sse_watched: dict[str, Watched] = {}  # per job: its streams' shared reads
        # Records of running and finished jobs, each with the notifier version it was
        # read at: a poll finds the job unchanged while the version is the same. Only
        # for stores whose every change (from any process) reaches the notifier.
        self.cache_records = False
        self._records: OrderedDict[str, tuple[int, JobRecord]] = OrderedDict()
        self._bodies: dict[str, tuple[JobRecord, bytes]] = {}  # the JSON of cached records

    # -- dispatch --------------------------------------------------------------------
    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for `method path`; a 404 or 405 problem when there is none."""
        allowed: list[str] = []
        for route in ROUTES:
            m = route.pattern.fullmatch(path)
            if m is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, m.groupdict()
            allowed.append(route.method)
        if allowed:
            raise method_not_allowed(method, sorted(set(allowed)))
        raise not_found_route(path)

    def authenticate(self, authorization: str | None) -> str | None:
        """The principal for an `Authorization` header (None when absent or unknown)."""
        return self.auth.from_header(authorization)

    def handle(self, request: ApiRequest) -> Outcome:
        """Route and run one request; problems become problem+json responses."""
        try:
            route, params = self.match(request.method, request.path)
        except Problem as problem:
            self.count("unmatched", problem.status)
            return problem_response(problem, request.path)
        return self.dispatch(route, params, request)

    def dispatch(self, route: Route, params: dict[str, str], request: ApiRequest) -> Outcome:
        """Run a matched route (adapters that matched already call this directly)."""
        try:
            if route.name == "metrics" and self.metrics_auth is not None:
                if self.metrics_auth.from_header(request.headers.get("authorization")) is None:
                    raise unauthorized("the metrics token is required")
            elif not route.public and request.principal is None and not self.auth.anonymous:
                raise unauthorized()
            if is_cross_site(request):
                raise Problem(
                    403,
                    "cross-site-request",
                    "state-changing requests must come from the same site",
                )
            outcome = route.handler(self, request, params)
        except Exception as exc:
            problem = Problem.from_exception(exc)
            self.count(route.name, problem.status)
            return problem_response(problem, request.path)
        if isinstance(outcome, Pending):
            # Counted once answered: its status depends on how the wait ends.
            respond = outcome.respond

            def counted() -> ApiResponse:
                response = respond()
                self.count(route.name, response.status)
                return response

            return replace(outcome, respond=counted)
        self.count(route.name, outcome.status if isinstance(outcome, ApiResponse) else 200)
        return outcome

    def count(self, route: str, status: int) -> None:
        with self._counts_lock:
            self._counts[(route, status)] += 1

    def streams(self, delta: int) -> None:
        """Count an event stream opening (+1) or closing (-1), for /metrics."""
        with self._counts_lock:
            self.sse_connections += delta

    def counts(self) -> dict[tuple[str, int], int]:
        with self._counts_lock:
            return dict(self._counts)

    # -- helpers ---------------------------------------------------------------------
    def job_url(self, request: ApiRequest, job_id: str, suffix: str = "") -> str:
        return f"{request.root}/v1/jobs/{job_id}{suffix}"

    def job_dict(self, record: JobRecord) -> dict[str, Any]:
        data = record.to_dict(include_owner=True)
        if data["error"] is not None and not self.tracebacks:
            data["error"] = {**data["error"], "traceback": None}
        if self.webhooks is not None:
            # This process's own view of a delivery is the freshest there is.
            delivery = self.webhooks.status(record.id)
            if delivery is not None:
                data["webhook"] = delivery
        return data

    def job_body(self, record: JobRecord) -> bytes:
        """The job's JSON; reused while the cached record is the same object."""
        if self.cache_records:
            known = self._bodies.get(record.id)
            if known is not None and known[0] is record:
                return known[1]
        body = dumps(self.job_dict(record)).encode()
        # A webhook's delivery state changes without the record changing: not kept.
        if self.cache_records and (self.webhooks is None or "callback_url" not in record.meta):
            cached = self._records.get(record.id)
            if cached is not None and cached[1] is record:
                self._bodies[record.id] = (record, body)
        return body

    def job_response(
        self, request: ApiRequest, record: JobRecord, status: int = 200, **headers: str
    ) -> ApiResponse:
        out = {k.replace("_", "-"): v for k, v in headers.items()}
        if record.state not in TERMINAL:
            out["Retry-After"] = str(self.retry_after)
        return ApiResponse(status=status, body=self.job_body(record), headers=out)

    def owner(self, request: ApiRequest) -> str | None:
        return request.principal

    def wait_seconds(self, raw: str | None, what: str) -> float:
        if raw is None or raw == "":
            return 0.0
        try:
            value = float(raw)
        except ValueError:
            raise invalid_query(what, "must be a number of seconds") from None
        if not math.isfinite(value):
            raise invalid_query(what, "must be a finite number")
        if value < 0:
            raise invalid_query(what, "must not be negative")
        return min(value, self.max_wait)

    def is_settled(self, pending: Pending) -> bool:
        """True once what `pending` waits for has happened (or the job is gone)."""
        if pending.until == "change":
            return self.uw.feed.version(pending.job_id) != pending.seen
        record = self.uw.find(pending.job_id)
        return record is None or record.state in TERMINAL

    def wait_blocking(self, pending: Pending) -> ApiResponse:
        """Wait for `pending` on this thread (for WSGI adapters), then answer."""
        notifier = self.uw.feed
        deadline = time.monotonic() + pending.timeout
        while True:
            seen = notifier.version(pending.job_id)
            left = deadline - time.monotonic()
            if left <= 0 or self.is_settled(pending):
                break
            notifier.wait(pending.job_id, seen, min(left, self.poll_interval))
        return pending.respond()

    # -- route handlers --------------------------------------------------------------
    def list_tasks(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        return json_response(200, {"tasks": [t.describe() for t in self.uw.tasks.values()]})

    def submit(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        task = self.uw.get_task(params["task"])
        body = parse_json_body(request.body)
        check_strictly(task, request.body)
        wait = self.wait_seconds(_prefer_wait(request.headers.get("prefer")), "header.Prefer")
        meta: dict[str, Any] = {}
        # Empty means "none", as for `supersede`: the document allows the empty string.
        callback_url = request.query.get("callback_url") or None
        if callback_url is not None:
            if self.webhooks is None:
                raise invalid_query(
                    "query.callback_url", "this server does not send webhooks (no allowed hosts)"
                )
            meta["callback_url"] = self.webhooks.check_url(callback_url)
        supersede = request.query.get("supersede") or None
        record = self.uw.enqueue(
            task,
            body,
            idempotency_key=request.headers.get("idempotency-key") or None,
            supersede=supersede,
            owner=self.owner(request),
            meta=meta,
        )
        if callback_url is not None and self.webhooks is not None:
            self.webhooks.watch(record.id, meta["callback_url"])
        location = self.job_url(request, record.id)
        if wait <= 0:
            return self.job_response(request, record, 202, Location=location)
        applied = f"wait={wait:g}"
        if record.state in TERMINAL:  # an idempotent resubmission of a finished job
            return self.job_response(
                request, record, 200, Location=location, Preference_Applied=applied
            )

        def respond() -> ApiResponse:
            # 200 when the job finished within the wait: the answer is complete.
            final = self.uw.find(record.id) or record
            status = 200 if final.state in TERMINAL else 202
            return self.job_response(
                request, final, status, Location=location, Preference_Applied=applied
            )

        return Pending(
            job_id=record.id,
            timeout=wait,
            until="finished",
            seen=self.uw.feed.version(record.id),
            respond=respond,
        )

    def list_jobs(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        q = request.query
        state = q.get("state") or None
        if state is not None and state not in State.__members__.values():
            raise invalid_query(
                "query.state", f"must be one of {', '.join(s.value for s in State)}"
            )
        limit = _int_query(q, "limit", 50, 1, MAX_PAGE)
        cursor = q.get("cursor") or None
        if cursor is not None and not _CURSOR.fullmatch(cursor):
            raise invalid_query("query.cursor", "must be the next_cursor of a previous page")
        page = self.uw.list_jobs(
            task=q.get("task") or None,
            state=state,
            owner=self.owner(request),
            limit=limit,
            cursor=cursor,
        )
        return json_response(
            200,
            {"jobs": [self.job_dict(r) for r in page.jobs], "next_cursor": page.next_cursor},
        )

    def cached(self, job_id: str) -> bool:
        """Would `read_job` answer from the record cache, with no store read?"""
        if not self.cache_records:
            return False
        cached = self._records.get(job_id)
        return cached is not None and cached[0] == self.uw.feed.version(job_id)

    def read_job(self, job_id: str, owner: str | None) -> tuple[int, JobRecord]:
        """(notifier version, record); served from the record cache when unchanged."""
        version = self.uw.feed.version(job_id)
        cached = self._records.get(job_id) if self.cache_records else None
        record: JobRecord | None
        if cached is not None and cached[0] == version:
            record = cached[1]
        else:
            record = self.uw.find(job_id)
            # Queued records are not kept: their `position` moves without a wake-up.
            if self.cache_records and record is not None and record.state is not State.QUEUED:
                self._records[job_id] = (version, record)
                if len(self._records) > RECORD_CACHE_SIZE:
                    gone, _ = self._records.popitem(last=False)
                    self._bodies.pop(gone, None)
        if record is None or (owner is not None and record.owner != owner):
            raise self.uw.not_found(job_id)
        if record.state is State.QUEUED:
            record = record.evolve(waiting=self.uw.why_waiting(record))
        return version, record

    def get_job(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        job_id = params["id"]
        wait = self.wait_seconds(request.query.get("wait"), "query.wait")
        seen, record = self.read_job(job_id, self.owner(request))
        if wait <= 0 or record.state in TERMINAL:
            return self.job_response(request, record)

        def respond() -> ApiResponse:
            return self.job_response(request, self.uw.get(job_id, owner=self.owner(request)))

        return Pending(job_id=job_id, timeout=wait, until="change", seen=seen, respond=respond)

    def get_result(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        record = self.uw.get(params["id"], owner=self.owner(request))
        if record.state is State.SUCCEEDED:
            return json_response(200, record.result)
        if record.state in TERMINAL:
            code = "job-failed" if record.state is State.FAILED else "job-cancelled"
            error = record.error
            detail = f"job {record.id} {record.state.value}"
            if error is not None:
                detail += f": {error.type}: {error.message}"
            raise Problem(409, code, detail, job=self.job_dict(record))
        return self.job_response(
            request, record, 202, Location=self.job_url(request, record.id, "/result")
        )

    def get_output(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        view = request.query.get("as") or "items"
        if view not in OUTPUT_VIEWS:
            raise invalid_query("query.as", f"must be one of {', '.join(OUTPUT_VIEWS)}")
        after = _int_query(request.query, "after", 0, 0, None)
        limit = _int_query(request.query, "limit", 1000, 1, 1000)
        wanted = request.query.get("attempt")
        attempt = None if not wanted else _int_query(request.query, "attempt", 1, 1, None)
        owner = self.owner(request)
        record = self.uw.get(params["id"], owner=owner)
        if view == "text":  # the whole segment as one text, with where to resume events
            return json_response(200, output_text(self.uw, record.id, attempt))
        attempt = record.attempt if attempt is None else attempt
        items = self.uw.output(record.id, attempt=attempt, after=after, limit=limit, owner=owner)
        return json_response(
            200,
            {"items": items, "after": after, "next": after + len(items), "attempt": attempt},
        )

    def stream_events(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        job_id = params["id"]
        self.uw.get(job_id, owner=self.owner(request))
        after = resume_point(request.headers.get("last-event-id"), request.query.get("after"))
        return EventStream(job_id=job_id, after=after)

    def cancel(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        record = self.uw.cancel(params["id"], owner=self.owner(request))
        return self.job_response(request, record, 202)

    def delete(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        self.uw.delete(params["id"], owner=self.owner(request))
        return ApiResponse(status=204, media_type=None)

    def openapi(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        from .openapi import build_openapi

        pattern = None if self.webhooks is None else self.webhooks.allow.url_pattern()
        doc = build_openapi(
            self.uw, root=request.root, secured=not self.auth.anonymous, callback_pattern=pattern
        )
        return json_response(200, doc)

    def healthz(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        self.uw.ping()
        lost = self.uw.lost_data_at()
        if lost is not None:
            return json_response(
                200,
                {
                    "status": "degraded",
                    "detail": f"the store lost its data at {rfc3339(lost)}: jobs submitted "
                    "before then are gone",
                    "store_lost_data_at": rfc3339(lost),
                },
            )
        return json_response(200, {"status": "ok"})

    def metrics(self, request: ApiRequest, params: dict[str, str]) -> Outcome:
        from .metrics import MEDIA_TYPE, make_registry, render_metrics

        with self._counts_lock:  # this API's own registry, made on first scrape
            if self._metrics is None:
                self._metrics = make_registry(self)
        return ApiResponse(status=200, body=render_metrics(self._metrics), media_type=MEDIA_TYPE)


def parse_json_body(body: bytes) -> Any:
    """The submitted parameters: an empty body is `{}`; anything not JSON is a 400.

    Stricter than `json.loads`: `NaN`, `Infinity` and numbers too large for a float
    (`1e999`) are 422 `validation-failed` (JSON has no such numbers, and they would be
    stored as null); strings with lone surrogates (`"\\ud800"`) are 400
    `malformed-json` (not Unicode); nesting deeper than `MAX_DEPTH` is 400
    `nested-too-deeply`.
    """
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise malformed_json("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise malformed_json(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise nested_too_deeply(MAX_DEPTH) from None
    except ValueError:  # an integer with more digits than Python converts
        raise malformed_json("a number is too long") from None
    _check_tree(value)
    return value


def _reject_constant(name: str) -> Any:
    raise non_finite_number(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise non_finite_number(text)
    return value


def _check_tree(value: Any) -> None:
    """Depth and Unicode checks, without recursion (the value may be deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_unicode(node)
        elif isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise nested_too_deeply(MAX_DEPTH)
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_unicode(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise malformed_json("a string is not valid Unicode (a lone surrogate)") from None


def check_strictly(task: Task, body: bytes) -> None:
    """Parameters over HTTP are checked as their JSON Schema says: `true` is not a
    number and `"1"` is not an integer (Python callers keep pydantic's lax mode)."""
    try:
        task.model.model_validate_json(body if body.strip() else b"{}", strict=True)
    except pydantic.ValidationError as exc:
        raise ValidationError(
            f"invalid parameters for task {task.name!r}", field_errors(exc)
        ) from None


def resume_point(last_event_id: str | None, after: str | None) -> int:
    """Where an event stream resumes: `Last-Event-ID` (set by a reconnecting client)
    wins over `?after=`, which a browser's EventSource keeps in the URL."""
    found: list[int] = []
    for name, raw in (("header.Last-Event-ID", last_event_id), ("query.after", after)):
        # An EventSource sends the header only with an id to resume from: an empty one
        # is not an event id. An empty `?after=` is no parameter, as elsewhere.
        if raw is None or (name == "query.after" and raw.strip() == ""):
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            raise invalid_query(name, "must be an event id (an integer)") from None
        if value < 0 or value > MAX_INT64:
            raise invalid_query(name, f"must be from 0 to {MAX_INT64}")
        found.append(value)  # both checked, even where one wins
    return found[0] if found else 0


def _prefer_wait(prefer: str | None) -> str | None:
    if not prefer:
        return None
    m = _PREFER_WAIT.search(prefer)
    return m.group(1) if m else None


def _int_query(
    query: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    """An integer query parameter; `high=None` still means at most `MAX_INT64`, which
    every store can hold."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_query(f"query.{name}", "must be an integer") from None
    top = MAX_INT64 if high is None else high
    if value < low or value > top:
        raise invalid_query(f"query.{name}", f"must be from {low} to {top}")
    return value


def _route(
    method: str,
    path: str,
    handler: Handler,
    name: str,
    *,
    public: bool = False,
    quick: bool = False,
) -> Route:
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(method, re.compile(pattern), name, handler, public, quick)


ROUTES: tuple[Route, ...] = (
    _route("GET", "/v1/tasks", Api.list_tasks, "list_tasks"),
    _route("POST", "/v1/tasks/{task}/jobs", Api.submit, "submit_job"),
    _route("GET", "/v1/jobs", Api.list_jobs, "list_jobs"),
    _route("GET", "/v1/jobs/{id}", Api.get_job, "get_job", quick=True),
    _route("DELETE", "/v1/jobs/{id}", Api.delete, "delete_job"),
    _route("GET", "/v1/jobs/{id}/result", Api.get_result, "get_result"),
    _route("GET", "/v1/jobs/{id}/events", Api.stream_events, "stream_events"),
    _route("GET", "/v1/jobs/{id}/output", Api.get_output, "get_output"),
    _route("POST", "/v1/jobs/{id}/cancel", Api.cancel, "cancel_job"),
    _route("GET", "/v1/openapi.json", Api.openapi, "openapi"),
    _route("GET", "/healthz", Api.healthz, "healthz", public=True),
    _route("GET", "/metrics", Api.metrics, "metrics"),
)

__all__ = [
    "ROUTES",
    "Api",
    "ApiRequest",
    "ApiResponse",
    "EventStream",
    "Pending",
    "Route",
    "json_response",
    "problem_response",
]


_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_cross_site(request: ApiRequest) -> bool:
    """A state-changing request a browser sent on behalf of another site's page.

    Requests carrying `Authorization` or `X-Underway` cannot be cross-site: a browser
    adds such headers only after a CORS preflight, which this API never grants. Other
    clients (curl, the CLI) send neither `Sec-Fetch-Site` nor `Origin`.
    """
    headers = request.headers
    if request.method not in _UNSAFE_METHODS or "authorization" in headers:
        return False
    if "x-underway" in headers:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc != headers.get("host")
