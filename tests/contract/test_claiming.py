"""Store contract: atomic claiming, order, run_at, concurrency limits, leases, fencing."""

from __future__ import annotations

import threading
import time
from collections import Counter

from tests.contract.helpers import (
    BOOM,
    LEASE,
    NOT_HELD,
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
    release,
    submit,
)
from underway import lifecycle
from underway._util import rfc3339
from underway.records import ErrorInfo, EventKind, Fence, Progress, State
from underway.stores import Store


def test_claim_moves_a_job_to_running_under_a_lease(store: Store) -> None:
    job = submit(store)
    now = time.time()
    claimed = claim_one(store, now=now, lease=10.0)
    assert claimed.id == job.id
    assert claimed.state is State.RUNNING
    assert claimed.attempt == 1 and claimed.worker == WORKER
    assert claimed.started_at == now and claimed.lease_until == now + 10.0
    assert claimed.params == job.params
    assert claimed.output_count == 0 and not claimed.cancel_requested
    assert store.get(job.id) == claimed
    events = store.events(job.id)
    assert [(e.kind, e.data, e.attempt) for e in events] == [
        (EventKind.STATE, {"state": "queued"}, 0),
        (EventKind.STATE, {"state": "running", "attempt": 1}, 1),
    ]
    assert events[1].at == now
    assert claim(store, now=now) == []


def test_claim_only_takes_the_tasks_asked_for(store: Store) -> None:
    submit(store, "other")
    mine = submit(store, "mine")
    assert [r.id for r in claim(store, ["mine"])] == [mine.id]
    assert claim(store, []) == []


def test_claim_order_is_priority_then_oldest_first(store: Store) -> None:
    a = submit(store, "a")
    b = submit(store, "b")
    urgent = submit(store, "b", priority=-5)
    late = submit(store, "a", priority=5)
    c = submit(store, "a")
    got = claim(store, ["a", "b"], max_jobs=10)
    assert [r.id for r in got] == [urgent.id, a.id, b.id, c.id, late.id]


def test_claim_takes_at_most_max_jobs(store: Store) -> None:
    for _ in range(5):
        submit(store)
    now = time.time()
    first = claim(store, now=now, max_jobs=3)
    rest = claim(store, now=now, max_jobs=3)
    assert (len(first), len(rest)) == (3, 2)


def test_every_claimed_job_counts_an_attempt_and_starts_at_claim_time(store: Store) -> None:
    for _ in range(3):
        submit(store)
    now = time.time()
    got = claim(store, now=now, max_jobs=3)
    assert [(r.attempt, r.started_at) for r in got] == [(1, now)] * 3
    for r in got:
        stored = store.get(r.id)
        assert stored is not None and (stored.attempt, stored.started_at) == (1, now)
        assert store.events(r.id)[-1].data == {"state": "running", "attempt": 1}
    # An end that reports no start of its own keeps the one the claim recorded.
    done = finish(store, got[0], now=now + 2)
    assert done is not None and done.started_at == now and done.attempt == 1


def test_claim_respects_run_at(store: Store) -> None:
    now = time.time()
    later = submit(store, run_at=now + 100)
    assert claim(store, now=now) == []
    assert store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
    assert [r.id for r in claim(store, now=now + 101)] == [later.id]


def test_concurrency_limit_counts_running_jobs_of_all_workers(
    store: Store, other_store: Store
) -> None:
    for _ in range(5):
        submit(store, "limited")
    free = submit(store, "free")
    now = time.time()
    limits = {"limited": 2}
    tasks = ["limited", "free"]
    one = claim(store, tasks, worker="w1", limits=limits, now=now)
    two = claim(other_store, tasks, worker="w2", limits=limits, now=now, max_jobs=10)
    assert [r.task for r in one] == ["limited"]
    assert sorted(r.task for r in two) == ["free", "limited"]
    assert free.id in {r.id for r in two}
    assert claim(store, tasks, worker="w3", limits=limits, now=now) == []
    assert finish(store, one[0]) is not None
    again = claim(store, tasks, worker="w3", limits=limits, now=now, max_jobs=5)
    assert [r.task for r in again] == ["limited"]


def test_concurrent_claims_take_each_job_exactly_once(store: Store, store_url: str) -> None:
    from underway.stores import open_store

    total = 300
    for _ in range(total):
        submit(store)
    stores = [store] + (
        [open_store(store_url) for _ in range(3)] if store_url != "memory://" else []
    )
    claims: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        mine = stores[n % len(stores)]
        start.wait()
        while True:
            got = claim(mine, worker=f"w{n}", max_jobs=1 + n % 4)
            if not got:
                return
            with lock:
                claims.update(r.id for r in got)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for extra in stores[1:]:
        extra.close()
    assert len(claims) == total
    assert set(claims.values()) == {1}
    assert store.count(state=State.RUNNING) == total


