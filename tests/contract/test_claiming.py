"""Store contract: atomic claiming, order, run_at, concurrency limits, leases."""

from __future__ import annotations

import threading
import time
from collections import Counter

from tests.contract.helpers import LEASE, WORKER, claim_one, finish, record, submit
from underway.records import ErrorInfo, State
from underway.stores import Finish, Store


def test_claim_moves_a_job_to_running_under_a_lease(store: Store) -> None:
    job = submit(store)
    now = time.time()
    claimed = claim_one(store, now=now, lease=10.0)
    assert claimed.id == job.id
    assert claimed.state is State.RUNNING
    assert claimed.attempt == 1 and claimed.worker == WORKER
    assert claimed.started_at == now and claimed.lease_until == now + 10.0
    assert claimed.params == job.params
    events = store.events(job.id)
    assert [e.data for e in events] == [{"state": "queued"}, {"state": "running", "attempt": 1}]
    assert store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now) == []


def test_claim_only_takes_the_tasks_asked_for(store: Store) -> None:
    submit(store, "other")
    mine = submit(store, "mine")
    got = store.claim(worker=WORKER, tasks=["mine"], limits={}, lease=LEASE, now=time.time())
    assert [r.id for r in got] == [mine.id]
    assert store.claim(worker=WORKER, tasks=[], limits={}, lease=LEASE, now=time.time()) == []


def test_claim_order_is_priority_then_oldest_first(store: Store) -> None:
    a = submit(store, "a")
    b = submit(store, "b")
    urgent = submit(store, "b", priority=-5)
    late = submit(store, "a", priority=5)
    c = submit(store, "a")
    got = store.claim(
        worker=WORKER, tasks=["a", "b"], limits={}, lease=LEASE, now=time.time(), max_jobs=10
    )
    assert [r.id for r in got] == [urgent.id, a.id, b.id, c.id, late.id]


def test_claim_takes_at_most_max_jobs(store: Store) -> None:
    for _ in range(5):
        submit(store)
    now = time.time()
    first = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=3)
    rest = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=3)
    assert (len(first), len(rest)) == (3, 2)


def test_only_the_first_of_several_claimed_jobs_has_started(store: Store) -> None:
    for _ in range(3):
        submit(store)
    now = time.time()
    got = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=3)
    assert [r.started_at for r in got] == [now, None, None]
    assert [store.get(r.id).started_at for r in got] == [now, None, None]  # type: ignore[union-attr]
    ends = [
        Finish(job_id=r.id, state=State.SUCCEEDED, keep_for=100.0, started_at=now + 1)
        for r in got[:2]
    ]
    store.finish_and_claim(ends, worker=WORKER, tasks=["t"], limits={}, lease=LEASE,
                           now=now + 2, max_jobs=0)  # fmt: skip
    # The start a claim recorded stays; one the worker reports fills in a missing one.
    assert store.get(got[0].id).started_at == now  # type: ignore[union-attr]
    assert store.get(got[1].id).started_at == now + 1  # type: ignore[union-attr]
    assert store.finish(got[2].id, worker=WORKER, state=State.SUCCEEDED, result=None,
                        error=None, now=now + 3, keep_for=100.0, started_at=now + 2)  # fmt: skip
    assert store.get(got[2].id).started_at == now + 2  # type: ignore[union-attr]


def test_claim_respects_run_at(store: Store) -> None:
    now = time.time()
    later = submit(store, run_at=now + 100)
    assert store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now) == []
    assert store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
    got = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now + 101)
    assert [r.id for r in got] == [later.id]


