"""The subprocess executor with real child processes: a fresh child per job, results,
progress and output over its socket, hard cancellation of the whole process group."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration import executor_helpers as helpers
from tests.integration import tasks_for_executors as tasks
from tests.integration.executor_helpers import first_output
from tests.support.wait import wait_for
from underway import JobCancelled, JobFailed, State, Underway

pytestmark = pytest.mark.timeout(30)


def register(uw: Underway, func: Callable[..., Any], **settings: Any) -> str:
    return helpers.register(uw, "subprocess", func, **settings)


def test_each_job_runs_in_a_fresh_child(uw: Underway) -> None:
    register(uw, tasks.square)
    uw.start()
    first = uw.submit("square", n=7)
    second = uw.submit("square", n=8)
    assert first.wait(timeout=10)["square"] == 49
    assert second.wait(timeout=10)["square"] == 64
    pids = {first.result["pid"], second.result["pid"], os.getpid()}
    assert len(pids) == 3
    assert first.refresh().progress.current == 1


def test_progress_and_output_come_back_while_the_task_prints(uw: Underway) -> None:
    register(uw, tasks.stream)
    register(uw, tasks.prints)
    uw.start()
    handle = uw.submit("stream", count=1500)
    assert handle.wait(timeout=10) == 1500
    assert handle.output(limit=5000) == [{"i": i} for i in range(1500)]
    progress = handle.progress
    assert (progress.current, progress.total, progress.message) == (1500, 1500, "1500/1500")
    # Its stdout is not the channel to the worker: printing does not disturb it.
    printed = uw.submit("prints", text='{"op": "done"} not a message')
    assert printed.wait(timeout=10) == '{"op": "done"} not a message'
    assert printed.output() == ['{"op": "done"} not a message']


def test_cooperative_job_is_cancelled(uw: Underway) -> None:
    register(uw, tasks.cooperative)
    uw.start()
    handle = uw.submit("cooperative")
    assert first_output(handle) == "started"
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    assert handle.refresh().state is State.CANCELLED


def test_stubborn_job_has_its_whole_process_group_killed(uw: Underway) -> None:
    # The child ignores the cancel request and SIGTERM; so does its grandchild.
    register(uw, tasks.stubborn_family, cancel_grace=0.2)
    register(uw, tasks.square)
    uw.start()
    uw.executor_for("subprocess").kill_wait = 0.3  # type: ignore[attr-defined]
    handle = uw.submit("stubborn_family")
    pids = first_output(handle)
    assert tasks.process_alive(pids["grandchild"])
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)

    def all_gone() -> bool:
        return not any(tasks.process_alive(pid) for pid in pids.values())

    wait_for(all_gone, timeout=5, what="the child and the grandchild to be killed")
    assert uw.submit("square", n=3).wait(timeout=10)["square"] == 9


def test_timeout_fails_the_job_with_type_timeout(uw: Underway) -> None:
    register(uw, tasks.cooperative, timeout=0.3)
    uw.start()
    handle = uw.submit("cooperative")
    with pytest.raises(JobFailed):
        handle.wait(timeout=10)
    error = handle.error
    assert error is not None
    assert error.type == "Timeout"
