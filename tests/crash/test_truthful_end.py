"""Promises about what an end says, with embedded thread workers on SQLite:

- a job that outlives its `timeout`, ignores the stop request and then returns
  normally has still timed out: it ends `failed` with error type `Timeout`;
- a job whose cancel was requested but whose code returns normally anyway ends
  `succeeded` with its result, and its record keeps `cancel_requested: true`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from underway import Job, State, Underway

pytestmark = [pytest.mark.slow]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Underway]:
    uw = Underway(f"sqlite:///{tmp_path / 'jobs.db'}", lease=1.0)
    yield uw
    uw.close()


def test_a_job_that_ignores_its_timeout_and_returns_is_failed_with_timeout(
    app: Underway,
) -> None:
    told = threading.Event()

    @app.task(timeout=0.5, cancel_grace=10.0, retries=0)
    def overrun(job: Job) -> str:
        began = time.monotonic()
        if job.wait_cancelled(5.0):  # the stop request comes past the timeout...
            told.set()
        time.sleep(max(0.0, 1.5 - (time.monotonic() - began)))  # ...and is ignored
        return "returned normally"

    app.start(1)
    final = app.wait(app.submit("overrun").id, timeout=15)
    assert told.is_set(), "the job was never asked to stop at its timeout"
    assert final.state is State.FAILED, (
        f"the job ran 1.5 s against a 0.5 s timeout and ended {final.state.value} "
        f"with result {final.result!r}"
    )
    assert final.error is not None and final.error.type == "Timeout", final.error
    assert final.result is None


def test_a_job_that_returns_despite_a_cancel_request_succeeds_with_the_flag_set(
    app: Underway,
) -> None:
    running, told = threading.Event(), threading.Event()

    @app.task(cancel_grace=10.0)
    def stubborn(job: Job) -> str:
        running.set()
        if job.wait_cancelled(10.0):
            told.set()
        return "finished anyway"

    app.start(1)
    job = app.submit("stubborn")
    assert running.wait(10), "the job did not start"
    app.cancel(job.id)
    final = app.wait(job.id, timeout=15)
    assert told.is_set(), "the cancel request never reached the job"
    assert final.state is State.SUCCEEDED, f"ended {final.state.value}: {final.error}"
    assert final.result == "finished anyway"
    assert final.cancel_requested is True
    assert final.error is None
