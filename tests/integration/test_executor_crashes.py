"""Both child-process executors: a job that exits, crashes or raises fails with a clear
error, and the executor keeps running the next job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration import tasks_for_executors as tasks
from underway import JobFailed, Underway


@pytest.mark.parametrize("executor", ["process", "subprocess"])
@pytest.mark.parametrize(
    ("func", "params", "error_type", "message"),
    [
        (tasks.calls_sys_exit, {"code": 3}, "SystemExit", "3"),
        (tasks.calls_os_exit, {"code": 4}, "WorkerCrashed", "exited with code 4"),
        (tasks.aborts, {}, "WorkerCrashed", "killed by signal SIGKILL"),
        (tasks.raises, {"message": "bad input"}, "ValueError", "bad input"),
    ],
    ids=["sys.exit", "os._exit", "killed", "raises"],
)
def test_failing_job_has_a_clear_error_and_the_executor_keeps_going(
    uw: Underway,
    executor: str,
    func: Callable[..., Any],
    params: dict[str, Any],
    error_type: str,
    message: str,
) -> None:
    uw.configure(workers=1)  # one child per process pool: the next job needs a fresh one
    failing = uw.task(executor=executor, cancel_grace=0.5)(func)
    uw.task(executor=executor, cancel_grace=0.5)(tasks.square)
    uw.start()
    handle = uw.submit(failing.name, **params)
    with pytest.raises(JobFailed):
        handle.wait(timeout=10)
    error = handle.error
    assert error is not None
    assert error.type == error_type
    assert message in error.message
    assert uw.submit("square", n=5).wait(timeout=10)["square"] == 25
