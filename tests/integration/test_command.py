"""run_command with real programs: output and progress from their lines, failures,
timeouts, and stopping the whole process group when the job is cancelled."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.integration.tasks_for_executors import process_alive
from tests.support.wait import wait_for
from underway import Cancelled, EventKind, Job, JobCancelled, JobRecord, Underway
from underway.command import CommandFailed, CommandResult, CommandTimeout, run_command

pytestmark = pytest.mark.timeout(30)

COUNT_TO_FOUR = 'for i in 1 2 3 4; do echo "step $i/4 file$i"; done; echo finished'


def make_job() -> Job:
    return Job(JobRecord(id="job-1", task="command", params={}))


def outbox(job: Job) -> list[tuple[EventKind, Any]]:
    return [(kind, json.loads(data)) for kind, data in job.take_outbox()]


def test_regex_progress_and_output_through_a_job(uw: Underway) -> None:
    @uw.task
    def convert(job: Job) -> list[str]:
        result = job.run_command(
            ["sh", "-c", COUNT_TO_FOUR],
            progress=r"step (?P<current>\d+)/(?P<total>\d+) (?P<message>\w+)",
        )
        return list(result.lines)

    uw.start()
    handle = convert.submit()
    lines = handle.wait(timeout=10)
    assert lines == [f"step {i}/4 file{i}" for i in range(1, 5)] + ["finished"]
    # Progress lines become progress, not output.
    assert handle.output() == ["finished"]
    progress = handle.progress
    assert (progress.current, progress.total, progress.message) == (4, 4, "file4")


def test_callable_progress_log_output_and_stderr() -> None:
    job = make_job()

    def parse(line: str) -> tuple[float, float | None, str | None] | None:
        if line.startswith("step "):
            current, total = line.split()[1].split("/")
            return float(current), float(total), None
        return None

    script = COUNT_TO_FOUR + "; echo warning >&2"
    result = run_command(job, ["sh", "-c", script], progress=parse, output="log")
    assert result == CommandResult(
        argv=("sh", "-c", script),
        returncode=0,
        lines=(*(f"step {i}/4 file{i}" for i in range(1, 5)), "finished"),
        stderr_tail=("warning",),
    )
    assert sorted(outbox(job)) == [(EventKind.LOG, "finished"), (EventKind.LOG, "warning")]
    assert job.snapshot()[1:] == (4.0, 4.0, None)


def test_carriage_returns_end_progress_lines() -> None:
    job = make_job()
    run_command(
        job,
        ["printf", "10%%\\r50%%\\r100%%\\ndone\\n"],
        progress=r"^(?P<current>\d+)%$",
    )
    assert job.snapshot()[1] == 100
    assert outbox(job) == [(EventKind.OUTPUT, "done")]


def test_non_zero_exit_raises_command_failed_with_stderr() -> None:
    job = make_job()
    argv = ["sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 3"]
    with pytest.raises(CommandFailed) as caught:
        run_command(job, argv)
    assert caught.value.returncode == 3
    assert caught.value.stderr_tail == ("first", "disk full")
    assert "exited with code 3" in str(caught.value)
    assert "disk full" in str(caught.value)
    result = run_command(job, argv, check=False)
    assert result.returncode == 3


def test_timeout_stops_the_program() -> None:
    job = make_job()
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"ran longer than 0\.3s"):
        run_command(job, ["sleep", "30"], timeout=0.3, grace=1.0)
    assert time.monotonic() - started < 5


def test_cancelled_job_kills_a_long_sleep(uw: Underway) -> None:
    @uw.task(cancel_grace=5.0)
    def wait_long(job: Job) -> int:
        # `exec` makes the sleep the very process whose pid is printed.
        return job.run_command(["sh", "-c", "echo $$; exec sleep 30"], grace=2.0).returncode

    uw.start()
    handle = wait_long.submit()
    pid = None
    for event in handle.events(timeout=10):
        if event.kind is EventKind.OUTPUT:
            pid = int(event.data["item"])
            break
    assert pid is not None and process_alive(pid)
    cancelled_at = time.monotonic()
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    # SIGTERM ends sleep at once: no need to wait out the grace period.
    assert time.monotonic() - cancelled_at < 2.0
    wait_for(lambda: not process_alive(pid), timeout=5, what="sleep to be killed")


def test_members_that_ignore_sigterm_get_sigkill() -> None:
    job = make_job()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            run_command(job, ["sh", "-c", "trap '' TERM; echo $$; sleep 30 & wait"], grace=0.3)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    items = wait_for(job.take_outbox, timeout=10, what="the shell's pid")
    pid = int(json.loads(items[0][1]))
    job.request_cancel()
    thread.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    wait_for(lambda: not process_alive(pid), timeout=5, what="the shell to be killed")


def test_argv_must_be_a_list() -> None:
    with pytest.raises(TypeError, match="not a string"):
        run_command(make_job(), "echo hi")
