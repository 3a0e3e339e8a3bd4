"""Store contract: progress, output, events, cancel, lost jobs, expiry, waiting."""

from __future__ import annotations

import threading
import time

from tests.contract.helpers import LEASE, WORKER, claim_one, finish, output_item, record, submit
from underway.feed import WORK
from underway.records import EventKind, Progress, State
from underway.stores import Store


def test_progress_output_and_log_keep_one_order(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    now = time.time()
    store.save_progress(job.id, Progress(current=1, total=4, message="one"), now)
    store.append(job.id, [output_item({"row": 0}), (EventKind.LOG, '"a line"'),
                          output_item("tok")], now)  # fmt: skip
    store.save_progress(job.id, Progress(current=2, total=4), now)
    store.append(job.id, [output_item(3)], now)
    store.append(job.id, [], now)
    events = store.events(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind.value, e.data) for e in events[2:]] == [
        ("progress", Progress(current=1, total=4, message="one").to_dict()),
        ("output", {"index": 0, "item": {"row": 0}}),
        ("log", "a line"),
        ("output", {"index": 1, "item": "tok"}),
        ("progress", Progress(current=2, total=4).to_dict()),
        ("output", {"index": 2, "item": 3}),
    ]
    assert events[2].at == now
    got = store.get(job.id)
    assert got is not None and got.output_count == 3
    assert got.progress == Progress(current=2, total=4)
    assert store.output(job.id) == [{"row": 0}, "tok", 3]
    assert store.output(job.id, after=1) == ["tok", 3]
    assert store.output(job.id, after=1, limit=1) == ["tok"]
    assert store.output(job.id, after=3) == []
    assert [e.seq for e in store.events(job.id, after=4)] == list(range(5, len(events) + 1))
    assert [e.seq for e in store.events(job.id, after=4, limit=2)] == [5, 6]
    assert store.events(job.id, after=len(events)) == []


def test_progress_is_ignored_once_the_job_is_not_running(store: Store) -> None:
    job = submit(store)
    store.save_progress(job.id, Progress(current=1), time.time())
    got = store.get(job.id)
    assert got is not None and got.progress == Progress()
    assert [e.kind for e in store.events(job.id)] == [EventKind.STATE]


def test_many_output_items_in_one_batch(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    store.append(job.id, [output_item(i) for i in range(2500)], time.time())
    assert store.output(job.id, after=2490) == list(range(2490, 2500))
    assert store.get(job.id).output_count == 2500  # type: ignore[union-attr]
    last = store.events(job.id, after=2500)
    assert [e.data for e in last] == [{"index": 2498, "item": 2498}, {"index": 2499, "item": 2499}]


def test_cancel_queued_is_at_once(store: Store) -> None:
    job = submit(store)
    now = time.time()
    got = store.request_cancel(job.id, now)
    assert got is not None and got.state is State.CANCELLED
    assert got.error is not None and got.error.type == "Cancelled"
    assert got.finished_at == now and got.expires_at == now + job.keep_for
    assert store.events(job.id)[-1].kind is EventKind.DONE
    assert store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now) == []


