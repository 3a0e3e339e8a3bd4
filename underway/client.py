"""`underway.Client`: the HTTP API from Python, with the engine's handle and errors.

    client = Client("http://localhost:8000", token="...")
    job = client.submit("render_audio", text_list=["a", "b"])
    for event in job.events():       # resumes with Last-Event-ID after a disconnect
        ...
    job.wait()                       # result, or JobFailed / JobCancelled / TimeoutError

Problem answers come back as the engine's exceptions, chosen by their `code`
(`TaskNotFound`, `JobNotFound`, `ValidationError`, `JobFinished`, ...); other HTTP
errors as `ApiError`. Network failures are httpx's own exceptions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from ._util import parse_rfc3339
from .errors import (
    IdempotencyConflict,
    JobActive,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobNotFound,
    JobStateError,
    QueueFull,
    StoreUnavailable,
    TaskNotFound,
    UnderwayError,
    ValidationError,
)
from .errors import Unauthorized as _Unauthorized
from .handle import JobHandle
from .records import (
    TERMINAL,
    ErrorInfo,
    Event,
    EventKind,
    JobRecord,
    Page,
    Progress,
    State,
    Waiting,
)

MAX_SERVER_WAIT = 30.0  # the server caps a long poll at this many seconds


class ApiError(UnderwayError):
    """An HTTP error without an engine exception of its own; `problem` is the body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code") or f"http-{status}")
        super().__init__(str(problem.get("detail") or problem.get("title") or f"HTTP {status}"))


class Unauthorized(ApiError, _Unauthorized):
    """No token, or one the server does not know (also `underway.Unauthorized`)."""


def record_from_dict(data: dict[str, Any]) -> JobRecord:
    """A `JobRecord` from its public JSON shape (`JobRecord.to_dict`)."""
    meta: dict[str, Any] = {}
    if "webhook" in data:
        meta["webhook"] = data["webhook"]
    return JobRecord(
        id=data["id"],
        task=data["task"],
        params=data.get("params") or {},
        state=State(data["state"]),
        progress=Progress.from_dict(data.get("progress")),
        result=data.get("result"),
        error=ErrorInfo.from_dict(data.get("error")),
        cancel_requested=bool(data.get("cancel_requested")),
        attempt=data.get("attempt", 0),
        max_attempts=data.get("max_attempts", 1),
        created_at=parse_rfc3339(data.get("created_at")) or 0.0,
        started_at=parse_rfc3339(data.get("started_at")),
        finished_at=parse_rfc3339(data.get("finished_at")),
        expires_at=parse_rfc3339(data.get("expires_at")),
        output_count=data.get("output_count", 0),
        position=data.get("position"),
        owner=data.get("owner"),
        queue=data.get("queue", "default"),
        meta=meta,
        waiting=_waiting_from(data.get("waiting")),
    )


def _waiting_from(data: Any) -> Waiting | None:
    if not isinstance(data, dict) or "reason" not in data:
        return None
    return Waiting(
        reason=str(data["reason"]),
        message=str(data.get("message") or ""),
        until=parse_rfc3339(data.get("until")),
    )