def test_renew_extends_leases_and_reports_cancel_requests(store: Store) -> None:
    a = submit(store)
    b = submit(store)
    now = time.time()
    claim(store, now=now, lease=5.0, max_jobs=2)
    flagged = cancel(store, b.id, now)
    assert flagged is not None and flagged.cancel_requested
    held, cancelled = store.renew(worker=WORKER, fences={a.id: 1, b.id: 1}, lease=60.0,
                                  now=now + 1)  # fmt: skip
    assert (held, cancelled) == ({a.id, b.id}, {b.id})
    assert store.get(a.id).lease_until == now + 61  # type: ignore[union-attr]
    # Another worker's renew changes nothing, and the lease protects the job.
    assert store.renew(worker="intruder", fences={a.id: 1}, lease=1.0, now=now + 2) == NOT_HELD
    assert store.get(a.id).lease_until == now + 61  # type: ignore[union-attr]
    assert store.expired(now + 30) == [] and recover(store, now + 30) == []
    assert store.renew(worker=WORKER, fences={}, lease=60.0, now=now) == NOT_HELD
    assert store.renew(worker=WORKER, fences={"unknown": 1}, lease=60.0, now=now) == NOT_HELD


def test_expired_lists_the_running_jobs_whose_lease_ran_out(store: Store) -> None:
    submit(store)
    submit(store)
    queued = submit(store)
    now = time.time()
    short = claim_one(store, now=now, lease=5.0)
    long = claim_one(store, now=now, lease=50.0)
    assert store.expired(now + 4) == []
    [late] = store.expired(now + 6)
    assert late == store.get(short.id)
    assert late.state is State.RUNNING and late.worker == WORKER and late.attempt == 1
    assert {r.id for r in store.expired(now + 51)} == {short.id, long.id}
    assert queued.id not in {r.id for r in store.expired(now + 10_000)}


def test_an_end_applies_only_while_running_under_the_holders_fence(store: Store) -> None:
    queued = submit(store)
    assert finish(store, queued, fence_=Fence(worker=WORKER, attempt=0)) is None
    claimed = claim_one(store)
    assert finish(store, claimed, fence_=Fence(worker="intruder", attempt=1)) is None
    assert finish(store, claimed, fence_=Fence(worker=WORKER, attempt=2)) is None
    assert store.get(claimed.id) == claimed
    now = time.time()
    done = finish(store, claimed, result={"ok": [1, 2]}, now=now, keep_for=100.0)
    assert done is not None and done.state is State.SUCCEEDED
    assert done.result == {"ok": [1, 2]} and done.error is None
    assert done.finished_at == now and done.expires_at == now + 100.0
    assert done.worker is None and done.lease_until is None
    assert done.attempt == 1
    assert finish(store, claimed) is None
    got = store.get(claimed.id)
    assert got is not None and got.state is State.SUCCEEDED and got.result == {"ok": [1, 2]}
    events = store.events(claimed.id)
    assert [(e.kind.value, e.data, e.attempt) for e in events[-2:]] == [
        ("state", {"state": "succeeded"}, 1),
        ("done", {"state": "succeeded", "result": {"ok": [1, 2]}, "error": None}, 1),
    ]
    assert len(events) == 4  # queued, running, succeeded, done: the refused ends wrote nothing


def test_a_failure_without_attempts_left_is_final_with_its_error(store: Store) -> None:
    submit(store)
    claimed = claim_one(store)
    done = finish(store, claimed, state=State.FAILED)
    assert done is not None and done.state is State.FAILED and done.attempt == 1
    assert done.error == BOOM
    assert store.events(claimed.id)[-1].data == {
        "state": "failed",
        "result": None,
        "error": BOOM.to_dict(),
    }
    assert claim(store) == []


def test_a_timeout_is_final_even_with_attempts_left(store: Store) -> None:
    submit(store, max_attempts=3)
    claimed = claim_one(store)
    timeout = ErrorInfo(type="Timeout", message="took too long")
    done = finish(store, claimed, state=State.FAILED, error=timeout)
    assert done is not None and done.state is State.FAILED and done.error == timeout


