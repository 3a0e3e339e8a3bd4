"""What only the SQLite store promises: jobs claimed at submission for an idle slot.

A submission made while a worker slot of the same store instance waits for work
claims the job for that slot in its own transaction, and hands the record over in
memory (see `SQLiteStore.enqueue`). These tests drive slots as the worker's slot loop
does (claim, find nothing, wait for work), each in a thread of its own, and the
embedded workers themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.contract.helpers import (
    LEASE,
    cancel,
    claim,
    claim_one,
    fence,
    finish,
    log_item,
    output_item,
    record,
    release,
    submit,
)
from tests.support.wait import wait_for
from underway import Underway, lifecycle
from underway.errors import StoreUnavailable
from underway.feed import WORK
from underway.records import ErrorInfo, Progress, State
from underway.stores import sqlite as sqlite_store
from underway.stores.sqlite import SQLiteStore

HOUR = 3600.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "jobs.db")


def _open(path: str, fallback_interval: float | None = None) -> SQLiteStore:
    """A store that took its look after binding its wake-up socket: from now on only
    changes wake its waiters."""
    opened = SQLiteStore(path, fallback_interval=fallback_interval)
    assert opened.settled.wait(5.0)
    return opened


@pytest.fixture
def store(db_path: str) -> Iterator[SQLiteStore]:
    opened = _open(db_path)
    yield opened
    opened.close()


class IdleSlot:
    """A worker slot in a thread of its own: it claims (finding nothing), then waits
    for work once; `woken` is set when that wait ends (the test claims in its stead)."""

    def __init__(
        self,
        store: SQLiteStore,
        worker: str,
        tasks: tuple[str, ...] = ("t",),
        limits: dict[str, int] | None = None,
    ) -> None:
        self.woken = threading.Event()
        self.found: list[str] | None = None
        self.thread = threading.Thread(
            target=self._run, args=(store, worker, tasks, limits), daemon=True
        )

    def _run(
        self, store: SQLiteStore, worker: str, tasks: tuple[str, ...], limits: dict[str, int] | None
    ) -> None:
        seen = store.notifier.version(WORK)
        self.found = [r.id for r in claim(store, tasks, worker=worker, limits=limits)]
        store.wait_for_work(seen, 30.0)
        self.woken.set()


def _work_waiters(store: SQLiteStore) -> int:
    return len(store._feed._waiters.get(WORK, ()))


def idle_slots(
    store: SQLiteStore,
    count: int = 1,
    *,
    worker: str = "w-idle",
    tasks: tuple[str, ...] = ("t",),
    limits: dict[str, int] | None = None,
) -> list[IdleSlot]:
    """`count` slots of `worker`, all waiting for work once this returns."""
    before = _work_waiters(store)
    slots = [IdleSlot(store, worker, tasks, limits) for _ in range(count)]
    for slot in slots:
        slot.thread.start()
    # A slot is listed for claims at submission before it waits among the waiters.
    wait_for(lambda: _work_waiters(store) == before + count, what="the slots to wait")
    assert all(slot.found == [] for slot in slots)
    return slots


class Statements:
    """The statements the store's writing connection runs meanwhile."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.seen: list[str] = []

    def __enter__(self) -> list[str]:
        self.store._db.set_trace_callback(self.seen.append)
        return self.seen

    def __exit__(self, *exc: object) -> None:
        self.store._db.set_trace_callback(None)


def _history(store: SQLiteStore, job_id: str) -> list[tuple[object, ...]]:
    return [(e.seq, e.kind, e.data, e.attempt) for e in store.events(job_id)]


def test_a_job_submitted_to_an_idle_slot_is_claimed_for_it_as_its_claim_would(
    store: SQLiteStore,
) -> None:
    """The submission claims the job for the waiting slot and wakes it: its worker's
    next claim takes it without a statement, as its own claim would have claimed it
    (attempt 1, its lease, the same events), and no other worker gets it."""
    [slot] = idle_slots(store)
    job = submit(store)
    assert slot.woken.wait(5.0)  # the submission woke it
    held = store.get(job.id)
    assert held is not None
    assert (held.state, held.attempt, held.worker) == (State.RUNNING, 1, "w-idle")
    assert held.lease_until == pytest.approx(held.created_at + LEASE)
    assert held.started_at == held.created_at
    assert claim(store, worker="w-other") == []  # not in the queue
    with Statements(store) as ran:
        got = claim_one(store, worker="w-idle")
    assert ran == []  # handed over in memory
    assert got == store.get(job.id)
    done = finish(store, got)
    assert done is not None and done.state is State.SUCCEEDED
    queued = submit(store)  # no slot waits now: queued, and claimed as ever
    assert store.get(queued.id).state is State.QUEUED  # type: ignore[union-attr]
    finish(store, claim_one(store, worker="w-idle"))
    assert _history(store, job.id) == _history(store, queued.id)


