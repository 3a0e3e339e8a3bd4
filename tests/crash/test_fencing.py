"""Promise: a worker that lost its lease changes nothing (writes are fenced).

Worker process A runs a job that emits items naming its pid; A is frozen with
SIGSTOP, so its lease lapses; worker process B recovers the job and runs it again
(attempt 2), and holds half-way. Then A is thawed with SIGCONT: its run goes on to
its end, and A is stopped cleanly, so every late write it had (output, progress,
the end) is attempted while B's run is still going. They must all be refused: the
job is still B's running attempt 2; once B is let go, the final record and the
latest attempt's output are B's alone.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.crash_app import build_app
from tests.crash.procs import WorkerProcs
from tests.support.wait import wait_for
from underway import State, Underway

pytestmark = [pytest.mark.slow]

ITEMS = 20


@pytest.fixture
def client(store_url: str) -> Iterator[Underway]:
    uw = build_app(store_url, lease=1.0)
    yield uw
    uw.close()


def lines(log: Path) -> list[list[str]]:
    return [line.split()[:2] for line in log.read_text().splitlines()] if log.exists() else []


def all_threads_stopped(pid: int) -> bool:
    """True once the kernel has stopped every thread of `pid`: SIGSTOP is delivered
    to a running thread only when it next enters the kernel, so until then it can
    still take a write lock after the check below has found none."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that has just ended
            continue
        if stat.rpartition(")")[2].split()[0] not in ("T", "t"):
            return False
    return True


def freeze_outside_a_write(proc: subprocess.Popen[str], store_url: str) -> None:
    """SIGSTOP `proc`, at a moment it holds no SQLite write lock: a process frozen
    inside a transaction would hold every other process's writes up (that is
    SQLite's locking, not what this test is about)."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: all_threads_stopped(proc.pid), timeout=10,
                 what="every thread of the worker to be stopped")  # fmt: skip
        if not store_url.startswith("sqlite"):
            return
        db = sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=0.2)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen mid-write: let it finish, try again
            proc.send_signal(signal.SIGCONT)
        finally:
            db.close()
    raise AssertionError("could not freeze the worker outside a write")


def test_a_worker_that_lost_its_lease_can_no_longer_write(
    store_url: str, client: Underway, tmp_path: Path
) -> None:
    log, gate = tmp_path / "runs.log", tmp_path / "gate"
    group = WorkerProcs(store_url, lease=1.0, workers=1)
    problems = []
    try:
        a = group.spawn()
        job = client.submit("pid_stream", log=str(log), gate=str(gate), items=ITEMS)
        wait_for(lambda: len(client.output(job.id)) >= 3, timeout=15,
                 what="A to have written some output")  # fmt: skip
        freeze_outside_a_write(a, store_url)
        before_stop = len(client.output(job.id))

        b = group.spawn()
        wait_for(lambda: ["hold", str(b.pid)] in lines(log), timeout=15,
                 what="B to recover the job and run it half-way")  # fmt: skip
        # B's items so far, flushed (B is held after item 5).
        wait_for(lambda: any(item["pid"] == b.pid and item["i"] == 5
                             for item in client.output(job.id, limit=100)),
                 timeout=10, what="B's first items stored")  # fmt: skip

        a.send_signal(signal.SIGCONT)
        wait_for(lambda: ["done", str(a.pid)] in lines(log), timeout=15,
                 what="A's run to go on to its end")  # fmt: skip
        # A stops cleanly: every write it had left is attempted before it exits.
        assert group.terminate(a) == 0

        during = client.get(job.id)
        if during.state is not State.RUNNING or during.attempt != 2:
            problems.append(
                f"while B still ran attempt 2, A's late writes left the job "
                f"{during.state.value} at attempt {during.attempt} (result {during.result!r})"
            )
        if during.progress.message != f"pid {b.pid}":
            problems.append(
                f"while B still ran, the progress was {during.progress.message!r} "
                f"(A is pid {a.pid}, B is pid {b.pid})"
            )
        gate.touch()
        final = client.wait(job.id, timeout=30)
        assert group.terminate(b) == 0
    finally:
        group.close()

    output = client.output(job.id, limit=1000)
    assert lines(log) == [
        ["start", str(a.pid)], ["start", str(b.pid)], ["hold", str(b.pid)],
        ["done", str(a.pid)], ["done", str(b.pid)],
    ]  # fmt: skip
    if final.state is not State.SUCCEEDED or final.result != {"pid": b.pid}:
        problems.append(f"the job ended {final.state.value} with {final.result!r}, not B's result")
    if final.attempt != 2:
        problems.append(f"the final record is of attempt {final.attempt}, not 2")
    if final.progress.message != f"pid {b.pid}":
        problems.append(f"the final progress is {final.progress.message!r}, not B's")
    from_a = [item for item in output if item["pid"] == a.pid]
    if output != [{"pid": b.pid, "i": i} for i in range(ITEMS)]:
        problems.append(
            f"the latest attempt's output has {len(output)} items, {len(from_a)} of them from "
            f"the stopped worker A (A had {before_stop} stored before SIGSTOP; "
            f"{len(from_a) - before_stop} came after its lease was gone)"
        )
    assert not problems, "\n".join(problems)