def test_concurrency_limit_counts_running_jobs_of_all_workers(
    store: Store, other_store: Store
) -> None:
    for _ in range(5):
        submit(store, "limited")
    free = submit(store, "free")
    now = time.time()
    limits = {"limited": 2}
    tasks = ["limited", "free"]
    one = store.claim(worker="w1", tasks=tasks, limits=limits, lease=LEASE, now=now, max_jobs=1)
    two = other_store.claim(worker="w2", tasks=tasks, limits=limits, lease=LEASE, now=now,
                            max_jobs=10)  # fmt: skip
    assert [r.task for r in one] == ["limited"]
    assert sorted(r.task for r in two) == ["free", "limited"]
    assert free.id in {r.id for r in two}
    assert store.claim(worker="w3", tasks=tasks, limits=limits, lease=LEASE, now=now) == []
    finish(store, one[0].id, worker="w1")
    again = store.claim(worker="w3", tasks=tasks, limits=limits, lease=LEASE, now=now, max_jobs=5)
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
            got = mine.claim(
                worker=f"w{n}", tasks=["t"], limits={}, lease=LEASE, now=time.time(),
                max_jobs=1 + n % 4,
            )  # fmt: skip
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
    store.claim(worker=WORKER, tasks=["t"], limits={}, lease=5.0, now=now, max_jobs=2)
    store.request_cancel(b.id, now)
    cancelled = store.renew(worker=WORKER, job_ids=[a.id, b.id], lease=60.0, now=now + 1)
    assert cancelled == {b.id}
    assert store.get(a.id).lease_until == now + 61  # type: ignore[union-attr]
    # Another worker's renew changes nothing, and the lease protects the job.
    assert store.renew(worker="intruder", job_ids=[a.id], lease=1.0, now=now + 2) == set()
    assert store.get(a.id).lease_until == now + 61  # type: ignore[union-attr]
    assert store.recover_lost(now + 30) == []
    assert store.renew(worker=WORKER, job_ids=[], lease=60.0, now=now) == set()


def test_finish_only_from_running_and_only_by_the_lease_holder(store: Store) -> None:
    queued = submit(store)
    assert finish(store, queued.id) is None
    claimed = claim_one(store)
    assert finish(store, claimed.id, worker="intruder") is None
    now = time.time()
    done = finish(store, claimed.id, result={"ok": [1, 2]}, now=now, keep_for=100.0)
    assert done is not None and done.state is State.SUCCEEDED
    assert done.result == {"ok": [1, 2]}
    assert done.finished_at == now and done.expires_at == now + 100.0
    assert done.worker is None and done.lease_until is None
    assert finish(store, claimed.id) is None
    got = store.get(claimed.id)
    assert got is not None and got.state is State.SUCCEEDED and got.result == {"ok": [1, 2]}
    kinds = [(e.kind.value, e.data) for e in store.events(claimed.id)][-2:]
    assert kinds == [
        ("state", {"state": "succeeded"}),
        ("done", {"state": "succeeded", "result": {"ok": [1, 2]}, "error": None}),
    ]


def test_finish_by_anyone_and_with_an_error(store: Store) -> None:
    submit(store)
    claimed = claim_one(store)
    done = finish(store, claimed.id, worker=None, state=State.FAILED)
    assert done is not None and done.state is State.FAILED
    assert done.error is not None and (done.error.type, done.error.message) == ("Boom", "it broke")
    assert store.events(claimed.id)[-1].data["error"]["type"] == "Boom"


def test_retry_sends_a_running_job_back_to_the_queue(store: Store) -> None:
    from underway.records import ErrorInfo

    submit(store, max_attempts=3)
    claimed = claim_one(store)
    now = time.time()
    error = ErrorInfo(type="Flaky", message="try again")
    assert not store.retry(claimed.id, worker="intruder", run_at=now, error=error, now=now)
    assert store.retry(claimed.id, worker=WORKER, run_at=now + 50, error=error, now=now)
    got = store.get(claimed.id)
    assert got is not None and got.state is State.QUEUED and got.worker is None
    assert got.error == error and got.run_at == now + 50
    assert store.events(claimed.id)[-1].data["state"] == "queued"
    assert store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now) == []
    again = claim_one(store, now=now + 51)
    assert again.id == claimed.id and again.attempt == 2
    assert not store.retry(claimed.id, worker="w-old", run_at=now, error=error, now=now)


