"""Store contract: submitting, reading, listing, idempotency, supersede, delete."""

from __future__ import annotations

import json
import time

from tests.contract.helpers import (
    cancel,
    claim,
    claim_one,
    enqueue,
    fence,
    finish,
    log_item,
    output_item,
    record,
    submit,
)
from underway import lifecycle
from underway.records import EventKind, JobRecord, State
from underway.stores import Store


def test_enqueue_then_get_returns_the_queued_job(store: Store) -> None:
    rec = record("t", params={"text": "héllo", "n": [1, 2]}, owner="alice", priority=3,
                 meta={"callback_url": "http://x"}, timeout=12.5, max_attempts=3)  # fmt: skip
    stored, created, superseded = enqueue(store, rec)
    assert created and stored.id == rec.id and superseded == []
    got = store.get(rec.id)
    assert got is not None
    assert got.state is State.QUEUED
    assert got.params == {"text": "héllo", "n": [1, 2]}
    assert (got.owner, got.priority, got.timeout, got.max_attempts) == ("alice", 3, 12.5, 3)
    assert got.meta == {"callback_url": "http://x"}
    assert got.created_at == rec.created_at
    assert got.attempt == 0 and not got.cancel_requested and got.output_count == 0
    assert got.position == 0
    events = store.events(rec.id)
    assert [(e.kind.value, e.data, e.attempt) for e in events] == [
        ("state", {"state": "queued"}, 0)
    ]
    assert events[0].seq == 1 and events[0].at == rec.created_at


def test_enqueue_keeps_every_first_event_it_is_given_in_order(store: Store) -> None:
    """The engine gives a new job one event today; a store keeps any number, in order
    (PostgreSQL binds one event and several differently)."""
    first = (*lifecycle.submitted(), (EventKind.LOG, '"imported from the old queue"'))
    for events in (first, ()):
        rec = record("t")
        stored, created, _ = store.enqueue(rec, events)
        assert created and stored.id == rec.id
        got = store.events(rec.id)
        assert [(e.seq, e.kind, e.data, e.attempt) for e in got] == [
            (n, kind, json.loads(data), 0) for n, (kind, data) in enumerate(events, 1)
        ]
        assert [r.id for r in claim(store)] == [rec.id]  # and it runs as any job
        got = store.events(rec.id)
        assert [e.seq for e in got] == list(range(1, len(events) + 2))
        assert got[-1].data == {"state": "running", "attempt": 1}


def test_enqueue_many_stores_every_job_queued_in_order(store: Store) -> None:
    now = time.time()
    recs = [record("t", params={"i": i}, owner="bob", now=now) for i in range(2500)]
    later = record("t", run_at=now + 100, now=now)
    store.enqueue_many([*recs, later], lifecycle.submitted())
    got = store.get(recs[1234].id)
    assert got is not None and got.state is State.QUEUED and got.params == {"i": 1234}
    assert got.owner == "bob" and got.created_at == now
    assert [e.data for e in store.events(recs[0].id)] == [{"state": "queued"}]
    assert store.count(state=State.QUEUED) == 2501
    assert store.list_jobs(owner="bob", limit=1).jobs[0].id == recs[-1].id
    claimed = claim(store, worker="w", now=now, max_jobs=3000)
    assert [r.id for r in claimed] == [r.id for r in recs]  # the delayed one is not due
    assert {(r.attempt, r.started_at) for r in claimed} == {(1, now)}
    store.enqueue_many([], lifecycle.submitted())
    assert store.count() == 2501


def test_get_unknown_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_position_follows_priority_then_age_within_a_queue(store: Store) -> None:
    first = submit(store, "a")
    second = submit(store, "b")
    urgent = submit(store, "a", priority=-1)
    elsewhere = submit(store, "a", queue="other")
    positions = {r.id: store.get(r.id).position for r in (first, second, urgent, elsewhere)}  # type: ignore[union-attr]
    assert positions == {urgent.id: 0, first.id: 1, second.id: 2, elsewhere.id: 0}
    claim_one(store, "a", now=time.time())  # takes `urgent`
    assert store.get(first.id).position == 0  # type: ignore[union-attr]
    running = store.get(urgent.id)
    assert running is not None and running.state is State.RUNNING and running.position is None


