"""RFC 9457 problem details: every error the API answers, with a stable `code`.

Engine exceptions map to problems by their `code`; anything unexpected becomes a
bare 500 `internal-error` whose detail never carries a traceback or a message that
might leak paths or secrets (the exception is logged on the server instead).
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import (
    JobFailed,
    JobNotFound,
    JobStateError,
    StoreUnavailable,
    TaskNotFound,
    UnderwayError,
    ValidationError,
)

log = logging.getLogger("underway.http")

PROBLEM_TYPE = "urn:underway:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"

TITLES: dict[str, str] = {
    "task-not-found": "Task not found",
    "job-not-found": "Job not found",
    "validation-failed": "Validation failed",
    "idempotency-conflict": "Idempotency key reused with other parameters",
    "job-finished": "Job already finished",
    "job-active": "Job still active",
    "job-state": "Operation does not fit the job's state",
    "job-failed": "Job failed",
    "job-cancelled": "Job cancelled",
    "output-not-text": "Output is not text",
    "payload-too-large": "Payload too large",
    "malformed-json": "Malformed JSON",
    "nested-too-deeply": "Request body nested too deeply",
    "misdirected-request": "Misdirected request",
    "unauthorized": "Unauthorized",
    "cross-site-request": "Cross-site request refused",
    "queue-full": "Queue full",
    "store-unavailable": "Store unavailable",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "internal-error": "Internal server error",
}

# Status per engine error code; codes not listed are server-side faults (500).
STATUS: dict[str, int] = {
    "task-not-found": 404,
    "job-not-found": 404,
    "validation-failed": 422,
    "idempotency-conflict": 422,
    "job-finished": 409,
    "job-active": 409,
    "job-state": 409,
    "job-failed": 409,
    "job-cancelled": 409,
    "queue-full": 503,
    "store-unavailable": 503,
}


class Problem(Exception):
    """An error answer: raise it from a handler, or build one from an exception."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.code,
            "title": TITLES.get(self.code, self.code.replace("-", " ").capitalize()),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance is not None:
            body["instance"] = instance
        body.update(self.extra)
        return body

    @classmethod
    def from_exception(cls, exc: BaseException, *, owner_visible: bool = True) -> Problem:
        """The problem a client sees for `exc`; `owner_visible` keeps `owner` in job copies."""
        if isinstance(exc, Problem):
            return exc
        if not isinstance(exc, UnderwayError):
            log.error("unexpected error in the HTTP API", exc_info=exc)
            return cls(500, "internal-error", "the server could not complete the request")
        code = exc.code
        status = STATUS.get(code)
        if status is None:
            log.error("server-side error in the HTTP API", exc_info=exc)
            return cls(500, "internal-error", "the server could not complete the request")
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if isinstance(exc, ValidationError):
            extra["errors"] = [_field_error(e) for e in exc.errors]
        if isinstance(exc, TaskNotFound):
            extra["task"] = exc.name
            extra["known_tasks"] = exc.known
        if isinstance(exc, JobNotFound):
            extra["job_id"] = exc.job_id
            if exc.lost_at is not None:
                extra["store_lost_data_at"] = exc.lost_at
        if isinstance(exc, (JobStateError, JobFailed)) and exc.record is not None:
            job = exc.record.to_dict(include_owner=owner_visible)
            if job["error"] is not None:
                job["error"] = {**job["error"], "traceback": None}
            extra["job"] = job
        if isinstance(exc, StoreUnavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        elif status == 503:
            headers["Retry-After"] = "5"
        return cls(status, code, str(exc), headers=headers, **extra)


def _field_error(entry: dict[str, Any]) -> dict[str, Any]:
    """One `errors[]` member: always `field`, `message` and `type` keys."""
    return {
        "field": entry.get("field"),
        "message": str(entry.get("message", "")),
        "type": entry.get("type"),
    }


def not_found_route(path: str) -> Problem:
    return Problem(404, "not-found", f"no route for {path}")


def no_such_file(name: str) -> Problem:
    """A dashboard asset that is not there (or a name that may not be served)."""
    return Problem(404, "not-found", f"no such file: {name[:100]!r}")


def method_not_allowed(method: str, allowed: list[str]) -> Problem:
    return Problem(
        405,
        "method-not-allowed",
        f"{method} is not allowed here (allowed: {', '.join(allowed)})",
        headers={"Allow": ", ".join(allowed)},
    )


def payload_too_large(limit: int) -> Problem:
    return Problem(413, "payload-too-large", f"the request body is over the limit of {limit} bytes")


def malformed_json(reason: str) -> Problem:
    return Problem(400, "malformed-json", f"the request body is not valid JSON: {reason}")


def unauthorized(detail: str = "a valid bearer token is required") -> Problem:
    return Problem(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="underway"'}
    )


def invalid_query(field: str, message: str) -> Problem:
    """A bad query parameter or header: 422 `validation-failed`, one entry for it."""
    return Problem(
        422,
        "validation-failed",
        f"{field}: {message}",
        errors=[{"field": field, "message": message, "type": "value_error"}],
    )


def non_finite_number(text: str) -> Problem:
    """NaN, Infinity or a number beyond a float's range in a JSON body."""
    message = f"numbers must be finite ({text[:40]} is not)"
    return Problem(
        422,
        "validation-failed",
        f"body: {message}",
        errors=[{"field": None, "message": message, "type": "finite_number"}],
    )


def nested_too_deeply(limit: int) -> Problem:
    return Problem(
        400,
        "nested-too-deeply",
        f"arrays and objects in the request body may nest at most {limit} levels deep",
    )


def misdirected(host: str) -> Problem:
    """A `Host` this server does not answer for (DNS rebinding, or a wrong name)."""
    return Problem(
        421,
        "misdirected-request",
        f"this server does not answer for host {host[:100]!r}; the operator may allow "
        "it (--allowed-host, allowed_hosts=)",
    )
