"""Promise: the latest attempt's output has no duplicates or gaps, whatever crashes.

Worker processes running 200 jobs that each emit 0..9 are SIGKILLed at random
moments and restarted on the same store. In the end every job has ended once,
succeeded, and `uw.output(job_id)` (the latest attempt by default) is exactly
[0, 1, ..., 9]: nothing a dead attempt emitted shows up in it.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.crash.crash_app import build_app
from tests.crash.procs import WorkerProcs
from tests.support.wait import wait_for
from underway import EventKind, State, Underway

pytestmark = [pytest.mark.slow]

JOBS = 200
ITEMS = list(range(10))


def seed() -> int:
    """UNDERWAY_CRASH_SEED replays a run; otherwise a fresh seed, shown on failure."""
    return int(os.environ.get("UNDERWAY_CRASH_SEED", random.randrange(1 << 30)))


def ended_count(uw: Underway) -> int:
    return sum(
        len(uw.list_jobs(task="count_to_ten", state=state, limit=JOBS + 1).jobs)
        for state in (State.SUCCEEDED, State.FAILED, State.CANCELLED)
    )


def partly_emitted(uw: Underway) -> bool:
    running = uw.list_jobs(task="count_to_ten", state=State.RUNNING, limit=JOBS + 1).jobs
    return any(r.attempt == 1 and 0 < r.output_count < len(ITEMS) for r in running)


def kill_and_restart(
    store_url: str, *, processes: int, workers: int, kills: int, rng: random.Random
) -> list[str]:
    """Run JOBS jobs on `processes` worker processes; SIGKILL one of them `kills` times
    at random moments (restarting it each time); returns the job ids once all ended."""
    uw = build_app(store_url)
    group = WorkerProcs(store_url, lease=1.0, workers=workers)
    try:
        ids = [h.id for h in uw.submit_many("count_to_ten", [{"n": n} for n in range(JOBS)])]
        # Kill when so many jobs have ended, plus a random delay, so that the kills fall
        # at random points of the running jobs' output; spaced so that no job can be
        # caught by more kills than it has attempts.
        marks = sorted(rng.sample(range(15, JOBS - 15, 25), kills))
        for _ in range(processes):
            group.spawn()
        for mark in marks:
            wait_for(lambda m=mark: ended_count(uw) >= m, timeout=30, interval=0.02,
                     what=f"{mark} jobs ended")  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.1))  # the random moment of the kill
            # ... taken, if it comes within a second, when some running job has
            # emitted part of its items (best effort: the kill comes anyway).
            deadline = time.monotonic() + 1.0
            while not partly_emitted(uw) and time.monotonic() < deadline:
                time.sleep(0.01)
            victim = rng.choice(group.alive())
            group.kill(victim)
            group.spawn()
        wait_for(lambda: ended_count(uw) == JOBS, timeout=60, interval=0.1,
                 what="every job ended")  # fmt: skip
    finally:
        group.close()
        uw.close()
    return ids


def check_jobs(store_url: str, ids: list[str], seed_used: int) -> None:
    uw = build_app(store_url)
    problems: list[str] = []
    bad_output: list[tuple[str, int, list[int]]] = []
    retried = duplicated = lost = 0
    try:
        for job_id in ids:
            record = uw.get(job_id)
            if record.attempt > 1:
                retried += 1
            if record.state is not State.SUCCEEDED:
                problems.append(
                    f"job {job_id} ended {record.state.value}"
                    f" ({record.error.type if record.error else ''})"
                )
            if record.attempt > record.max_attempts:
                problems.append(
                    f"job {job_id}: attempt {record.attempt} > max_attempts {record.max_attempts}"
                )
            done = [e for e in uw.events(job_id) if e.kind is EventKind.DONE]
            if len(done) != 1:
                problems.append(f"job {job_id} ended {len(done)} times")
            items = uw.output(job_id)
            if items != ITEMS:
                bad_output.append((job_id, record.attempt, items))
                duplicated += len(items) - len(set(items))
                lost += len(set(ITEMS) - set(items))
    finally:
        uw.close()
    if bad_output:
        examples = "; ".join(
            f"{job_id} (attempt {attempt}): {items}" for job_id, attempt, items in bad_output[:3]
        )
        problems.insert(
            0,
            f"{len(bad_output)} of {len(ids)} jobs ({retried} retried) have a latest-attempt "
            f"output other than 0..9: {duplicated} duplicated and {lost} lost items; "
            f"e.g. {examples}",
        )
    assert not problems, f"seed {seed_used}:\n" + "\n".join(problems[:20])
    # The test proves something only if some jobs were caught by a kill.
    assert retried > 0, f"seed {seed_used}: no job was retried; the kills caught nothing"


def test_sigkilled_worker_on_sqlite_leaves_clean_latest_attempt_output(
    tmp_path: Path,
) -> None:
    used = seed()
    url = f"sqlite:///{tmp_path}/jobs.db"
    ids = kill_and_restart(url, processes=1, workers=4, kills=5, rng=random.Random(used))
    check_jobs(url, ids, used)


def test_four_sigkilled_processes_on_one_sqlite_file_leave_clean_output(
    tmp_path: Path,
) -> None:
    used = seed()
    url = f"sqlite:///{tmp_path}/jobs.db"
    ids = kill_and_restart(url, processes=4, workers=2, kills=5, rng=random.Random(used))
    check_jobs(url, ids, used)


@pytest.mark.redis
def test_sigkilled_worker_on_redis_leaves_clean_latest_attempt_output(
    redis_store_url: str,
) -> None:
    used = seed()
    ids = kill_and_restart(
        redis_store_url, processes=1, workers=4, kills=5, rng=random.Random(used)
    )
    check_jobs(redis_store_url, ids, used)
