"""The HTTP API and the dashboard as Django views (`underway.django.urls`).

A thin adapter over `underway.http.handlers`, like the Flask one: it reads the
request (under the body limit), decides who is asking, and sends back what the
handlers answer. The views are synchronous, so a long poll (`?wait=`, `Prefer:
wait=`) holds the request's thread, under ASGI too, for at most `MAX_WAIT` seconds.
Event streams are a blocking iterator under WSGI and an asynchronous one under ASGI,
which holds no thread while the job is quiet.

Who is asking:

- a logged-in user (`request.user`) owns the jobs it submits, as the principal
  `str(user.pk)`, and sees only those (another user's job is a 404);
- staff users (`is_staff`) see and may cancel every job; their own submissions are
  still theirs;
- visitors who are not logged in get 401, unless `ALLOW_ANONYMOUS`: then they share
  the principal `"anonymous"` (they see each other's jobs, never a user's).

CSRF: requests of a logged-in user (a cookie session) that change state must carry
Django's CSRF token (`X-CSRFToken`, as the dashboard and `<underway-job>` send it),
checked by Django's own `CsrfViewMiddleware` logic; a refusal is a 403 problem.
Anonymous callers have no session to abuse; the API's own cross-site check (Origin,
Sec-Fetch-Site) still applies to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.core.handlers.asgi import ASGIRequest
from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.views.decorators.csrf import csrf_exempt, ensure_csrf_cookie

from ..dashboard.assets import MEDIA_TYPES, SECURITY_HEADERS, render_index, static_file
from ..http.body import read_limited
from ..http.handlers import ApiResponse, EventStream, Pending, problem_response
from ..http.problems import Problem, no_such_file
from ..http.sse import HEADERS as SSE_HEADERS
from ..http.sse import MEDIA_TYPE as SSE_MEDIA_TYPE
from ..http.sse import aiter_events, iter_events
from .api import DjangoApiRequest

if TYPE_CHECKING:
    from .apps import UnderwayConfig

ANONYMOUS = "anonymous"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _config() -> UnderwayConfig:
    config: UnderwayConfig = apps.get_app_config("underway")  # type: ignore[assignment]
    return config


def _user(request: HttpRequest) -> Any:
    """The logged-in user, or None (also when the auth middleware is not installed)."""
    user = getattr(request, "user", None)
    return user if user is not None and user.is_authenticated else None


def job_owner(request: HttpRequest) -> str | None:
    """The principal that owns the jobs `request` submits: the logged-in user's pk,
    `"anonymous"` when the settings allow visitors, else None (401).

    Pass it on when a view of yours submits a job: `report.submit(owner=job_owner(request))`.
    """
    user = _user(request)
    if user is not None:
        return str(user.pk)
    return ANONYMOUS if _config().underway_settings.allow_anonymous else None


class _CsrfCheck(CsrfViewMiddleware):
    """Django's own CSRF check, answering the reason of a refusal instead of a page."""

    def _reject(self, request: HttpRequest, reason: str) -> Any:
        return reason


def _check_csrf(request: HttpRequest) -> None:
    check = _CsrfCheck(lambda request: HttpResponse())
    check.process_request(request)  # reads the CSRF cookie into request.META
    reason = check.process_view(request, lambda request: HttpResponse(), (), {})
    if reason:
        raise Problem(403, "csrf-failed", f"CSRF check failed: {reason}")


@csrf_exempt  # checked in the view, for session users only, and answered as a problem
def api(request: HttpRequest, rest: str) -> HttpResponseBase:
    """Every API route (`v1/...`, `healthz`, `metrics`) under wherever it is included."""
    config = _config()
    api = config.api
    path = "/" + rest
    root = request.path[: len(request.path) - len(path)]
    method = request.method or "GET"
    try:
        route, params = api.match(method, path)
        user = _user(request)
        principal = job_owner(request)
        if user is not None and method in _UNSAFE_METHODS:
            _check_csrf(request)
        body = b""
        if method in _UNSAFE_METHODS:
            body = read_limited(request.read, request.META.get("CONTENT_LENGTH"), api.max_body)
    except Problem as problem:
        api.count("unmatched", problem.status)
        return _to_django(problem_response(problem, path))
    api_request = DjangoApiRequest(
        method=method,
        path=path,
        query=request.GET.dict(),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        principal=principal,
        root=root,
        # Staff read and cancel anyone's jobs; what they submit is still their own.
        sees_all=bool(user is not None and user.is_staff and route.name != "submit_job"),
    )
    outcome = api.dispatch(route, params, api_request)
    if isinstance(outcome, EventStream):
        return _stream(config, request, outcome)
    if isinstance(outcome, Pending):
        outcome = api.wait_blocking(outcome)
    return _to_django(outcome)


def _stream(config: UnderwayConfig, request: HttpRequest, events: EventStream) -> HttpResponseBase:
    ping = config.underway_settings.ping_interval
    content: Any
    if isinstance(request, ASGIRequest):
        # Django streams an asynchronous iterator on its event loop (a blocking one
        # would be read to its end first, so the client would see nothing until done).
        content = aiter_events(config.api, events, ping_interval=ping, run_sync=_in_thread)
    else:
        content = iter_events(config.api, events, ping_interval=ping)
    response = StreamingHttpResponse(content, content_type=SSE_MEDIA_TYPE)
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a store read off the event loop (not on the request's own thread, which a
    streaming response has given back)."""
    return await sync_to_async(fn, thread_sensitive=False)(*args)


@ensure_csrf_cookie
def dashboard(request: HttpRequest) -> HttpResponseBase:
    """The dashboard page; visitors who may not use the API are sent to log in."""
    if job_owner(request) is None:
        from django.contrib.auth.views import redirect_to_login

        return redirect_to_login(request.get_full_path())
    root = request.path.rstrip("/")
    page = render_index(root, csrf_token=get_token(request))
    response = HttpResponse(page, content_type=MEDIA_TYPES[".html"])
    for name, value in {**SECURITY_HEADERS, "Cache-Control": "no-cache"}.items():
        response[name] = value
    return response


def asset(request: HttpRequest, name: str) -> HttpResponseBase:
    """The dashboard's files and the `<underway-job>` element's script (public)."""
    path = static_file(name)
    if path is None:
        missing = _to_django(problem_response(no_such_file(name), request.path))
        missing["X-Content-Type-Options"] = "nosniff"
        return missing
    response = FileResponse(path.open("rb"), content_type=MEDIA_TYPES[path.suffix])
    # Revalidated on every load, so an upgrade never leaves a browser on an old script.
    response["Cache-Control"] = "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _to_django(response: ApiResponse) -> HttpResponse:
    out = HttpResponse(b"" if response.status == 204 else response.body, status=response.status)
    if response.status == 204 or response.media_type is None:
        del out["Content-Type"]
    else:
        out["Content-Type"] = response.media_type
    for name, value in response.headers.items():
        out[name] = value
    return out


__all__ = ["ANONYMOUS", "api", "asset", "dashboard", "job_owner"]