def test_cancel_running_sets_the_flag(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    got = store.request_cancel(job.id, time.time())
    assert got is not None and got.state is State.RUNNING and got.cancel_requested
    again = store.request_cancel(job.id, time.time())
    assert again is not None and again.cancel_requested
    logs = [e.data for e in store.events(job.id) if e.kind is EventKind.LOG]
    assert logs == ["cancel requested"]
    done = finish(store, job.id, state=State.CANCELLED)
    assert done is not None and done.state is State.CANCELLED


def test_cancel_terminal_changes_nothing(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    finish(store, job.id, result=1)
    before = store.events(job.id)
    got = store.request_cancel(job.id, time.time())
    assert got is not None and got.state is State.SUCCEEDED and not got.cancel_requested
    assert store.events(job.id) == before
    assert store.request_cancel("unknown", time.time()) is None


def test_recover_lost_requeues_while_attempts_remain(store: Store) -> None:
    submit(store, max_attempts=2)
    now = time.time()
    job = claim_one(store, now=now, lease=5.0)
    assert store.recover_lost(now + 4) == []
    [lost] = store.recover_lost(now + 6)
    assert lost.id == job.id and lost.state is State.QUEUED
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert store.get(job.id).state is State.QUEUED  # type: ignore[union-attr]
    assert store.events(job.id)[-1].data["state"] == "queued"
    again = claim_one(store, worker="w2", now=now + 7)
    assert again.attempt == 2
    # The old holder can no longer finish it.
    assert finish(store, job.id, worker=WORKER) is None
    [failed] = store.recover_lost(now + 7 + LEASE + 1)
    assert failed.state is State.FAILED and failed.error is not None
    assert failed.error.type == "WorkerLost"
    assert store.events(job.id)[-1].kind is EventKind.DONE


def test_recover_lost_gives_back_the_attempt_of_a_job_that_never_started(
    store: Store,
) -> None:
    first = submit(store, max_attempts=1)
    waiting = submit(store, max_attempts=1)
    now = time.time()
    got = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=5.0, now=now, max_jobs=2)
    assert [r.id for r in got] == [first.id, waiting.id]
    lost = {r.id: r for r in store.recover_lost(now + 6)}
    assert lost[first.id].state is State.FAILED  # it had started: its one attempt is gone
    assert lost[first.id].error.type == "WorkerLost"  # type: ignore[union-attr]
    assert lost[waiting.id].state is State.QUEUED and lost[waiting.id].attempt == 0
    again = claim_one(store, worker="w2", now=now + 7)
    assert again.id == waiting.id and again.attempt == 1 and again.started_at == now + 7


def test_recover_lost_cancels_when_a_cancel_was_requested(store: Store) -> None:
    submit(store, max_attempts=3)
    now = time.time()
    job = claim_one(store, now=now, lease=1.0)
    store.request_cancel(job.id, now)
    [lost] = store.recover_lost(now + 2)
    assert lost.state is State.CANCELLED


def test_purge_deletes_expired_jobs_with_their_events_and_output(store: Store) -> None:
    now = time.time()
    submit(store, now=now)
    short = claim_one(store, now=now)
    store.append(short.id, [output_item("x")], now)
    finish(store, short.id, now=now, keep_for=10.0)
    submit(store, idempotency_key="idem", now=now)
    long = claim_one(store, now=now)
    finish(store, long.id, now=now, keep_for=100.0)
    active = submit(store)
    assert store.purge(now + 5) == 0
    assert store.purge(now + 11) == 1
    assert store.get(short.id) is None
    assert store.events(short.id) == [] and store.output(short.id) == []
    assert store.get(long.id) is not None
    assert store.purge(now + 5, finished_before=now + 1) == 1
    assert store.get(long.id) is None
    # The idempotency key went with its job.
    _, created = store.enqueue(record(idempotency_key="idem"))
    assert created
    assert store.get(active.id) is not None
    assert store.purge(now + 10_000) == 0


def test_wait_events_wakes_when_another_thread_appends(store: Store, other_store: Store) -> None:
    submit(store)
    job = claim_one(store)
    after = len(store.events(job.id))
    waiting = threading.Event()
    result: list[object] = []

    def waiter() -> None:
        waiting.set()
        result.append(store.wait_events(job.id, after, timeout=20.0))

    thread = threading.Thread(target=waiter)
    started = time.monotonic()
    thread.start()
    waiting.wait(5)
    other_store.append(job.id, [output_item("hello")], time.time())
    thread.join(timeout=20)
    elapsed = time.monotonic() - started
    [events] = result
    assert [e.data for e in events] == [{"index": 0, "item": "hello"}]  # type: ignore[attr-defined]
    # Far sooner than the timeout: the waiter was woken, not timed out.
    assert elapsed < 5.0


def test_wait_events_returns_empty_after_the_timeout(store: Store) -> None:
    job = submit(store)
    assert store.wait_events(job.id, 1, timeout=0.05) == []


def test_notifier_reports_changes_made_through_another_handle(
    store: Store, other_store: Store
) -> None:
    submit(store)
    job = claim_one(store)
    woken = threading.Event()
    unsubscribe = store.notifier.subscribe(job.id, woken.set)
    try:
        # Wait until the subscription is live (Redis confirms asynchronously): two
        # changes in a row must each wake us, since a store that has just connected
        # wakes everyone once on its own.
        deadline = time.monotonic() + 10
        in_a_row = 0
        while in_a_row < 2:
            woken.clear()
            other_store.save_progress(job.id, Progress(current=1), time.time())
            in_a_row = in_a_row + 1 if woken.wait(0.5) else 0
            assert time.monotonic() < deadline
        seen = store.notifier.version(job.id)
        other_store.request_cancel(job.id, time.time())
        assert store.notifier.wait(job.id, seen, 10.0) != seen
    finally:
        unsubscribe()


def test_wait_for_work_wakes_an_idle_worker_when_a_job_is_submitted(
    store: Store, other_store: Store
) -> None:
    claimed_nothing = threading.Event()
    woke: list[float] = []

    def idle_worker() -> None:
        # As a worker slot does: note the version, find nothing, wait.
        seen = store.notifier.version(WORK)
        assert store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE,
                           now=time.time()) == []  # fmt: skip
        claimed_nothing.set()
        store.wait_for_work(seen, 30.0)
        woke.append(time.monotonic())

    thread = threading.Thread(target=idle_worker)
    thread.start()
    assert claimed_nothing.wait(10)
    submitted = time.monotonic()
    submit(other_store)
    thread.join(timeout=30)
    assert woke and woke[0] - submitted < 2.0


def test_events_of_unknown_job_are_empty(store: Store) -> None:
    assert store.events("nope") == []
    assert store.output("nope") == []