def test_a_failure_with_attempts_left_goes_back_to_the_queue(store: Store) -> None:
    submit(store, max_attempts=3)
    claimed = claim_one(store)
    now = time.time()
    error = ErrorInfo(type="Flaky", message="try again")
    decision = ended(claimed, state=State.FAILED, error=error, now=now)
    intruder = ended(claimed, state=State.FAILED, error=error, now=now,
                     fence_=Fence(worker="intruder", attempt=1))  # fmt: skip
    assert decision.state is State.QUEUED and decision.run_at is not None
    assert decision.run_at > now  # a backoff
    assert store.apply([intruder], now) == [False]
    assert store.apply([decision], now) == [True]
    got = store.get(claimed.id)
    assert got is not None and got.state is State.QUEUED
    assert got.worker is None and got.lease_until is None
    assert got.error == error and got.run_at == decision.run_at
    assert got.attempt == 1  # the failed attempt stays counted
    last = store.events(claimed.id)[-1]
    assert (last.kind, last.attempt) == (EventKind.STATE, 1)
    assert last.data == {
        "state": "queued",
        "reason": "retry",
        "attempt": 1,
        "retry_at": rfc3339(decision.run_at),
        "error": {"type": "Flaky", "message": "try again"},
    }
    assert claim(store, now=now) == []
    again = claim_one(store, worker="w2", now=decision.run_at + 1)
    assert again.id == claimed.id and again.attempt == 2
    assert again.error == error  # the last failure stays visible while it runs again
    assert store.apply([decision], now) == [False]  # the old holder's fence is stale


def test_records_keep_their_fields_through_claim(store: Store) -> None:
    rec = record(owner="o", meta={"k": "v"}, idempotency_key="idem", supersede_key="sup")
    enqueue(store, rec)
    claimed = claim_one(store)
    assert (claimed.owner, claimed.meta) == ("o", {"k": "v"})
    assert (claimed.idempotency_key, claimed.supersede_key) == ("idem", "sup")
    assert claimed.keep_for == rec.keep_for and claimed.created_at == rec.created_at


def test_apply_and_claim_applies_the_decisions_then_claims(store: Store) -> None:
    for _ in range(3):
        submit(store)
    held = claim(store, max_jobs=3)
    later = [submit(store) for _ in range(2)]
    now = time.time()
    decisions = [
        ended(held[0], result={"n": 0}, now=now, keep_for=100.0),
        ended(held[1], state=State.FAILED, now=now, keep_for=100.0),
    ]
    done, got = store.apply_and_claim(
        decisions, worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=5
    )
    assert done == [True, True]
    assert [r.id for r in got] == [r.id for r in later]
    assert all(r.state is State.RUNNING and r.worker == WORKER for r in got)
    ok = store.get(held[0].id)
    assert ok is not None and ok.state is State.SUCCEEDED and ok.result == {"n": 0}
    assert ok.finished_at == now and ok.expires_at == now + 100.0
    failed = store.get(held[1].id)
    assert failed is not None and failed.state is State.FAILED and failed.error == BOOM
    assert store.events(held[1].id)[-1].data == {
        "state": "failed",
        "result": None,
        "error": BOOM.to_dict(),
    }
    assert store.get(held[2].id).state is State.RUNNING  # type: ignore[union-attr]


def test_apply_and_claim_reports_each_decision_and_applies_only_those_that_hold(
    store: Store,
) -> None:
    submit(store)
    submit(store)
    mine, theirs = claim(store, max_jobs=2)
    now = time.time()
    stale = ended(theirs, now=now, fence_=Fence(worker="intruder", attempt=1))
    done, got = store.apply_and_claim(
        [stale, ended(mine, now=now)], worker=WORKER, tasks=["t"], limits={}, lease=LEASE,
        now=now, max_jobs=0,
    )  # fmt: skip
    assert (done, got) == ([False, True], [])
    assert store.get(theirs.id) == theirs
    assert store.get(mine.id).state is State.SUCCEEDED  # type: ignore[union-attr]
    assert store.apply([], now) == []


def test_two_decisions_on_one_job_in_one_call_apply_in_turn(store: Store) -> None:
    """The second decision finds the job where the first left it, and the job is
    listed, counted and claimable as the last one left it (a store that writes the
    indexes of a batch's jobs together must still write them in turn for one job)."""
    job = submit(store)
    other = submit(store)
    held = claim(store, max_jobs=2)
    now = time.time()
    back = lifecycle.released(held[0], fence=fence(held[0]), now=now)
    as_queued = held[0].evolve(state=State.QUEUED, worker=None, lease_until=None, attempt=0)
    gone = lifecycle.cancel(as_queued, now=now)
    assert gone is not None
    done, got = store.apply_and_claim(
        [ended(held[1], now=now), back, gone], worker=WORKER, tasks=["t"], limits={},
        lease=LEASE, now=now, max_jobs=5,
    )  # fmt: skip
    assert (done, got) == ([True, True, True], [])
    cancelled = store.get(job.id)
    assert cancelled is not None and cancelled.state is State.CANCELLED
    assert [r.id for r in store.list_jobs(state=State.QUEUED).jobs] == []
    assert [r.id for r in store.list_jobs(state=State.RUNNING).jobs] == []
    assert [r.id for r in store.list_jobs(state=State.CANCELLED).jobs] == [job.id]
    assert [r.id for r in store.list_jobs(state=State.SUCCEEDED).jobs] == [other.id]
    assert store.count(state=State.QUEUED) == 0 and store.count(state=State.RUNNING) == 0
    assert store.running_of("t") == 0
    assert claim(store, max_jobs=5) == []
    assert store.expired(now + 10 * LEASE) == []