def test_records_keep_their_fields_through_claim(store: Store) -> None:
    rec = record(owner="o", meta={"k": "v"}, idempotency_key="idem", supersede_key="sup")
    store.enqueue(rec)
    claimed = claim_one(store)
    assert (claimed.owner, claimed.meta) == ("o", {"k": "v"})
    assert (claimed.idempotency_key, claimed.supersede_key) == ("idem", "sup")
    assert claimed.keep_for == rec.keep_for and claimed.created_at == rec.created_at


def test_finish_and_claim_records_the_ends_then_claims(store: Store) -> None:
    for _ in range(3):
        submit(store)
    held = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=time.time(),
                       max_jobs=3)  # fmt: skip
    later = [submit(store) for _ in range(2)]
    now = time.time()
    boom = ErrorInfo(type="Boom", message="it broke")
    ends = [
        Finish(job_id=held[0].id, state=State.SUCCEEDED, result={"n": 0}, keep_for=100.0),
        Finish(job_id=held[1].id, state=State.FAILED, error=boom, keep_for=100.0),
    ]
    got = store.finish_and_claim(
        ends, worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=5
    )
    assert [r.id for r in got] == [r.id for r in later]
    assert all(r.state is State.RUNNING and r.worker == WORKER for r in got)
    done = store.get(held[0].id)
    assert done is not None and done.state is State.SUCCEEDED and done.result == {"n": 0}
    assert done.finished_at == now and done.expires_at == now + 100.0
    failed = store.get(held[1].id)
    assert failed is not None and failed.state is State.FAILED and failed.error == boom
    assert store.events(held[1].id)[-1].data == {
        "state": "failed",
        "result": None,
        "error": boom.to_dict(),
    }
    assert store.get(held[2].id).state is State.RUNNING  # type: ignore[union-attr]


def test_finish_and_claim_applies_only_the_holders_ends(store: Store) -> None:
    submit(store)
    held = claim_one(store)
    end = Finish(job_id=held.id, state=State.SUCCEEDED, keep_for=100.0)
    now = time.time()
    assert store.finish_and_claim([end], worker="intruder", tasks=["t"], limits={}, lease=LEASE,
                                  now=now, max_jobs=0) == []  # fmt: skip
    assert store.get(held.id).state is State.RUNNING  # type: ignore[union-attr]
    assert store.finish_and_claim([end], worker=WORKER, tasks=["t"], limits={}, lease=LEASE,
                                  now=now, max_jobs=0) == []  # fmt: skip
    assert store.get(held.id).state is State.SUCCEEDED  # type: ignore[union-attr]


def test_finish_and_claim_frees_room_under_a_concurrency_limit(store: Store) -> None:
    submit(store, "limited")
    second = submit(store, "limited")
    limits = {"limited": 1}
    held = claim_one(store, "limited")
    assert store.claim(worker=WORKER, tasks=["limited"], limits=limits, lease=LEASE,
                       now=time.time(), max_jobs=5) == []  # fmt: skip
    got = store.finish_and_claim(
        [Finish(job_id=held.id, state=State.SUCCEEDED, keep_for=100.0)],
        worker=WORKER,
        tasks=["limited"],
        limits=limits,
        lease=LEASE,
        now=time.time(),
        max_jobs=5,
    )
    assert [r.id for r in got] == [second.id]


def test_release_gives_claimed_jobs_back_with_their_attempt(store: Store) -> None:
    first = submit(store)
    second = submit(store)
    now = time.time()
    held = store.claim(worker=WORKER, tasks=["t"], limits={}, lease=LEASE, now=now, max_jobs=2)
    store.release([second.id], worker="intruder", now=now)
    assert store.get(second.id).state is State.RUNNING  # type: ignore[union-attr]
    store.release([r.id for r in held], worker=WORKER, now=now + 1)
    for job in (first, second):
        got = store.get(job.id)
        assert got is not None and got.state is State.QUEUED
        assert got.attempt == 0 and got.worker is None and got.started_at is None
        assert got.run_at == now + 1
        assert store.events(job.id)[-1].data["state"] == "queued"
    again = store.claim(worker="w2", tasks=["t"], limits={}, lease=LEASE, now=now + 2, max_jobs=2)
    assert [r.id for r in again] == [first.id, second.id]
    assert [r.attempt for r in again] == [1, 1]