def test_jobs_claimed_for_a_worker_that_stops_go_back_to_the_queue(store: SQLiteStore) -> None:
    [slot] = idle_slots(store)
    job = submit(store)
    assert slot.woken.wait(5.0)
    assert store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
    store.heartbeat("w-idle", ["t"], 0.0)  # it stopped without taking it
    back = store.get(job.id)
    assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
    assert [e.data for e in store.events(job.id)][-1]["state"] == "queued"
    assert claim_one(store, worker="w-next").id == job.id
    idle_slots(store)  # a slot of the stopped worker, waiting: none is claimed for it
    later = submit(store)
    assert store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]


def test_jobs_claimed_for_a_slot_go_back_to_the_queue_when_the_store_closes(
    store: SQLiteStore, db_path: str
) -> None:
    [slot] = idle_slots(store)
    job = submit(store)
    assert slot.woken.wait(5.0)
    store.close()
    reopened = SQLiteStore(db_path)
    try:
        back = reopened.get(job.id)
        assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
        assert claim_one(reopened, worker="w-next").id == job.id
    finally:
        reopened.close()


def test_a_job_queued_ahead_is_not_passed_by_a_submission(store: SQLiteStore) -> None:
    """Claims take jobs oldest first: a submission claims nothing for an idle slot
    while a due job of its tasks waits in the queue (it only tells the slot)."""
    now = time.time()
    ahead = submit(store, now=now, run_at=now + 60.0)  # not due yet: queued
    idle_slots(store)  # its claim finds nothing due
    later = submit(store, now=now + 120.0)  # `ahead` is due by then
    assert store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
    got = claim(store, worker="w-idle", now=now + 120.0, max_jobs=2)
    assert [r.id for r in got] == [ahead.id, later.id]


def test_delayed_jobs_and_tasks_with_a_concurrency_limit_are_queued(store: SQLiteStore) -> None:
    now = time.time()
    idle_slots(store)
    delayed = submit(store, now=now, run_at=now + 60.0)
    assert store.get(delayed.id).state is State.QUEUED  # type: ignore[union-attr]
    idle_slots(store, limits={"t": 5})
    limited = submit(store)
    assert store.get(limited.id).state is State.QUEUED  # type: ignore[union-attr]


def test_jobs_with_keys_are_claimed_for_a_slot_after_their_keys_are_checked(
    store: SQLiteStore,
) -> None:
    [slot] = idle_slots(store)
    keyed = submit(store, idempotency_key="k", supersede_key="s")
    assert slot.woken.wait(5.0)
    assert store.get(keyed.id).state is State.RUNNING  # type: ignore[union-attr]
    idle_slots(store, worker="w-2")
    existing, created, _ = store.enqueue(record(idempotency_key="k"), lifecycle.submitted())
    assert not created and existing.id == keyed.id  # nothing claimed for the slot
    replacing, created, superseded = store.enqueue(record(supersede_key="s"), lifecycle.submitted())
    assert created and superseded == [keyed.id]
    assert store.get(replacing.id).state is State.RUNNING  # type: ignore[union-attr]