def test_apply_and_claim_frees_room_under_a_concurrency_limit(store: Store) -> None:
    submit(store, "limited")
    second = submit(store, "limited")
    limits = {"limited": 1}
    held = claim_one(store, "limited")
    assert claim(store, ["limited"], limits=limits, max_jobs=5) == []
    now = time.time()
    done, got = store.apply_and_claim(
        [ended(held, now=now)], worker=WORKER, tasks=["limited"], limits=limits, lease=LEASE,
        now=now, max_jobs=5,
    )  # fmt: skip
    assert done == [True]
    assert [r.id for r in got] == [second.id]


def test_release_gives_claimed_jobs_back_with_their_attempt(store: Store) -> None:
    first = submit(store, max_attempts=1)
    second = submit(store, max_attempts=1)
    now = time.time()
    held = claim(store, now=now, max_jobs=2)
    taken = held[1].evolve(worker="intruder")
    assert store.apply([lifecycle.released(taken, fence=fence(taken), now=now)], now) == [False]
    assert store.get(second.id) == held[1]
    assert release(store, held, now=now + 1) == [True, True]
    for job in (first, second):
        got = store.get(job.id)
        assert got is not None and got.state is State.QUEUED
        assert got.attempt == 0 and got.worker is None and got.lease_until is None
        assert got.run_at == now + 1 and got.error is None
        last = store.events(job.id)[-1]
        assert last.data == {"state": "queued", "reason": "released", "attempt": 0}
    assert release(store, held, now=now + 1) == [False, False]
    again = claim(store, worker="w2", now=now + 2, max_jobs=2)
    assert [r.id for r in again] == [first.id, second.id]
    # The one attempt the jobs have is theirs again: they can still run, and succeed.
    assert [r.attempt for r in again] == [1, 1]
    assert finish(store, again[0]) is not None


def test_a_recovered_job_refuses_every_write_of_its_old_holder(store: Store) -> None:
    submit(store, max_attempts=3)
    now = time.time()
    old = claim_one(store, now=now, lease=5.0)
    [lost] = recover(store, now + 6)
    assert lost.state is State.QUEUED
    # Claimed again, by the same worker name even: only the attempt tells them apart.
    new = claim_one(store, now=now + 7)
    assert (new.worker, new.attempt) == (old.worker, 2)
    events = store.events(old.id)
    stale = fence(old)
    assert not store.append(old.id, stale, [output_item("late"), log_item("late")], now + 8)
    assert not store.save_progress(old.id, stale, Progress(current=9), now + 8)
    assert finish(store, old, result="late", now=now + 8) is None
    assert store.apply([ended(old, state=State.FAILED, now=now + 8)], now + 8) == [False]
    assert store.renew(worker=WORKER, fences={old.id: 1}, lease=600.0, now=now + 8) == NOT_HELD
    assert store.get(old.id) == new
    assert store.events(old.id) == events
    assert store.output(old.id) == [] and store.output(old.id, attempt=1) == []
    # The new holder's writes land.
    assert store.append(old.id, fence(new), [output_item("fresh")], now + 9)
    assert store.output(old.id) == ["fresh"]
    assert store.renew(worker=WORKER, fences={old.id: 2}, lease=60.0, now=now + 9) == (
        {old.id},
        set(),
    )
    done = finish(store, new, result="ok", now=now + 10)
    assert done is not None and done.result == "ok" and done.attempt == 2


def test_lost_applies_only_while_the_lease_is_still_out(store: Store) -> None:
    submit(store, max_attempts=3)
    now = time.time()
    claimed = claim_one(store, now=now, lease=5.0)
    [expired] = store.expired(now + 6)
    decision = lifecycle.lost(expired, now=now + 6)
    # The holder renews before the recovery lands: it is alive, the job stays its own.
    held, _ = store.renew(worker=WORKER, fences={claimed.id: 1}, lease=30.0, now=now + 5.5)
    assert held == {claimed.id}
    assert store.apply([decision], now + 6) == [False]
    got = store.get(claimed.id)
    assert got is not None and got.state is State.RUNNING and got.worker == WORKER
    assert got.lease_until == now + 35.5 and got.attempt == 1
    assert store.events(claimed.id)[-1].data == {"state": "running", "attempt": 1}
    assert finish(store, claimed, now=now + 7) is not None
