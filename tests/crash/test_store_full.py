"""Promises under a full disk (SQLite on a small tmpfs filled to the brim):

- a job that finishes while the store cannot be written ends truthfully once space
  is back (succeeded, with its result and all its output), never `failed` with
  `WorkerLost` while its worker is alive;
- a submit while the store is full raises `StoreUnavailable`, and over HTTP answers
  503 `application/problem+json`, code `store-unavailable`, with `Retry-After`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.crash.small_disk import fill, free, small_disk
from tests.support.http_server import serve_asgi
from tests.support.wait import wait_for
from underway import Job, State, StoreUnavailable, Underway
from underway.http import asgi

pytestmark = [pytest.mark.slow]

LEASE = 1.0
FULL_FOR = 3 * LEASE  # the disk stays full well past the job's lease


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk") as folder:
        yield folder


def test_a_job_that_ends_while_the_disk_is_full_ends_truthfully(disk: Path) -> None:
    uw = Underway(f"sqlite:///{disk / 'jobs.db'}", lease=LEASE)
    started, go, returning = threading.Event(), threading.Event(), threading.Event()

    @uw.task(retries=0)
    def finish_while_full(job: Job) -> dict[str, int]:
        job.emit("before")
        started.set()
        if not go.wait(30):
            raise RuntimeError("the test never let the job go on")
        job.emit("after")
        returning.set()
        return {"answer": 42}

    @uw.task
    def noop() -> None:
        return None

    problems = []
    try:
        uw.start(1, janitor_interval=0.2)
        job = uw.submit("finish_while_full")
        assert started.wait(10), "the job did not start"
        wait_for(lambda: uw.output(job.id) == ["before"], what="the first item stored")

        fill(disk)
        # The store really is unwritable now (the exception's type is checked below).
        with pytest.raises((StoreUnavailable, sqlite3.OperationalError)):
            uw.submit("noop")
        go.set()
        assert returning.wait(10), "the job did not go on"
        full_until = time.monotonic() + FULL_FOR
        while time.monotonic() < full_until:  # a timed outage: pacing reads, no syncing
            seen = uw.get(job.id)
            if seen.state is not State.RUNNING:
                problems.append(f"while the disk was full the job became {seen.state.value}")
                break
            time.sleep(0.2)
        free(disk)

        final = uw.wait(job.id, timeout=20)
        if final.state is not State.SUCCEEDED:
            problems.append(
                f"the job ended {final.state.value} "
                f"({final.error.type if final.error else 'no error'}: "
                f"{final.error.message if final.error else ''}) while its worker was alive"
            )
        if final.result != {"answer": 42}:
            problems.append(f"the job's result is {final.result!r}")
        output = uw.output(job.id)
        if output != ["before", "after"]:
            problems.append(f"the job's output is {output!r}, not ['before', 'after']")
        # The worker lived on, and works after the outage.
        assert uw.submit("noop").wait(10) is None
    finally:
        go.set()
        uw.close()
    assert not problems, "\n".join(problems)


def test_submitting_to_a_full_store_says_store_unavailable(disk: Path) -> None:
    uw = Underway(f"sqlite:///{disk / 'jobs.db'}")

    @uw.task
    def noop() -> None:
        return None

    problems = []
    try:
        uw.submit("noop")  # the file exists and works
        with serve_asgi(asgi(uw)) as api, httpx.Client(base_url=api, timeout=10) as http:
            fill(disk)
            try:
                uw.submit("noop")
            except StoreUnavailable:
                pass
            except Exception as exc:
                problems.append(f"submit raised {type(exc).__module__}.{type(exc).__name__}: "
                                f"{exc}, not StoreUnavailable")  # fmt: skip
            else:
                problems.append("submit succeeded on a full disk: the setup is broken")
            answer = http.post("/v1/tasks/noop/jobs", json={})
            body = answer.json() if answer.content else {}
            if (
                answer.status_code != 503
                or answer.headers.get("content-type") != "application/problem+json"
                or body.get("code") != "store-unavailable"
                or "retry-after" not in answer.headers
            ):
                problems.append(
                    f"POST answered {answer.status_code} {answer.headers.get('content-type')} "
                    f"code={body.get('code')!r} retry-after={answer.headers.get('retry-after')!r}"
                )
            free(disk)
            # Space is back: submitting works again, in-process and over HTTP.
            uw.submit("noop")
            assert http.post("/v1/tasks/noop/jobs", json={}).status_code == 202
    finally:
        uw.close()
    assert not problems, "\n".join(problems)