def test_an_idle_worker_is_handed_as_many_jobs_as_it_has_slots_waiting(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    slots = idle_slots(store, 2)
    handed: list[threading.Event] = []
    hand_over = store._feed.hand_over
    monkeypatch.setattr(store._feed, "hand_over", handed.append)  # the slots sleep on
    pushed = [submit(store) for _ in range(2)]
    queued = submit(store)
    states = [store.get(job.id).state for job in [*pushed, queued]]  # type: ignore[union-attr]
    assert states == [State.RUNNING] * 2 + [State.QUEUED]
    monkeypatch.undo()
    assert len(handed) == 2
    for event in handed:
        hand_over(event)
    for slot in slots:
        assert slot.woken.wait(5.0)  # each claim woke one
    # The queued job was announced since the worker found its queue drained: a claim
    # for more than the jobs claimed for it takes the queue's too.
    taken = claim(store, worker="w-idle", max_jobs=4)
    assert [job.id for job in taken] == [*(job.id for job in pushed), queued.id]


def test_a_claim_takes_its_jobs_claimed_at_submission_alone_unless_work_came_since(
    store: SQLiteStore,
) -> None:
    """A claim for more jobs than were claimed for its worker returns those alone
    (its slot then holds the queue for drained) only while no other work was announced
    since its worker found the queue drained; else it claims the rest as ever."""
    idle_slots(store)
    alone = submit(store)
    with Statements(store) as ran:
        assert [r.id for r in claim(store, worker="w-idle", max_jobs=2)] == [alone.id]
    assert ran == []
    idle_slots(store)
    pushed = submit(store)
    queued = record()
    store.enqueue_many([queued], lifecycle.submitted())  # announced, not claimed at once
    got = claim(store, worker="w-idle", max_jobs=2)
    assert [r.id for r in got] == [pushed.id, queued.id]


def test_jobs_claimed_for_a_worker_whose_slots_are_all_busy_go_back_to_the_queue(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    idle_slots(store)
    job = submit(store)
    store.renew(worker="w-idle", fences={}, lease=LEASE, now=time.time())
    assert store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]  # still fresh
    monkeypatch.setattr(sqlite_store, "_PUSH_HOSTAGE", 0.0)
    store.renew(worker="w-idle", fences={}, lease=LEASE, now=time.time())
    back = store.get(job.id)
    assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
    assert claim_one(store, worker="w-other").id == job.id


def test_jobs_claimed_at_submission_wait_again_when_the_claim_that_took_them_fails(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    idle_slots(store)
    job = submit(store)
    queued = submit(store)  # a decision to write with the claim
    cancelling = lifecycle.cancel(store.get(queued.id), now=time.time())  # type: ignore[arg-type]
    assert cancelling is not None

    def unavailable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("the disk is full")

    monkeypatch.setattr(store, "_claim_any", unavailable)
    with pytest.raises(StoreUnavailable):
        store.apply_and_claim(
            [cancelling], worker="w-idle", tasks=["t"], limits={}, lease=LEASE,
            now=time.time(), max_jobs=2,
        )  # fmt: skip
    monkeypatch.undo()
    assert store.get(queued.id).state is State.QUEUED  # type: ignore[union-attr]
    assert [r.id for r in claim(store, worker="w-idle")] == [job.id]


def test_work_is_announced_only_once_the_job_claimed_for_a_slot_can_be_taken(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot that sees WORK's version move on after a claim at submission (and so
    claims, rather than only write its ends) finds the job among those it takes."""
    idle_slots(store)
    takeable: list[list[str]] = []
    hand_over = store._feed.hand_over

    def looked(event: threading.Event) -> None:
        takeable.append([p.record.id for p in store._pushed])
        hand_over(event)

    monkeypatch.setattr(store._feed, "hand_over", looked)
    job = submit(store)
    assert takeable == [[job.id]]


def test_a_submission_from_another_store_instance_is_queued(
    store: SQLiteStore, db_path: str
) -> None:
    other = _open(db_path)
    try:
        [slot] = idle_slots(store)
        job = submit(other)
        assert slot.woken.wait(5.0)  # told through the wake-up channel
        assert store.get(job.id).state is State.QUEUED  # type: ignore[union-attr]
    finally:
        other.close()


def test_a_worker_that_found_its_queue_drained_claims_a_delayed_job_once_due(
    store: SQLiteStore,
) -> None:
    """A claim made while no work was announced since its worker found the queue
    drained looks before it claims (see `_claim_any`): a job that only became due
    meanwhile, which nobody announces, is still found."""
    now = time.time()
    delayed = submit(store, now=now, run_at=now + 60.0)
    assert claim(store, worker="w", now=now) == []
    with Statements(store) as ran:
        assert claim(store, worker="w", now=now + 1.0) == []
    assert not any(sql.startswith("UPDATE") for sql in ran)  # it only looked
    got = claim(store, worker="w", now=now + 61.0)
    assert [r.id for r in got] == [delayed.id]


def _started_at_submission(store: SQLiteStore, job_id: str) -> bool:
    """Was the job claimed by its submission (its claim's event is at its creation)?"""
    found = store.get(job_id)
    events = store.events(job_id)
    return found is not None and events[1].at == found.created_at


def test_embedded_workers_run_jobs_claimed_for_them_without_waiting_for_a_poll(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing but the submission wakes an idle slot here (the idle poll and the
    fallback poll are an hour long): jobs submitted one by one to waiting slots are
    claimed at their submission, and those submitted a few at once too, or queued;
    all end within seconds, and each claim is logged."""
    store = _open(db_path, fallback_interval=HOUR)
    uw = Underway(store)

    @uw.task
    def double(n: int) -> int:
        return 2 * n

    caplog.set_level(logging.INFO, logger="underway.jobs")
    uw.start(2, idle_poll=HOUR)
    try:
        ids = []
        for n in range(40):
            wait_for(lambda: store._waiting and _work_waiters(store), what="an idle slot")
            handle = uw.submit("double", n=n)
            assert handle.wait(5.0) == 2 * n
            assert _started_at_submission(store, handle.id)
            ids.append(handle.id)
        for _ in range(10):
            handles = [uw.submit("double", n=n) for n in range(5)]
            assert [h.wait(5.0) for h in handles] == [2 * n for n in range(5)]
            ids += [h.id for h in handles]
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert all(
            f"job {job_id} double attempt 1/1: queued -> running" in logged for job_id in ids
        )
    finally:
        uw.close()


@pytest.mark.parametrize(
    ("state", "result", "error"),
    [
        (State.SUCCEEDED, {"rows": [1, 2], "n": 2.5}, None),
        (State.FAILED, None, ErrorInfo(type="ValueError", message="bad", traceback="tb")),
        (State.CANCELLED, None, None),
    ],
)
def test_the_final_record_a_waiter_takes_without_a_read_is_the_row_the_end_left(
    store: SQLiteStore, state: State, result: object, error: ErrorInfo | None
) -> None:
    """The end of a job this store claimed returns a few columns, not the whole row:
    the record a waiter takes is made of the claimed record, the end and those."""
    job = submit(store, meta={"a": 1}, owner="ann", priority=2)
    claimed = claim_one(store)
    now = time.time()
    held = fence(claimed)
    assert store.save_progress(job.id, held, Progress(current=3, total=10, message="m"), now)
    assert store.append(job.id, held, [output_item({"x": 1}), log_item("hi")], now)
    assert store.update_meta(job.id, {"b": 2})  # changed by someone else while it ran
    assert (
        finish(store, claimed, state=state, result=result, error=error, started_at=now) is not None
    )
    _, known = store.notifier.known(job.id)
    assert known is not None and known.record is None  # made only when asked for
    final = known.full()
    assert final == store.get(job.id)
    assert final is not None and final.meta == {"a": 1, "b": 2} and final.output_count == 1


def test_making_the_final_record_leaves_the_record_seen_while_the_job_ran_as_it_was(
    store: SQLiteStore,
) -> None:
    """The final record is made from the claimed record's fields, kept without the
    record: whoever holds the record they saw while the job ran (a watcher, the
    worker) keeps that snapshot, and every waiter gets the same final record."""
    job = submit(store)
    claimed = claim_one(store)
    _, known = store.notifier.known(job.id)
    assert known is not None and known.record is not None
    seen = known.record  # what a watcher took while it ran
    as_seen = dict(seen.__dict__)
    assert finish(store, claimed, state=State.SUCCEEDED, result={"n": 1}) is not None
    _, known = store.notifier.known(job.id)
    assert known is not None
    first, second = known.full(), known.full()
    assert first is not None and first.state is State.SUCCEEDED and first.result == {"n": 1}
    assert first == second == store.get(job.id)
    assert seen.__dict__ == as_seen and seen.state is State.RUNNING and seen.result is None
    assert claimed.state is State.RUNNING and claimed.worker is not None


def test_the_final_record_of_a_job_cancelled_while_it_ran_is_the_row_the_end_left(
    store: SQLiteStore,
) -> None:
    job = submit(store)
    claimed = claim_one(store)
    cancel(store, job.id)  # a cancel request: a decision of its own on the running job
    assert finish(store, claimed, state=State.CANCELLED) is not None
    _, known = store.notifier.known(job.id)
    assert known is not None
    final = known.full()
    assert final == store.get(job.id)
    assert final is not None and final.cancel_requested


def test_a_claim_hands_over_records_as_the_rows_it_left(store: SQLiteStore) -> None:
    """A job submitted here while a worker claims through this store is claimed as its
    submitted record changed by the claim (no read back); others are read back. Both
    are what a read of the job says right after."""
    before = submit(store)  # before any claim here: read back when claimed
    assert claim(store, tasks=("other",)) == []  # a worker claims through this store
    job = submit(store, meta={"a": 1}, owner="ann", priority=-1)
    assert store.update_meta(job.id, {"b": 2})  # changed while it was queued
    claimed = claim(store, max_jobs=3)
    assert [r.id for r in claimed] == [job.id, before.id]
    for r in claimed:
        assert r == store.get(r.id)
    assert claimed[0].meta == {"a": 1, "b": 2} and claimed[0].attempt == 1
    # Given back and claimed again: read back, as on any later attempt.
    assert release(store, [claimed[0]]) == [True]
    [again] = claim(store)
    assert again.id == job.id and again == store.get(job.id)
