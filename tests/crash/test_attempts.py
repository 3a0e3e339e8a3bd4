"""Promise: `retries=N` means at most N+1 starts of the code, whatever crashes.

A job whose code SIGKILLs its own worker process hides at a given position in a
backlog of no-op jobs submitted before the worker starts, so that the worker claims
it in a batch (up to 16 at once) and may hold it, claimed but not started, for a
while. The worker process is restarted after every death until every job has ended.

With one slot, a fresh worker of commit 4d3517d claimed 1, 1, 2, 4, 8 and 16 jobs
(the first job, run cold, is not short): positions 1 and 5 come first in their
claim, positions 10 and 20 wait in one, claimed but not started.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.crash_app import build_app
from tests.crash.procs import WorkerProcs
from tests.support.wait import wait_for
from underway import State, Underway

pytestmark = [pytest.mark.slow]

BACKLOG = 32  # jobs in all, the poison job among them (claims of 1, 2, 4, 8, 16)
MAX_DEATHS = 8  # a bound on the restarts: the promise allows one death


@pytest.fixture
def client(store_url: str) -> Iterator[Underway]:
    """The submitting side: the same tasks, no workers of its own."""
    uw = build_app(store_url, lease=1.0)
    yield uw
    uw.close()


TERMINAL = (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@pytest.mark.parametrize("position", [1, 5, 10, 20])
def test_a_job_that_kills_its_worker_is_started_once_at_any_batch_position(
    store_url: str, client: Underway, tmp_path: Path, position: int
) -> None:
    starts = tmp_path / "poison-starts"
    ids: list[str] = []
    poison_id = ""
    for p in range(1, BACKLOG + 1):
        if p == position:
            poison_id = client.submit("poison", starts=str(starts)).id
            ids.append(poison_id)
        else:
            ids.append(client.submit("noop").id)

    def ended() -> bool:
        return all(client.get(i).state in TERMINAL for i in ids)

    # One slot, so that the claims grow 1, 2, 4, 8, 16 as the backlog is drained.
    group = WorkerProcs(store_url, lease=1.0, workers=1)
    try:
        while True:
            proc = group.spawn(may_die=True)
            wait_for(lambda p=proc: p.poll() is not None or ended(), timeout=30, interval=0.05,
                     what="the worker to die or every job to end")  # fmt: skip
            if proc.poll() is None:
                break
            group.deaths += 1
            if group.deaths > MAX_DEATHS:
                break
    finally:
        group.close()

    lines = starts.read_text().split() if starts.exists() else []
    problems = []
    if len(lines) != 1:
        problems.append(
            f"poison job at position {position} started {len(lines)} times "
            f"(worker processes died {group.deaths} times)"
        )
    poison = client.get(poison_id)
    if poison.state is not State.FAILED or poison.error is None:
        problems.append(f"poison job ended {poison.state.value}, not failed")
    elif poison.error.type != "WorkerLost":
        problems.append(f"poison job failed with {poison.error.type}, not WorkerLost")
    if poison.attempt > poison.max_attempts:
        problems.append(f"poison job attempt {poison.attempt} > max_attempts {poison.max_attempts}")
    others = [client.get(i) for i in ids if i != poison_id]
    for record in others:
        if record.state is State.SUCCEEDED:
            continue
        if record.state is not State.FAILED or record.error is None:
            problems.append(f"no-op job {record.id} is {record.state.value}")
        elif record.error.type != "WorkerLost":
            problems.append(f"no-op job {record.id} failed with {record.error.type}")
    assert not problems, "\n".join(problems)
