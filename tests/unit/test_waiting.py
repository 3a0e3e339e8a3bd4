"""Why is my job waiting? Each reason a queued job gives, as a user would meet it."""

from __future__ import annotations

import threading

from tests.support.wait import wait_for
from underway import Job, State, Underway


def reason(uw: Underway, job_id: str) -> str:
    record = uw.get(job_id)
    assert record.state is State.QUEUED and record.waiting is not None
    assert record.to_dict()["waiting"]["reason"] == record.waiting.reason
    return record.waiting.reason


def test_no_worker_then_queue(uw: Underway) -> None:
    @uw.task
    def noop() -> None:
        return None

    job = uw.submit("noop")
    assert reason(uw, job.id) == "no-worker"
    assert "noop" in uw.get(job.id).waiting.message  # type: ignore[union-attr]
    other = Underway(uw.store_url)  # a worker elsewhere that serves other tasks only

    @other.task
    def unrelated() -> None:
        return None

    other.start(1)
    try:
        assert reason(uw, job.id) == "no-worker"
    finally:
        other.close()


def test_scheduled_and_queue(uw: Underway) -> None:
    gate = threading.Event()

    @uw.task
    def hold(job: Job) -> None:
        gate.wait(20)

    uw.start(1)
    try:
        first = uw.submit("hold")
        wait_for(lambda: uw.get(first.id).state is State.RUNNING, what="the first job")
        second = uw.submit("hold")
        assert reason(uw, second.id) == "queue"  # the only slot is busy
        later = uw.submit("hold", delay=60)
        assert reason(uw, later.id) == "scheduled"
        assert uw.get(later.id).waiting.until is not None  # type: ignore[union-attr]
        uw.cancel(later.id)
    finally:
        gate.set()


def test_concurrency_limit(uw: Underway) -> None:
    gate = threading.Event()

    @uw.task(concurrency=1)
    def single(job: Job) -> None:
        gate.wait(20)

    uw.start(3)
    try:
        first = uw.submit("single")
        wait_for(lambda: uw.get(first.id).state is State.RUNNING, what="the first job")
        second = uw.submit("single")
        assert reason(uw, second.id) == "concurrency-limit"
    finally:
        gate.set()


def test_retry_backoff(uw: Underway) -> None:
    @uw.task(retries=1, retry_backoff=60)
    def flaky() -> None:
        raise RuntimeError("not yet")

    uw.start(1)
    job = uw.submit("flaky")
    wait_for(lambda: uw.get(job.id).attempt == 1 and uw.get(job.id).state is State.QUEUED,
             what="the first attempt to fail")  # fmt: skip
    assert reason(uw, job.id) == "retry-backoff"
    uw.cancel(job.id)


def test_the_api_says_why(uw: Underway) -> None:
    import httpx

    from tests.support.http_server import serve_asgi
    from underway.http import asgi

    @uw.task
    def noop() -> None:
        return None

    with serve_asgi(asgi(uw)) as url, httpx.Client(base_url=url) as http:
        job = http.post("/v1/tasks/noop/jobs", json={}).json()
        body = http.get(f"/v1/jobs/{job['id']}").json()
    assert body["state"] == "queued"
    assert body["waiting"]["reason"] == "no-worker" and body["waiting"]["until"] is None
