"""Store contract: progress, output per attempt, events, cancel, lost jobs, expiry, waiting."""

from __future__ import annotations

import threading
import time

import pytest

from tests.contract.helpers import (
    BOOM,
    LEASE,
    WORKER,
    cancel,
    claim,
    claim_one,
    ended,
    enqueue,
    fence,
    finish,
    log_item,
    output_item,
    record,
    recover,
    submit,
)
from underway import lifecycle
from underway._util import dumps
from underway.feed import WORK
from underway.records import ErrorInfo, EventKind, Fence, Progress, State
from underway.stores import Store


def test_progress_output_and_log_keep_one_order(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    held = fence(job)
    now = time.time()
    assert store.save_progress(job.id, held, Progress(current=1, total=4, message="one"), now)
    assert store.append(job.id, held, [output_item({"row": 0}), log_item("a line"),
                                       output_item("tok")], now)  # fmt: skip
    assert store.save_progress(job.id, held, Progress(current=2, total=4), now)
    assert store.append(job.id, held, [output_item(3)], now)
    assert store.append(job.id, held, [], now)
    events = store.events(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.kind.value, e.data) for e in events[2:]] == [
        ("progress", Progress(current=1, total=4, message="one").to_dict()),
        ("output", {"attempt": 1, "index": 0, "item": {"row": 0}}),
        ("log", "a line"),
        ("output", {"attempt": 1, "index": 1, "item": "tok"}),
        ("progress", Progress(current=2, total=4).to_dict()),
        ("output", {"attempt": 1, "index": 2, "item": 3}),
    ]
    assert {e.attempt for e in events[1:]} == {1}
    assert events[2].at == now
    got = store.get(job.id)
    assert got is not None and got.output_count == 3
    assert got.progress == Progress(current=2, total=4)
    assert store.output(job.id) == [{"row": 0}, "tok", 3]
    assert store.output(job.id, attempt=1) == [{"row": 0}, "tok", 3]
    assert store.output(job.id, after=1) == ["tok", 3]
    assert store.output(job.id, after=1, limit=1) == ["tok"]
    assert store.output(job.id, after=3) == []
    assert [e.seq for e in store.events(job.id, after=4)] == list(range(5, len(events) + 1))
    assert [e.seq for e in store.events(job.id, after=4, limit=2)] == [5, 6]
    assert store.events(job.id, after=len(events)) == []


# Text a caller or a task may hand over: a NUL, backslashes, and the text `\0` (how
# PostgreSQL, whose text holds no NUL, keeps a NUL in the names it escapes).
ODD = ["a\x00b", "\x00", "a\\0b", "\\", "\\\x00", "é \u2603 \n"]