def test_idempotency_key_returns_the_existing_job(store: Store) -> None:
    first = submit(store, idempotency_key="k1", params={"n": 1})
    again, created, superseded = enqueue(store, record(idempotency_key="k1", params={"n": 2}))
    assert not created and superseded == []
    assert again.id == first.id and again.params == {"n": 1}
    assert store.count() == 1
    assert len(store.events(first.id)) == 1
    other, created, _ = enqueue(store, record(idempotency_key="k2"))
    assert created and other.id != first.id


def test_keys_of_any_characters_stay_distinct_and_read_back_as_given(store: Store) -> None:
    """The engine's keys hold a NUL between the owner and the caller's key, which a
    store must keep as it keeps any other character (PostgreSQL's text holds none)."""
    keys = ["owner\x00k", "owner\x00k2", "\x00k", "a\\0b", "a\x00b", "a\\\x00b", "\\"]
    jobs = [submit(store, idempotency_key=k, supersede_key=k) for k in keys]
    assert len({job.id for job in jobs}) == len(keys)
    for key, job in zip(keys, jobs, strict=True):
        got = store.get(job.id)
        assert got is not None and (got.idempotency_key, got.supersede_key) == (key, key)
        again, created, _ = enqueue(store, record(idempotency_key=key))
        assert not created and again.id == job.id and again.idempotency_key == key
        _, created, superseded = enqueue(store, record(supersede_key=key))
        assert created and superseded == [job.id]


def test_owners_of_any_characters_read_back_and_filter_as_given(store: Store) -> None:
    """An owner is the caller's text, which a store keeps as it keeps any other: on
    every path a record is read by (a get, a listing, a claim, a final record sent
    with the news of its end), and in a listing by owner (PostgreSQL's text holds no
    NUL, and `\\0` is how it keeps one)."""
    owners = ["o\x00a", "o\x00b", "o", "o\\0a", "o\\\x00a", "\\", "\x00", "o\\"]
    one = {owner: submit(store, owner=owner).id for owner in owners}
    store.enqueue_many([record(owner=owner) for owner in owners], lifecycle.submitted())
    for owner in owners:
        got = store.get(one[owner])
        assert got is not None and got.owner == owner
        listed = store.list_jobs(owner=owner).jobs
        assert len(listed) == 2 and one[owner] in {r.id for r in listed}
        assert {r.owner for r in listed} == {owner}
    claimed = claim(store, max_jobs=2 * len(owners))
    assert sorted(r.owner or "" for r in claimed) == sorted(2 * owners)
    for job in claimed[:3]:
        assert finish(store, job) is not None
        _, known = store.notifier.known(job.id)
        told = None if known is None else known.full()
        assert told is None or told.owner == job.owner


def test_an_id_with_a_nul_names_no_job(store: Store) -> None:
    """Not the job its text before the NUL names (libpq cuts a string there)."""
    job = submit(store, owner="o")
    for other in (job.id + "\x00", job.id + "\x00x", "\x00" + job.id):
        assert store.get(other) is None
        assert store.events(other) == [] and store.output(other) == []
        assert not store.update_meta(other, {"k": "v"})
        assert not store.delete(other)
    assert store.list_jobs(task="t\x00").jobs == []
    got = store.get(job.id)
    assert got is not None and got.meta == {} and len(store.events(job.id)) == 1


def test_idempotency_key_is_free_again_once_the_job_is_gone(store: Store) -> None:
    first = submit(store, idempotency_key="k")
    cancel(store, first.id)
    assert store.delete(first.id)
    second, created, _ = enqueue(store, record(idempotency_key="k"))
    assert created and second.id != first.id


