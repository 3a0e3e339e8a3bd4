"""An idle watcher costs nothing: no store reads while its job does not change."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from underway import Underway
from underway.errors import JobNotFound
from underway.records import JobRecord
from underway.stores.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    """Counts the reads of one job's record."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0

    def get(self, job_id: str) -> JobRecord | None:
        self.reads += 1
        return super().get(job_id)


@pytest.fixture
def counted(tmp_path: Path) -> Any:
    store = CountingStore(str(tmp_path / "jobs.db"))
    # A new store takes one look at everything just after it opens; then it is quiet.
    assert store.settled.wait(5)
    uw = Underway(store)

    @uw.task
    def parked() -> None:
        return None

    yield uw, store
    uw.close()


def test_waiters_read_at_most_once_while_nothing_changes(counted: Any) -> None:
    uw, store = counted
    job = uw.submit("parked")  # no worker: it stays queued, nothing changes
    store.reads = 0
    with pytest.raises(TimeoutError):
        uw.wait(job.id, timeout=1.6)
    assert store.reads <= 1  # none when the submit's own write told the feed the job
    store.reads = 0
    with pytest.raises(TimeoutError):
        asyncio.run(job.result_async(timeout=1.6))
    assert store.reads <= 1


def test_an_on_done_callback_reads_only_when_the_job_changes(counted: Any) -> None:
    uw, store = counted
    done = threading.Event()
    job = uw.submit("parked", on_done=lambda record: done.set())
    # Let the dispatcher take its first look, then stay idle for a while.
    assert not done.wait(0.3)
    store.reads = 0
    assert not done.wait(1.6)
    assert store.reads == 0
    uw.cancel(job.id)  # a change: now it reads, and calls back
    assert done.wait(5)


def test_waiting_for_a_job_this_process_finished_reads_nothing_and_stays_true(
    tmp_path: Path,
) -> None:
    store = CountingStore(str(tmp_path / "jobs.db"))
    # Its first look at everything, just after it opens, forgets what was kept: done
    # before the record this test waits for is kept.
    assert store.settled.wait(5)
    uw = Underway(store, workers=1)

    @uw.task
    def add(a: int, b: int) -> int:
        return a + b

    uw.start()
    try:
        job = uw.submit("add", a=2, b=3, owner="ann")
        first = uw.wait(job.id, timeout=10)
        store.reads = 0
        again = uw.wait(job.id, timeout=10, owner="ann")
        assert store.reads == 0  # the final record was kept from the write that made it
        assert again.result == 5 and again.state == first.state == store.get(job.id).state
        assert again == store.get(job.id)  # the same record a read gives
        with pytest.raises(JobNotFound):
            uw.wait(job.id, timeout=1, owner="bob")  # another owner's job stays unknown
        uw.annotate(job.id, {"note": "seen"})
        assert uw.wait(job.id, timeout=1).meta["note"] == "seen"  # changes drop what was kept
        uw.delete(job.id)
        with pytest.raises(JobNotFound):
            uw.wait(job.id, timeout=1)
    finally:
        uw.close()


def test_an_unfinished_job_is_waited_for_by_its_owner_and_unknown_to_another(
    tmp_path: Path,
) -> None:
    """A job the store said is there and unfinished (its submission here) is waited for
    until it ends; asked for by another owner, it is unknown at once, not waited for."""
    store = CountingStore(str(tmp_path / "jobs.db"))
    assert store.settled.wait(5)
    uw = Underway(store, workers=1)
    release = threading.Event()

    @uw.task
    def held() -> int:
        assert release.wait(10)
        return 7

    uw.start()
    try:
        job = uw.submit("held", owner="ann")
        with pytest.raises(TimeoutError):
            uw.wait(job.id, timeout=0.2)
        with pytest.raises(JobNotFound):
            uw.wait(job.id, timeout=5, owner="bob")
        release.set()
        assert uw.wait(job.id, timeout=10, owner="ann").result == 7
    finally:
        release.set()
        uw.close()
