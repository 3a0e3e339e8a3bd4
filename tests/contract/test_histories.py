"""Same history, same events: whole job histories replayed on every store.

Each history runs through the engine (real embedded workers) on memory, SQLite and
Redis, and the job's whole event stream must be exactly the one written here:
kinds, payloads and attempts, with only ids, times and tracebacks set aside.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.wait import wait_for
from underway import Job, Underway
from underway.records import Event

pytestmark = pytest.mark.slow

QUEUED = ("state", {"state": "queued"})


def running(attempt: int) -> tuple[str, Any]:
    return ("state", {"state": "running", "attempt": attempt})


def output(attempt: int, index: int, item: Any) -> tuple[str, Any]:
    return ("output", {"attempt": attempt, "index": index, "item": item})


def requeued(reason: str, attempt: int, error: tuple[str, str]) -> tuple[str, Any]:
    return (
        "state",
        {
            "state": "queued",
            "reason": reason,
            "attempt": attempt,
            "error": {"type": error[0], "message": error[1]},
        },
    )


def ended(state: str, result: Any = None, error: tuple[str, str] | None = None) -> list[Any]:
    err = None if error is None else {"type": error[0], "message": error[1], "traceback": "..."}
    return [("state", {"state": state}), ("done", {"state": state, "result": result, "error": err})]


def normal(events: list[Event]) -> list[tuple[str, Any]]:
    """The events without what legitimately differs between runs."""
    out: list[tuple[str, Any]] = []
    for event in events:
        data = event.data
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "retry_at"}
            if isinstance(data.get("error"), dict) and "traceback" in data["error"]:
                data["error"] = {**data["error"], "traceback": "..."}
        out.append((event.kind.value, data))
    return out


@pytest.fixture
def app(store_url: str) -> Iterator[Underway]:
    uw = Underway(store_url, lease=1)
    yield uw
    uw.close()


def start(uw: Underway) -> None:
    uw.start(2, janitor_interval=0.1)


def history(uw: Underway, job_id: str) -> list[tuple[str, Any]]:
    uw.wait(job_id, timeout=20)
    return normal(uw.events(job_id))


def test_success(app: Underway) -> None:
    @app.task
    def work(job: Job) -> str:
        job.emit("a")
        job.log("hello")
        return "ok"

    start(app)
    job = app.submit("work")
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        output(1, 0, "a"),
        ("log", "hello"),
        *ended("succeeded", "ok"),
    ]


def test_fail_retry_success(app: Underway) -> None:
    @app.task(retries=1, retry_backoff=0.01)
    def flaky(job: Job) -> str:
        if job.attempt == 1:
            job.emit("first")
            raise RuntimeError("first try")
        job.emit("second")
        return "ok"

    start(app)
    job = app.submit("flaky")
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        output(1, 0, "first"),
        requeued("retry", 1, ("RuntimeError", "first try")),
        running(2),
        output(2, 0, "second"),
        *ended("succeeded", "ok"),
    ]
    assert app.output(job.id) == ["second"]
    assert app.output(job.id, attempt=1) == ["first"]


def test_retries_exhausted(app: Underway) -> None:
    @app.task(retries=1, retry_backoff=0.01)
    def broken() -> None:
        raise ValueError("always")

    start(app)
    job = app.submit("broken")
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        requeued("retry", 1, ("ValueError", "always")),
        running(2),
        *ended("failed", error=("ValueError", "always")),
    ]
    assert app.get(job.id).attempt == 2


def test_worker_lost_and_requeued(app: Underway) -> None:
    @app.task(retries=1)
    def work(job: Job) -> str:
        job.emit(job.attempt)
        return "ok"

    job = app.submit("work")
    # A worker that claims the job and dies: its lease runs out, nobody renews it.
    (claimed,) = app.store.claim(
        worker="dead", tasks=["work"], limits={}, lease=0.05, now=time.time()
    )
    assert claimed.id == job.id
    start(app)
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        requeued("lost", 1, ("WorkerLost", "worker dead stopped renewing its lease")),
        running(2),
        output(2, 0, 2),
        *ended("succeeded", "ok"),
    ]


def test_lost_without_attempts_left_fails(app: Underway) -> None:
    @app.task
    def work() -> str:
        return "ok"

    job = app.submit("work")
    app.store.claim(worker="dead", tasks=["work"], limits={}, lease=0.05, now=time.time())
    start(app)
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        *ended("failed", error=("WorkerLost", "worker dead stopped renewing its lease")),
    ]


def test_cancel_while_queued(app: Underway) -> None:
    @app.task
    def work() -> str:
        return "ok"

    job = app.submit("work")
    app.cancel(job.id)
    assert history(app, job.id) == [
        QUEUED,
        *ended("cancelled", error=("Cancelled", "cancelled before it started")),
    ]


def test_cancel_while_running(app: Underway) -> None:
    started = threading.Event()

    @app.task
    def work(job: Job) -> str:
        started.set()
        job.wait_cancelled(20)
        job.check_cancelled()
        return "not cancelled"

    start(app)
    job = app.submit("work")
    assert started.wait(10)
    app.cancel(job.id)
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        ("log", "cancel requested"),
        *ended("cancelled", error=("Cancelled", "the job was cancelled")),
    ]


def test_cancel_asked_but_code_returns_normally(app: Underway) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task
    def work(job: Job) -> str:
        started.set()
        release.wait(20)
        return "finished anyway"

    start(app)
    job = app.submit("work")
    assert started.wait(10)
    app.cancel(job.id)
    wait_for(lambda: app.get(job.id).cancel_requested, timeout=10, what="the cancel flag")
    release.set()
    assert history(app, job.id) == [
        QUEUED,
        running(1),
        ("log", "cancel requested"),
        *ended("succeeded", "finished anyway"),
    ]
    assert app.get(job.id).cancel_requested


def test_timeout_even_if_the_code_returns(app: Underway) -> None:
    asked: list[bool] = []

    @app.task(timeout=0.3, retries=2)
    def slow(job: Job) -> str:
        asked.append(job.wait_cancelled(10))
        return "late"

    start(app)
    job = app.submit("slow")
    events = history(app, job.id)
    assert asked == [True]  # stopped once; a timeout is not retried
    assert events == [
        QUEUED,
        running(1),
        *ended("failed", error=("Timeout", "the job ran longer than its timeout of 0.3s")),
    ]