def test_supersede_returns_the_active_jobs_with_the_same_key(store: Store) -> None:
    running = submit(store, "r", supersede_key="render")
    claim_one(store, "r")
    finished = submit(store, "f", supersede_key="render")
    finish(store, claim_one(store, "f"))
    queued = submit(store, "q", supersede_key="render")
    unrelated = submit(store, "q", supersede_key="other")
    newest = record("q", supersede_key="render")
    stored, created, superseded = enqueue(store, newest)
    assert created and stored.id == newest.id
    assert sorted(superseded) == sorted([running.id, queued.id])

    def get(job_id: str) -> JobRecord:
        got = store.get(job_id)
        assert got is not None
        return got

    # The store only reports them; nothing changed yet.
    assert get(running.id).state is State.RUNNING and not get(running.id).cancel_requested
    assert get(queued.id).state is State.QUEUED
    # The engine cancels them as any cancel: the queued one ends, the running one is flagged.
    for job_id in superseded:
        cancel(store, job_id)
    assert get(running.id).state is State.RUNNING and get(running.id).cancel_requested
    assert get(finished.id).state is State.SUCCEEDED
    assert get(queued.id).state is State.CANCELLED
    assert get(unrelated.id).state is State.QUEUED
    assert get(newest.id).state is State.QUEUED and not get(newest.id).cancel_requested
    # A job that ended leaves the key: the next one supersedes only the newest.
    _, _, after = enqueue(store, record("q", supersede_key="render"))
    assert sorted(after) == sorted([running.id, newest.id])


def test_list_is_newest_first_with_cursor_pagination(store: Store) -> None:
    ids = [submit(store).id for _ in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list_jobs(limit=3, cursor=cursor)
        seen += [r.id for r in page.jobs]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    assert pages == 3
    exact = store.list_jobs(limit=7)
    assert len(exact.jobs) == 7 and exact.next_cursor is None
    assert store.list_jobs(limit=3).jobs[0].position == 6


def test_list_filters_by_task_state_and_owner(store: Store) -> None:
    a1 = submit(store, "a", owner="alice")
    b1 = submit(store, "b", owner="bob")
    a2 = submit(store, "a", owner="bob")
    a3 = submit(store, "a", owner="alice")
    claimed = claim_one(store, "a")
    assert claimed.id == a1.id

    def ids(**filters: object) -> list[str]:
        return [r.id for r in store.list_jobs(**filters).jobs]  # type: ignore[arg-type]

    assert ids(task="a") == [a3.id, a2.id, a1.id]
    assert ids(task="b") == [b1.id]
    assert ids(state=State.RUNNING) == [a1.id]
    assert ids(state=State.QUEUED) == [a3.id, a2.id, b1.id]
    assert ids(owner="bob") == [a2.id, b1.id]
    assert ids(task="a", state=State.QUEUED, owner="alice") == [a3.id]
    assert ids(task="nothing") == []
    page = store.list_jobs(task="a", limit=1)
    assert [r.id for r in page.jobs] == [a3.id] and page.next_cursor == a3.id
    page = store.list_jobs(task="a", limit=1, cursor=page.next_cursor)
    assert [r.id for r in page.jobs] == [a2.id]


def test_count_all_and_by_state(store: Store) -> None:
    for _ in range(3):
        submit(store)
    claim_one(store)
    assert store.count() == 3
    assert store.count(state=State.QUEUED) == 2
    assert store.count(state=State.RUNNING) == 1
    assert store.count(state=State.SUCCEEDED) == 0


def test_delete_removes_the_job_its_events_and_output(store: Store) -> None:
    submit(store)
    job = claim_one(store)
    assert store.append(job.id, fence(job), [output_item("x"), log_item("hi")], time.time())
    assert finish(store, job) is not None
    keep = submit(store)
    assert store.delete(job.id)
    assert store.get(job.id) is None
    assert store.events(job.id) == []
    assert store.output(job.id) == [] and store.output(job.id, attempt=1) == []
    assert not store.delete(job.id)
    assert [r.id for r in store.list_jobs().jobs] == [keep.id]
    assert store.count() == 1