@pytest.mark.parametrize("flushed", [False, True], ids=["first-progress", "after-a-flush"])
def test_an_end_writes_the_last_progress_it_carries(store: Store, flushed: bool) -> None:
    """A worker's end carries the job's last progress (not written before): the end
    writes it, its event comes just before the end's, and the record the end is
    announced with shows it, as a read does."""
    submit(store)
    job = claim_one(store)
    held = fence(job)
    now = time.time()
    if flushed:
        assert store.save_progress(job.id, held, Progress(current=1, total=4), now)
    last = Progress(current=4, total=4, message="done")
    decision = lifecycle.ended(
        job,
        fence=held,
        state=State.SUCCEEDED,
        result=7,
        now=now,
        keep_for=60.0,
        started_at=None,
        progress=dumps(last.to_dict()),
    )
    applied, claimed = store.apply_and_claim(
        [decision], worker=WORKER, tasks=("t",), limits={}, lease=LEASE, now=now, max_jobs=0
    )
    assert (applied, claimed) == ([True], [])
    _, known = store.notifier.known(job.id)
    announced = None if known is None else known.full()
    first, stored = store.get(job.id), store.get(job.id)
    assert stored is not None and first == stored
    assert (stored.state, stored.result, stored.progress) == (State.SUCCEEDED, 7, last)
    assert announced is None or announced == stored
    events = store.events(job.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds[-3:] == [EventKind.PROGRESS, EventKind.STATE, EventKind.DONE]
    assert events[-3].data == last.to_dict() and events[-3].attempt == 1
    assert kinds.count(EventKind.PROGRESS) == 1 + flushed


def test_text_of_any_characters_reads_back_as_given(store: Store) -> None:
    """Parameters, meta (at submission and changed later), progress, output, log
    lines, a result and an error read back as they were given, on every path."""
    data = {text: text for text in ODD}
    job = submit(store, params={"p": ODD, **data}, meta={"m": ODD, **data})
    assert store.update_meta(job.id, {"later": ODD, **{t + "!": t for t in ODD}})
    meta = {"m": ODD, **data, "later": ODD, **{t + "!": t for t in ODD}}
    got = store.get(job.id)
    assert got is not None and got.params == {"p": ODD, **data} and got.meta == meta
    claimed = claim_one(store)
    assert claimed.params == got.params and claimed.meta == meta
    held = fence(claimed)
    now = time.time()
    for text in ODD:
        assert store.save_progress(job.id, held, Progress(current=1, message=text), now)
        got = store.get(job.id)
        assert got is not None and got.progress.message == text
    assert store.append(job.id, held, [output_item(ODD), *map(output_item, ODD)], now)
    assert store.append(job.id, held, [log_item(text) for text in ODD], now)
    assert store.output(job.id) == [ODD, *ODD]
    done = finish(store, claimed, result={"r": ODD, **data})
    assert done is not None and done.result == {"r": ODD, **data} and done.meta == meta
    events = [(e.kind, e.data) for e in store.events(job.id)]
    assert [d["message"] for k, d in events if k is EventKind.PROGRESS] == ODD
    assert [d["item"] for k, d in events if k is EventKind.OUTPUT] == [ODD, *ODD]
    assert [d for k, d in events if k is EventKind.LOG] == ODD
    failed = submit(store)
    error = ErrorInfo(type="Boom", message=ODD[0] + ODD[2], traceback="".join(ODD))
    assert finish(store, claim_one(store), state=State.FAILED, error=error) is not None
    got = store.get(failed.id)
    assert got is not None and got.error == error


def test_update_meta_changes_the_keys_it_names_and_keeps_the_others(store: Store) -> None:
    job = submit(store, meta={"a": 1, "b": {"x": 1}})
    assert store.update_meta(job.id, {"b": 2, "c": [3]})
    assert store.update_meta(job.id, {"d": "4"})
    got = store.get(job.id)
    assert got is not None and got.meta == {"a": 1, "b": 2, "c": [3], "d": "4"}
    bare = submit(store)
    assert store.update_meta(bare.id, {"k": "v"})
    got = store.get(bare.id)
    assert got is not None and got.meta == {"k": "v"}
    assert not store.update_meta("nope", {"k": "v"})


def test_update_meta_replaces_whole_values_and_keeps_the_others_exactly(store: Store) -> None:
    """A named key takes the new value as it is (an object is not merged into the old
    one, a null is kept as a null), and every other key reads back exactly: the same
    on every store."""
    kept = {"empty": [], "nested": {"empty": {}, "list": [1, 2.5]}, "precise": 0.1 + 0.2}
    job = submit(store, meta={**kept, "obj": {"x": 1, "y": 2}, "gone": 1})
    assert store.update_meta(job.id, {"obj": {"x": 3}, "gone": None, "new": {}})
    got = store.get(job.id)
    assert got is not None
    assert got.meta == {**kept, "obj": {"x": 3}, "gone": None, "new": {}}


def test_progress_and_output_are_refused_unless_running_under_the_fence(store: Store) -> None:
    job = submit(store)
    now = time.time()
    unclaimed = fence(job.evolve(worker=WORKER, attempt=1))
    assert not store.save_progress(job.id, unclaimed, Progress(current=1), now)
    assert not store.append(job.id, unclaimed, [output_item(1)], now)
    got = store.get(job.id)
    assert got is not None and got.progress == Progress() and got.output_count == 0
    assert [e.kind for e in store.events(job.id)] == [EventKind.STATE]
    claimed = claim_one(store)
    assert finish(store, claimed) is not None
    assert not store.save_progress(job.id, fence(claimed), Progress(current=1), now)
    assert not store.append(job.id, fence(claimed), [output_item(1)], now)
    assert store.output(job.id) == []
    assert store.events(job.id)[-1].kind is EventKind.DONE
    assert not store.save_progress("unknown", fence(claimed), Progress(current=1), now)
    assert not store.append("unknown", fence(claimed), [output_item(1)], now)


def test_many_output_items_in_one_batch(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    assert store.append(job.id, fence(job), [output_item(i) for i in range(2500)], time.time())
    assert store.output(job.id, after=2490) == list(range(2490, 2500))
    assert store.get(job.id).output_count == 2500  # type: ignore[union-attr]
    last = store.events(job.id, after=2500)
    assert [e.data for e in last] == [
        {"attempt": 1, "index": 2498, "item": 2498},
        {"attempt": 1, "index": 2499, "item": 2499},
    ]


def test_each_attempt_has_its_own_output(store: Store) -> None:
    submit(store, max_attempts=2)
    now = time.time()
    first = claim_one(store, now=now, lease=5.0)
    assert store.append(first.id, fence(first), [output_item("a"), output_item("b")], now)
    assert store.save_progress(first.id, fence(first), Progress(current=2, total=3), now)
    [lost] = recover(store, now + 6)
    assert lost.state is State.QUEUED and lost.attempt == 1
    second = claim_one(store, now=now + 7)
    assert second.attempt == 2 and second.output_count == 0
    assert second.progress == Progress()
    assert store.output(first.id) == []  # the latest attempt has emitted nothing yet
    assert store.append(first.id, fence(second), [output_item("x")], now + 8)
    assert store.output(first.id) == ["x"]
    assert store.output(first.id, attempt=2) == ["x"]
    assert store.output(first.id, attempt=1) == ["a", "b"]
    assert store.output(first.id, attempt=1, after=1) == ["b"]
    assert store.output(first.id, attempt=3) == []
    assert store.get(first.id).output_count == 1  # type: ignore[union-attr]
    outputs = [(e.attempt, e.data) for e in store.events(first.id) if e.kind is EventKind.OUTPUT]
    assert outputs == [
        (1, {"attempt": 1, "index": 0, "item": "a"}),
        (1, {"attempt": 1, "index": 1, "item": "b"}),
        (2, {"attempt": 2, "index": 0, "item": "x"}),
    ]
    assert finish(store, second, result="done") is not None
    assert store.output(first.id) == ["x"] and store.output(first.id, attempt=1) == ["a", "b"]


def test_a_batch_of_ends_applies_each_under_its_own_guard(store: Store) -> None:
    # A worker writes the ends of several short jobs together (one store call): each
    # applies or not by its own guard, with its own result and events.
    for _ in range(4):
        submit(store)
    now = time.time()
    a, b, c, d = claim(store, now=now, max_jobs=4)
    stale = Fence(worker=WORKER, attempt=b.attempt + 1)  # as if b were claimed again since
    decisions = [
        ended(a, result={"k": "a"}, now=now + 1, started_at=now + 0.5),
        ended(b, result={"k": "b"}, now=now + 1, started_at=now + 0.5, fence_=stale),
        ended(c, result={"k": "c"}, now=now + 1, started_at=now + 0.5),
        ended(d, state=State.FAILED, now=now + 1),  # no attempts left: a final failure
    ]
    assert store.apply(decisions, now + 1) == [True, False, True, True]
    results = {j.id: store.get(j.id) for j in (a, b, c, d)}
    assert results[a.id].state is State.SUCCEEDED and results[a.id].result == {"k": "a"}
    assert results[b.id].state is State.RUNNING and results[b.id].result is None
    assert results[c.id].result == {"k": "c"} and results[c.id].started_at == now + 0.5
    assert results[d.id].state is State.FAILED and results[d.id].error.type == "Boom"
    for job in (a, c, d):
        kinds = [(e.seq, e.kind) for e in store.events(job.id)]
        assert kinds[-2:] == [(3, EventKind.STATE), (4, EventKind.DONE)], kinds
    assert [e.kind for e in store.events(b.id)] == [EventKind.STATE, EventKind.STATE]


def test_cancel_queued_is_at_once(store: Store) -> None:
    job = submit(store)
    now = time.time()
    got = cancel(store, job.id, now)
    assert got is not None and got.state is State.CANCELLED
    assert got.error is not None and got.error.type == "Cancelled"
    assert got.finished_at == now and got.expires_at == now + job.keep_for
    assert got.attempt == 0 and got.started_at is None
    assert [(e.kind, e.data) for e in store.events(job.id)[1:]] == [
        (EventKind.STATE, {"state": "cancelled"}),
        (EventKind.DONE, {"state": "cancelled", "result": None, "error": got.error.to_dict()}),
    ]
    assert claim(store, now=now) == []


def test_a_queued_cancel_does_not_apply_once_the_job_was_claimed(store: Store) -> None:
    job = submit(store)
    now = time.time()
    decision = lifecycle.cancel(job, now=now)
    assert decision is not None
    claimed = claim_one(store, now=now)
    assert store.apply([decision], now) == [False]
    assert store.get(job.id) == claimed
    # Deciding again on the job as it is now flags it instead.
    flagged = cancel(store, job.id, now)
    assert flagged is not None and flagged.state is State.RUNNING and flagged.cancel_requested


def test_cancel_running_sets_the_flag_with_one_log_event(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    before = len(store.events(job.id))
    got = cancel(store, job.id)
    assert got is not None and got.state is State.RUNNING and got.cancel_requested
    assert (got.worker, got.attempt, got.lease_until) == (job.worker, 1, job.lease_until)
    assert lifecycle.cancel(got, now=time.time()) is None  # asking again: nothing to do
    again = cancel(store, job.id)
    assert again is not None and again.cancel_requested
    new = store.events(job.id)[before:]
    assert [(e.kind, e.data, e.attempt) for e in new] == [(EventKind.LOG, "cancel requested", 1)]
    # The worker still holds the job and learns of the request when it renews.
    assert store.renew(worker=WORKER, fences={job.id: 1}, lease=LEASE, now=time.time()) == (
        {job.id},
        {job.id},
    )
    cancelled = ErrorInfo(type="Cancelled", message="the job was cancelled")
    done = finish(store, job, state=State.CANCELLED, error=cancelled)
    assert done is not None and done.state is State.CANCELLED and done.error == cancelled


def test_cancel_of_a_stale_running_record_does_not_apply(store: Store) -> None:
    submit(store, max_attempts=2)
    now = time.time()
    first = claim_one(store, now=now, lease=5.0)
    decision = lifecycle.cancel(first, now=now)
    assert decision is not None
    recover(store, now + 6)
    second = claim_one(store, worker="w2", now=now + 7)
    # The flag was meant for the first attempt's holder, now gone.
    assert store.apply([decision], now + 7) == [False]
    assert store.get(first.id) == second


def test_cancel_terminal_changes_nothing(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    finish(store, job, result=1)
    before = store.events(job.id)
    done = store.get(job.id)
    assert done is not None and lifecycle.cancel(done, now=time.time()) is None
    got = cancel(store, job.id)
    assert got is not None and got.state is State.SUCCEEDED and not got.cancel_requested
    assert store.events(job.id) == before
    assert cancel(store, "unknown") is None


def test_a_lost_job_is_requeued_while_attempts_remain_then_fails(store: Store) -> None:
    submit(store, max_attempts=2)
    now = time.time()
    job = claim_one(store, now=now, lease=5.0)
    assert recover(store, now + 4) == []
    [lost] = recover(store, now + 6)
    assert lost.id == job.id and lost.state is State.QUEUED
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert lost.worker is None and lost.lease_until is None and lost.run_at == now + 6
    assert lost.attempt == 1  # the lost attempt stays counted
    last = store.events(job.id)[-1]
    assert last.data["state"] == "queued" and last.data["reason"] == "lost"
    assert last.data["attempt"] == 1 and last.data["error"]["type"] == "WorkerLost"
    again = claim_one(store, worker="w2", now=now + 7)
    assert again.attempt == 2
    # The old holder can no longer finish it.
    assert finish(store, job) is None
    assert recover(store, now + 7 + LEASE - 1) == []
    [failed] = recover(store, now + 7 + LEASE + 1)
    assert failed.state is State.FAILED and failed.error is not None
    assert failed.error.type == "WorkerLost" and failed.attempt == 2
    assert failed.finished_at == now + 7 + LEASE + 1 and failed.worker is None
    assert store.events(job.id)[-1].kind is EventKind.DONE
    assert store.events(job.id)[-1].data["error"]["type"] == "WorkerLost"
    assert claim(store, now=now + 10_000) == []


def test_lost_counts_the_attempt_of_every_claimed_job(store: Store) -> None:
    # Whether or not its code had started: at most max_attempts starts, whatever crashes.
    first = submit(store, max_attempts=1)
    waiting = submit(store, max_attempts=1)
    now = time.time()
    got = claim(store, now=now, lease=5.0, max_jobs=2)
    assert [r.id for r in got] == [first.id, waiting.id]
    lost = {r.id: r for r in recover(store, now + 6)}
    assert set(lost) == {first.id, waiting.id}
    for job in lost.values():
        assert job.state is State.FAILED and job.attempt == 1
        assert job.error is not None and job.error.type == "WorkerLost"
    assert claim(store, worker="w2", now=now + 7) == []


def test_a_lost_job_with_a_cancel_request_is_cancelled(store: Store) -> None:
    submit(store, max_attempts=3)
    now = time.time()
    job = claim_one(store, now=now, lease=1.0)
    cancel(store, job.id, now)
    [lost] = recover(store, now + 2)
    assert lost.state is State.CANCELLED
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert store.events(job.id)[-1].data["state"] == "cancelled"


def test_purge_deletes_expired_jobs_with_their_events_and_output(store: Store) -> None:
    now = time.time()
    submit(store, now=now)
    short = claim_one(store, now=now)
    assert store.append(short.id, fence(short), [output_item("x")], now)
    finish(store, short, now=now, keep_for=10.0)
    submit(store, idempotency_key="idem", now=now)
    long = claim_one(store, now=now)
    finish(store, long, now=now, keep_for=100.0)
    active = submit(store)
    assert store.purge(now + 5) == 0
    assert store.purge(now + 11) == 1
    assert store.get(short.id) is None
    assert store.events(short.id) == [] and store.output(short.id) == []
    assert store.output(short.id, attempt=1) == []
    assert store.get(long.id) is not None
    assert store.purge(now + 5, finished_before=now + 1) == 1
    assert store.get(long.id) is None
    # The idempotency key went with its job.
    _, created, _ = enqueue(store, record(idempotency_key="idem"))
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
    assert other_store.append(job.id, fence(job), [output_item("hello")], time.time())
    thread.join(timeout=20)
    elapsed = time.monotonic() - started
    [events] = result
    assert [e.data for e in events] == [{"attempt": 1, "index": 0, "item": "hello"}]  # type: ignore[attr-defined]
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
            assert other_store.save_progress(job.id, fence(job), Progress(current=1), time.time())
            in_a_row = in_a_row + 1 if woken.wait(0.5) else 0
            assert time.monotonic() < deadline
        seen = store.notifier.version(job.id)
        cancel(other_store, job.id)
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
        assert claim(store) == []
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


def test_wait_for_work_wakes_an_idle_worker_when_a_job_is_requeued(
    store: Store, other_store: Store
) -> None:
    submit(store, max_attempts=2)
    now = time.time()
    claimed = claim_one(store, now=now, lease=5.0)
    claimed_nothing = threading.Event()
    woke: list[float] = []

    def idle_worker() -> None:
        seen = store.notifier.version(WORK)
        assert claim(store, worker="w2") == []
        claimed_nothing.set()
        store.wait_for_work(seen, 30.0)
        woke.append(time.monotonic())

    thread = threading.Thread(target=idle_worker)
    thread.start()
    assert claimed_nothing.wait(10)
    requeued = time.monotonic()
    [lost] = recover(other_store, now + 6)
    assert lost.id == claimed.id and lost.state is State.QUEUED
    thread.join(timeout=30)
    assert woke and woke[0] - requeued < 2.0


def test_events_of_unknown_job_are_empty(store: Store) -> None:
    assert store.events("nope") == []
    assert store.output("nope") == []
    assert store.output("nope", attempt=1) == []


def test_events_read_page_by_page_are_the_events_read_at_once(store: Store) -> None:
    """A reader that resumes after any event, with any page size, gets the same
    stream as one read: the first event, the claim, output, and both events of the
    end (state, then done), each once and in order."""
    submit(store)
    job = claim_one(store)
    now = time.time()
    assert store.append(job.id, fence(job), [output_item("a"), log_item("b")], now)
    finish(store, job, state=State.FAILED, now=now)
    whole = store.events(job.id)
    assert [e.kind.value for e in whole] == ["state", "state", "output", "log", "state", "done"]
    assert whole[-2].data == {"state": "failed"} and whole[-1].data["state"] == "failed"
    assert whole[-1].data["error"]["type"] == BOOM.type
    for size in (1, 2, 3, 5):
        for start in range(len(whole) + 1):
            paged, after = [], whole[start - 1].seq if start else 0
            while page := store.events(job.id, after=after, limit=size):
                assert len(page) <= size and page[0].seq > after
                paged += page
                after = page[-1].seq
            assert paged == whole[start:], (size, start)
