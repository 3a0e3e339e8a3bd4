"""Promise: `handle.wait()` in the process that submitted a job returns the job's true
end, also when a worker running it is SIGKILLed: the waiter is not woken for good by
the lost attempt nor by its requeue, and it hears the retry's end.

On Redis the ends of a process's own jobs come to it on its own channel (no
subscription to the job's); the job's requeue after the lost lease and its retry in
another worker process must keep that working.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.crash.crash_app import build_app
from tests.crash.procs import WorkerProcs
from tests.support.wait import wait_for
from underway import State, Underway
from underway.stores.redis import RedisStore

pytestmark = [pytest.mark.slow]


@pytest.fixture
def client(store_url: str) -> Iterator[Underway]:
    """The submitting side: the same tasks, no workers of its own."""
    uw = build_app(store_url, lease=1.0)
    yield uw
    uw.close()


def _starts(log: Path) -> list[tuple[int, int]]:
    """(pid, attempt) of each start the job noted."""
    if not log.exists():
        return []
    return [
        (int(pid), int(attempt))
        for kind, pid, *rest in (line.split() for line in log.read_text().splitlines())
        if kind == "start"
        for attempt in rest
    ]


def test_a_waiter_in_the_submitting_process_gets_the_retrys_end_after_a_sigkill(
    store_url: str, client: Underway, tmp_path: Path
) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    gate.touch()  # the retry does not hold
    group = WorkerProcs(store_url, lease=1.0, workers=1)
    try:
        first = group.spawn()
        store = client.store
        if isinstance(store, RedisStore):  # its channel is heard: ends come there
            wait_for(lambda: store._listener._hearing, what="the client's channel")
        handle = client.submit("pid_stream", log=str(log), gate=str(gate), items=20)
        if isinstance(store, RedisStore):
            assert store._listener.hears(handle.id)
        outcome: dict[str, Any] = {}

        def wait() -> None:
            try:
                outcome["result"] = handle.wait(timeout=60)
            except BaseException as exc:  # reported by the test's thread below
                outcome["error"] = exc

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        wait_for(lambda: _starts(log), timeout=30, what="the first attempt to start")
        assert _starts(log) == [(first.pid, 1)]
        group.kill(first)
        assert not outcome, f"the waiter returned while the job was lost: {outcome}"
        second = group.spawn()
        waiter.join(60)
        assert not waiter.is_alive(), "the waiter never heard the retry's end"
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"] == {"pid": second.pid}
        assert _starts(log) == [(first.pid, 1), (second.pid, 2)]
        ended = client.get(handle.id)
        assert ended.state is State.SUCCEEDED and ended.attempt == 2
    finally:
        group.close()