def error_from_problem(status: int, problem: dict[str, Any]) -> UnderwayError:
    """The engine exception a problem+json body stands for."""
    code = problem.get("code")
    detail = str(problem.get("detail") or "")
    job = problem.get("job")
    record = record_from_dict(job) if isinstance(job, dict) else None
    exc: UnderwayError
    if code == "task-not-found":
        exc = TaskNotFound(str(problem.get("task", "")), problem.get("known_tasks") or ())
    elif code == "job-not-found":
        exc = JobNotFound(str(problem.get("job_id", "")))
    elif code in ("validation-failed", "idempotency-conflict"):
        cls = IdempotencyConflict if code == "idempotency-conflict" else ValidationError
        exc = cls(detail)  # the detail already lists the fields
        exc.errors = list(problem.get("errors") or [])
    elif code == "job-finished":
        exc = JobFinished(detail, record)
    elif code == "job-active":
        exc = JobActive(detail, record)
    elif code == "job-state":
        exc = JobStateError(detail, record)
    elif code == "job-failed" and record is not None:
        exc = JobFailed(record)
    elif code == "job-cancelled" and record is not None:
        exc = JobCancelled(record)
    elif code == "queue-full":
        exc = QueueFull(detail)
    elif code == "store-unavailable":
        exc = StoreUnavailable(detail)
    elif code == "unauthorized":
        exc = Unauthorized(status, problem)
    else:
        exc = ApiError(status, problem)
    return exc


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"status": response.status_code, "detail": response.text[:500]}
    raise error_from_problem(response.status_code, problem)


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) for each event in a stream of text/event-stream lines."""
    event_id: str | None = None
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, kind, "\n".join(data)
            event_id, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


class Client:
    """A remote underway server. Methods mirror `Underway`'s caller API."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        reconnect_delay: float = 0.5,
        max_reconnects: int = 10,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnects = max_reconnects
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response

    # -- tasks and submission ----------------------------------------------------------
    def tasks(self) -> list[dict[str, Any]]:
        """The server's tasks with their parameter schemas."""
        tasks: list[dict[str, Any]] = self._request("GET", "/v1/tasks").json()["tasks"]
        return tasks

    def enqueue(
        self,
        task: str,
        params: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        supersede: str | None = None,
        callback_url: str | None = None,
        wait: float | None = None,
    ) -> JobRecord:
        """Submit a job; its record. `wait` holds the answer up to that many seconds."""
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        if wait:
            headers["Prefer"] = f"wait={min(wait, MAX_SERVER_WAIT):g}"
        query = {k: v for k, v in (("supersede", supersede), ("callback_url", callback_url)) if v}
        response = self._request(
            "POST",
            f"/v1/tasks/{task}/jobs",
            json=params,
            headers=headers,
            params=query,
            timeout=self.timeout + (wait or 0.0),
        )
        return record_from_dict(response.json())

    def submit(
        self,
        task: str,
        /,
        *,
        idempotency_key: str | None = None,
        supersede: str | None = None,
        callback_url: str | None = None,
        **params: Any,
    ) -> RemoteJob:
        """Queue a job of `task` with keyword parameters; its handle."""
        record = self.enqueue(
            task,
            params,
            idempotency_key=idempotency_key,
            supersede=supersede,
            callback_url=callback_url,
        )
        return RemoteJob(self, record)

    # -- reading -----------------------------------------------------------------------
    def get(self, job_id: str, *, wait: float | None = None) -> JobRecord:
        """The job's record; with `wait`, held until it changes (up to `wait` seconds)."""
        params = {"wait": f"{min(wait, MAX_SERVER_WAIT):g}"} if wait else None
        response = self._request(
            "GET", f"/v1/jobs/{job_id}", params=params, timeout=self.timeout + (wait or 0.0)
        )
        return record_from_dict(response.json())

    def job(self, job_id: str) -> RemoteJob:
        return RemoteJob(self, self.get(job_id))

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        query: dict[str, str | int] = {"limit": limit}
        if task:
            query["task"] = task
        if state:
            query["state"] = State(state).value
        if cursor:
            query["cursor"] = cursor
        data = self._request("GET", "/v1/jobs", params=query).json()
        return Page(
            jobs=[record_from_dict(j) for j in data["jobs"]], next_cursor=data["next_cursor"]
        )

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobRecord:
        """Block until the job is finished (long polls); TimeoutError past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_SERVER_WAIT if deadline is None else deadline - time.monotonic()
            record = self.get(job_id, wait=max(0.0, min(left, MAX_SERVER_WAIT)) or None)
            if record.state in TERMINAL:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")

    def output(
        self, job_id: str, *, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]:
        """Output items of the latest attempt (or of `attempt`) after the first `after`."""
        params = {"after": after, "limit": limit}
        if attempt is not None:
            params["attempt"] = attempt
        items: list[Any] = self._request("GET", f"/v1/jobs/{job_id}/output", params=params).json()[
            "items"
        ]
        return items

    def follow(
        self, job_id: str, *, after: int = 0, timeout: float | None = None
    ) -> Iterator[Event]:
        """Events with id > `after` as they happen, until `done` (or `timeout`).

        A dropped connection is reopened with `Last-Event-ID`, so nothing is missed
        and nothing comes twice. `Event.at` is the time it was received here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if after:
                headers["Last-Event-ID"] = str(after)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            read_timeout = max(self.timeout, 60.0) if left is None else min(left, 60.0)
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout, read=read_timeout),
                ) as response:
                    if not response.is_success:
                        response.read()
                        _raise_for(response)
                    for event_id, kind, data in parse_sse(response.iter_lines()):
                        if event_id is None:
                            continue
                        event = Event(
                            seq=int(event_id),
                            kind=EventKind(kind),
                            data=json.loads(data),
                            at=time.time(),
                        )
                        after = event.seq
                        failures = 0
                        yield event
                        if event.kind is EventKind.DONE:
                            return
                return  # closed by the server with nothing left (the job is gone)
            except httpx.ReadTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                failures += 1
            except httpx.TransportError:
                failures += 1
            if failures > self.max_reconnects:
                raise ConnectionError(f"lost the event stream of job {job_id} {failures} times")
            time.sleep(self.reconnect_delay * min(failures, 4))

    events = follow

    # -- changing ------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        """Ask the job to stop; JobFinished if it already succeeded or failed."""
        return record_from_dict(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        """Remove a finished job; JobActive while it is queued or running."""
        self._request("DELETE", f"/v1/jobs/{job_id}")


RemoteJob = JobHandle  # a job on a server: the same handle as for a local job
