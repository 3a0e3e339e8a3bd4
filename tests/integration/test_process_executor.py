"""The process executor with real child processes: results, progress and output across
the boundary, cancellation (cooperative and forced), crashes, timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration import executor_helpers as helpers
from tests.integration import tasks_for_executors as tasks
from tests.integration.executor_helpers import first_output
from tests.support.wait import wait_for
from underway import EventKind, Job, JobCancelled, JobFailed, State, Underway

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def app(uw: Underway) -> Underway:
    # One child per pool: a later job can only succeed if a dead child was replaced.
    uw.configure(workers=1)
    return uw


def register(uw: Underway, func: Callable[..., Any], **settings: Any) -> str:
    return helpers.register(uw, "process", func, **settings)


def test_job_succeeds_with_its_result(app: Underway) -> None:
    register(app, tasks.square)
    app.start()
    handle = app.submit("square", n=7)
    result = handle.wait(timeout=10)
    assert result["square"] == 49
    assert result["pid"] != os.getpid()
    record = handle.refresh()
    assert record.state is State.SUCCEEDED
    assert (record.progress.current, record.progress.total) == (1, 1)


def test_progress_output_and_logs_cross_the_boundary_in_order(app: Underway) -> None:
    register(app, tasks.stream)
    app.start()
    handle = app.submit("stream", count=2000)
    assert handle.wait(timeout=10) == 2000
    assert handle.output(limit=5000) == [{"i": i} for i in range(2000)]
    logs = [e.data for e in app.store.events(handle.id, limit=5000) if e.kind is EventKind.LOG]
    assert logs == [f"at {i}" for i in range(0, 2000, 100)]
    progress = handle.progress
    assert (progress.current, progress.total, progress.message) == (2000, 2000, "2000/2000")
    assert handle.refresh().output_count == 2000


def test_generator_and_async_tasks(app: Underway) -> None:
    register(app, tasks.count_up)
    register(app, tasks.async_square)
    app.start()
    generated = app.submit("count_up", n=5)
    assert generated.wait(timeout=10) == [0, 1, 2, 3, 4]
    assert generated.output() == [0, 1, 2, 3, 4]
    awaited = app.submit("async_square", n=9)
    assert awaited.wait(timeout=10) == 81
    assert awaited.output() == ["awaited"]


def test_a_module_level_task_is_found_by_the_child() -> None:
    # The usual form: `@app.task` at the top level of a module binds a Task there.
    tasks.module_app.start()
    try:
        assert tasks.cube.submit(n=3).wait(timeout=10) == 27
    finally:
        tasks.module_app.stop()


def test_cooperative_job_is_cancelled(app: Underway) -> None:
    register(app, tasks.cooperative)
    register(app, tasks.square)
    app.start()
    handle = app.submit("cooperative")
    assert first_output(handle) == "started"
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    assert app.submit("square", n=2).wait(timeout=10)["square"] == 4


def test_job_ignoring_cancel_is_killed_and_its_slot_replaced(app: Underway) -> None:
    register(app, tasks.stubborn, cancel_grace=0.3)
    register(app, tasks.square)
    app.start()
    handle = app.submit("stubborn")
    pid = first_output(handle)["started"]
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    wait_for(lambda: not tasks.process_alive(pid), timeout=5, what="the child to be killed")
    result = app.submit("square", n=3).wait(timeout=10)
    assert result["square"] == 9
    assert result["pid"] != pid


def test_job_ignoring_sigterm_too_is_killed(app: Underway) -> None:
    register(app, tasks.stubborn_family, cancel_grace=0.2)
    register(app, tasks.square)
    app.start()
    app.executor_for("process").kill_wait = 0.3  # type: ignore[attr-defined]
    handle = app.submit("stubborn_family")
    pid = first_output(handle)["child"]
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    wait_for(lambda: not tasks.process_alive(pid), timeout=5, what="the child to be killed")
    assert app.submit("square", n=4).wait(timeout=10)["square"] == 16


def test_timeout_fails_the_job_with_type_timeout(app: Underway) -> None:
    register(app, tasks.stubborn, timeout=0.3, cancel_grace=0.2)
    register(app, tasks.square)
    app.start()
    handle = app.submit("stubborn")
    with pytest.raises(JobFailed):
        handle.wait(timeout=10)
    error = handle.error
    assert error is not None
    assert error.type == "Timeout"
    assert app.submit("square", n=6).wait(timeout=10)["square"] == 36


def test_task_the_child_cannot_import_fails_clearly(app: Underway) -> None:
    def nested(job: Job) -> int:
        return 1

    register(app, nested)
    app.start()
    handle = app.submit("nested")
    with pytest.raises(JobFailed):
        handle.wait(timeout=10)
    error = handle.error
    assert error is not None
    assert error.type == "TaskNotImportable"
    assert "top level of a module" in error.message


def test_tasks_defined_in_a_main_script_run_in_child_processes(tmp_path: Path) -> None:
    # The script registers `square` from its own __main__ on the process and the
    # subprocess executors; children load it again under another name.
    script = Path(tasks.__file__)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"process": 49, "subprocess": 49}
