"""What only the Redis store promises: no leftover keys, clear errors, outages."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import pytest
import redis

from tests.contract.helpers import (
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
from tests.support.redis_server import RedisServer
from tests.support.services import free_port
from tests.support.wait import wait_for
from underway import JobHandle, Underway, lifecycle
from underway.errors import ConfigurationError, StoreUnavailable
from underway.feed import WORK
from underway.records import JobRecord, Progress, State
from underway.stores import open_store, redis_listener, redis_pubsub
from underway.stores import redis as redis_module
from underway.stores.redis import RedisStore
from underway.stores.redis_slots import SlotChannel, open_slot_channel
from underway.worker import Worker

pytestmark = pytest.mark.redis
T = TypeVar("T")


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    yield store
    store.close()


def _keys(url: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(client.keys("*"))
    finally:
        client.close()


def test_purged_jobs_leave_no_keys_behind(redis_store: RedisStore, redis_url: str) -> None:
    now = time.time()
    submit(redis_store, now=now, owner="alice", idempotency_key="k", supersede_key="s")
    job = claim_one(redis_store, now=now)
    assert redis_store.append(job.id, fence(job), [output_item(1), log_item("x")], now)
    assert finish(redis_store, job, now=now, keep_for=1.0) is not None
    assert any(job.id in key for key in _keys(redis_url))
    assert redis_store.purge(now + 2) == 1
    leftovers = [k for k in _keys(redis_url) if not k.endswith((":idlers", ":epoch"))]
    assert leftovers == []


def test_a_job_of_several_attempts_leaves_no_keys_behind(
    redis_store: RedisStore, redis_url: str
) -> None:
    now = time.time()
    submit(redis_store, now=now, max_attempts=3, idempotency_key="k", supersede_key="s")
    first = claim_one(redis_store, now=now, lease=5.0)
    assert redis_store.append(first.id, fence(first), [output_item("a"), log_item("x")], now)
    assert redis_store.save_progress(first.id, fence(first), Progress(current=1), now)
    [lost] = recover(redis_store, now + 6)
    assert lost.state is State.QUEUED
    second = claim_one(redis_store, now=now + 7)
    assert release(redis_store, [second], now=now + 7) == [True]
    third = claim_one(redis_store, now=now + 8)
    assert third.attempt == 2
    assert redis_store.append(third.id, fence(third), [output_item("b")], now + 8)
    assert finish(redis_store, third, now=now + 9, keep_for=1.0) is not None
    assert redis_store.output(first.id, attempt=1) == ["a"]
    assert redis_store.output(first.id) == ["b"]
    assert redis_store.purge(now + 11) == 1
    assert [k for k in _keys(redis_url) if not k.endswith((":idlers", ":epoch"))] == []


def test_deleted_jobs_leave_no_keys_behind(redis_store: RedisStore, redis_url: str) -> None:
    job = submit(redis_store, owner="bob")
    cancel(redis_store, job.id)
    assert redis_store.delete(job.id)
    assert [k for k in _keys(redis_url) if not k.endswith((":idlers", ":epoch"))] == []


def test_an_unreachable_redis_opens_and_its_calls_say_store_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/2"
    store = open_store(url)  # a worker or server starts while Redis is down
    try:
        with pytest.raises(StoreUnavailable) as caught:
            store.ping()
        message = str(caught.value)
        assert "\n" not in message and "s3cret" not in message
        assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in message
        warned = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert warned and all("s3cret" not in m for m in warned)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("policy", "warned"),
    [
        ("allkeys-lru", True),
        ("allkeys-random", True),
        ("volatile-lru", False),
        ("noeviction", False),
    ],
)
def test_a_redis_that_may_evict_jobs_is_named_in_a_warning(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture, policy: str, warned: bool
) -> None:
    """Under `maxmemory`, an `allkeys-*` policy lets Redis drop any key, jobs among them:
    the store says so when it connects, once. (Its keys have no expiry, so the
    `volatile-*` policies leave them alone.)"""
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("maxmemory", str(256 << 20))
    admin.config_set("maxmemory-policy", policy)
    admin.close()
    caplog.set_level(logging.WARNING, logger="underway")

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "evicts keys" in r.getMessage()]

    store = RedisStore(private_redis.url)
    try:
        if warned:  # said by the subscriber's thread, once it has connected
            wait_for(lambda: len(said()) == 1, what="the warning")
        else:
            store._check_eviction()  # what the subscriber runs when it connects
        store._check_eviction()  # as after a reconnection: no second warning
        assert len(said()) == (1 if warned else 0), said()
        if warned:
            assert policy in said()[0] and "noeviction" in said()[0]
    finally:
        store.close()


def test_a_user_who_may_not_read_info_opens_the_store_all_the_same(
    private_redis: RedisServer,
) -> None:
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.acl_setuser(
        "quiet", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-info"],
    )  # fmt: skip
    admin.close()
    store = RedisStore(f"redis://quiet:pw@127.0.0.1:{private_redis.port}/0")
    try:
        job = submit(store)
        wait_for(lambda: store._listener.connected.is_set(), what="the listener's connection")
        store._check_eviction()
        assert claim_one(store).id == job.id
        # Its subscriber stays connected: a job's end reaches a waiter.
        assert store.get(job.id) is not None
    finally:
        store.close()


def test_calls_raise_store_unavailable_while_redis_is_down_then_resume(
    private_redis: RedisServer,
) -> None:
    store = RedisStore(private_redis.url)
    try:
        job = submit(store)
        private_redis.stop()
        with pytest.raises(StoreUnavailable) as caught:
            store.get(job.id)
        assert caught.value.retry_after > 0
        with pytest.raises(StoreUnavailable):
            submit(store)
        with pytest.raises(StoreUnavailable):
            store.ping()
        private_redis.start()
        got = store.get(job.id)
        assert got is not None and got.id == job.id
        # The subscriber reconnects by itself and waiters are woken again.
        assert store._listener.connected.wait(10)
        claimed = claim_one(store)
        assert claimed.id == job.id
    finally:
        store.close()


@pytest.mark.parametrize("functions", [True, False], ids=["functions", "scripts"])
def test_script_calls_survive_a_flushed_script_cache_and_a_closed_connection(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, functions: bool
) -> None:
    """Scripts run on connections the store keeps itself: a library or script Redis
    forgot is loaded again, a connection the server closed between calls is opened
    again, and an error reply is raised as redis-py raises it, leaving the connection
    usable."""
    monkeypatch.setenv("UNDERWAY_REDIS_FUNCTIONS", "1" if functions else "0")
    store = RedisStore(private_redis.url)
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        first = submit(store)
        assert _script_calls(private_redis.url, "fcall" if functions else "evalsha") == 1
        if functions:
            client.function_flush()
        else:
            client.script_flush()
        second = submit(store)  # loaded and run once
        assert _script_calls(private_redis.url, "fcall" if functions else "evalsha") == 2
        assert _script_calls(private_redis.url, "evalsha" if functions else "fcall") == 0
        assert [store.get(j.id) is not None for j in (first, second)] == [True, True]
        assert store.count(state=State.QUEUED) == 2
        client.client_kill_filter(_type="normal")  # every connection but this one
        assert claim_one(store).id == first.id
        client.delete(store.keys.job(second.id))
        client.set(store.keys.job(second.id), "not a hash")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            store.get(second.id)
        got = store.get(first.id)  # nothing of the error reply is left to read
        assert got is not None and got.state is State.RUNNING
    finally:
        client.close()
        store.close()


@pytest.mark.parametrize("packer", ["hiredis", "redis-py"])
def test_a_submission_is_stored_as_given_whatever_packs_its_call(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, packer: str
) -> None:
    """A submission's call is packed partly once per task and settings: each job is
    stored with its own fields and its task's settings as they were at its submission,
    by a client with hiredis or without (redis-py's own packing and parsing)."""
    if packer == "redis-py":
        monkeypatch.setattr(redis_module, "_pack_hiredis", None)
    store = RedisStore(private_redis.url)
    try:
        now = time.time()
        plain = submit(store, params={}, priority=0)
        # Each differs from `plain` in one setting alone.
        high = submit(store, params={}, priority=-1)
        kept = submit(store, params={}, priority=0, keep_for=5.0)
        timed = submit(store, params={}, priority=0, timeout=9.0)
        retried = submit(store, params={}, priority=0, max_attempts=3)
        full = submit(
            store,
            params={"text": "héllo", "n": [1, 2]},
            owner="ann",
            idempotency_key="ann\x00k",
            supersede_key="ann\x00s",
            meta={"note": "ünïcode"},
            priority=-3,
            max_attempts=4,
            keep_for=60,
            timeout=2.5,
            run_at=now + 600,
            created_at=now,
        )
        # The same task again with other settings and priority, then as the first.
        other = submit(store, params={}, priority=7, max_attempts=2, keep_for=60.0)
        again = submit(store, params={}, priority=0)
        # The events as any sequence, not only the lifecycle's tuple.
        listed, _, _ = store.enqueue(record(params={}, priority=9), list(lifecycle.submitted()))
        for job in (plain, high, kept, timed, retried, full, other, again, listed):
            got = store.get(job.id)
            assert got is not None
            assert {**got.__dict__, "position": None} == {**job.__dict__, "position": None}
        assert store.count(state=State.QUEUED) == 9
        order = [high, plain, kept, timed, retried, again, other, listed]
        assert [j.id for j in claim(store, max_jobs=9)] == [j.id for j in order]
        stored, created, _ = enqueue(store, record(idempotency_key="ann\x00k", owner="ann"))
        assert not created and stored.id == full.id  # the key, found
    finally:
        store.close()


def test_a_redis_that_stops_answering_fails_a_call_within_its_timeout(
    private_redis: RedisServer,
) -> None:
    """A script call waits for its reply for as long as the connection's timeout (kept
    by the kernel on the store's own connections), then fails as StoreUnavailable
    rather than hang; once Redis answers again, calls go through."""
    store = RedisStore(private_redis.url)
    store._redis.connection_pool.connection_kwargs["socket_timeout"] = 0.5
    try:
        first = submit(store)
        os.kill(private_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                submit(store)
            took = time.monotonic() - started
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
        assert 0.4 < took < 5.0, took
        assert store.get(first.id) is not None
        assert submit(store).id != first.id
    finally:
        store.close()


def test_a_forked_child_opens_connections_of_its_own(redis_store: RedisStore) -> None:
    """A process forked from one that used the store (a pre-forking server's workers)
    makes its calls on connections of its own: one shared with its parent would mix
    their replies."""
    job = submit(redis_store)
    parents = list(redis_store._free)
    assert parents
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when all is as it should be
        code = 1
        try:
            none_shared = redis_store._free == []
            got = redis_store._run(redis_module.scripts.GET, time.time(), job.id)
            own = all(conn not in parents for conn in redis_store._free)
            code = 0 if none_shared and got and own else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_store._free == parents
    got = redis_store.get(job.id)
    assert got is not None and got.id == job.id


def test_password_and_database_number_in_the_url(private_redis: RedisServer) -> None:
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("requirepass", "s3cret-pw")
    admin.close()
    url = f"redis://:s3cret-pw@127.0.0.1:{private_redis.port}/3"
    store = open_store(url)
    try:
        job = submit(store)
        assert store.get(job.id) is not None
    finally:
        store.close()
    authed = redis.Redis(port=private_redis.port, password="s3cret-pw")
    try:
        assert authed.dbsize() == 0  # nothing in database 0
        authed.execute_command("SELECT", 3)
        assert authed.dbsize() > 0  # the jobs live in database 3
    finally:
        authed.close()
    with pytest.raises(ConfigurationError) as info:
        open_store(f"redis://:wrong-pw@127.0.0.1:{private_redis.port}/3")
    message = str(info.value)
    assert "wrong-pw" not in message and "\n" not in message
    assert f"127.0.0.1:{private_redis.port}" in message


class _Changes:
    """Counts the feed's wake-ups for one job (a subscription confirmed counts too)."""

    def __init__(self) -> None:
        self._seen = 0
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self._seen += 1
            self._cond.notify_all()

    def wait_for(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._seen >= count, timeout=10), self._seen


def _script_calls(url: str, *commands: str) -> int:
    """The calls of `commands` that Redis ran without an error (both ways of running
    a script by default)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        stats = client.info("commandstats")
        return sum(
            int(stats.get(f"cmdstat_{c}", {}).get("calls", 0))
            - int(stats.get(f"cmdstat_{c}", {}).get("failed_calls", 0))
            for c in commands or ("evalsha", "fcall")
        )
    finally:
        client.close()


def test_a_user_who_may_call_functions_but_not_load_them_gets_scripts_until_loaded(
    private_redis: RedisServer,
) -> None:
    """On a Redis without the library, a user who may not load it runs scripts; once
    another user loaded it, a store of the first calls its functions."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.acl_setuser(
        "caller", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-function"],
    )  # fmt: skip
    url = f"redis://caller:pw@127.0.0.1:{private_redis.port}/0"
    first = RedisStore(url)
    try:
        job = submit(first)
        assert admin.function_list() == []
        assert _script_calls(private_redis.url, "evalsha") == 1
    finally:
        first.close()
    loader = RedisStore(private_redis.url)
    second = RedisStore(url)
    try:
        assert claim_one(loader).id == job.id  # loads the library
        assert _script_calls(private_redis.url, "fcall") == 1
        assert second.get(job.id) is not None
        assert _script_calls(private_redis.url, "fcall") == 2
        assert _script_calls(private_redis.url, "evalsha") == 1
    finally:
        loader.close()
        second.close()
        admin.close()


def test_one_library_serves_every_store_and_a_user_without_functions_gets_scripts(
    private_redis: RedisServer,
) -> None:
    """Stores load the library once between them and call its functions; a Redis user
    who may not call or load functions (as on Redis before 7.0, which has none) gets
    the same store through EVALSHA, and both see the same jobs."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-function", "-fcall", "-fcall_ro"],
    )  # fmt: skip
    first = RedisStore(private_redis.url)
    second = RedisStore(private_redis.url)
    limited = RedisStore(f"redis://limited:pw@127.0.0.1:{private_redis.port}/0")
    try:
        ran = [submit(s) for s in (first, second, second)]
        listed = admin.function_list()
        libraries = [dict(zip(lib[::2], lib[1::2], strict=True))["library_name"] for lib in listed]
        assert libraries == [redis_module.scripts.LIBRARY_NAME]
        assert _script_calls(private_redis.url, "evalsha") == 0
        assert _script_calls(private_redis.url, "fcall") == 3
        job = claim_one(limited)
        assert job.id == ran[0].id
        assert finish(limited, job)
        assert _script_calls(private_redis.url, "fcall") == 3  # none of the limited user's
        assert _script_calls(private_redis.url, "evalsha") >= 2
        done = first.get(job.id)
        assert done is not None and done.state is State.SUCCEEDED
        assert limited.get(ran[1].id) == second.get(ran[1].id)
    finally:
        for store in (first, second, limited):
            store.close()
        admin.close()


def test_a_waiter_elsewhere_is_handed_the_finished_record_without_reading_it(
    redis_store: RedisStore, redis_url: str
) -> None:
    watcher = open_store(redis_url)  # as another process would open it
    assert isinstance(watcher, RedisStore)
    try:
        # Its listener's news of connecting (which wakes every follower) comes first.
        _settled(watcher)
        now = time.time()
        job = submit(
            redis_store,
            now=now,
            params={"text": "naïve / ünïcode \u2028 \x00 end", "n": [1, 2.5, None]},
            owner="alice",
            idempotency_key="alice\x00k/1",
            meta={"note": "m"},
        )
        changes = _Changes()
        stop = watcher.notifier.subscribe(job.id, changes)
        try:
            changes.wait_for(1)  # the subscription is confirmed
            claimed = claim_one(redis_store, now=now)
            changes.wait_for(2)
            assert finish(redis_store, claimed, now=now + 1, result={"ok": "ü"}) is not None
            changes.wait_for(3)
            before = _script_calls(redis_url)
            brought = watcher.get(job.id)
            assert _script_calls(redis_url) == before  # no read: it came with the message
            assert brought == redis_store.get(job.id)
            assert brought is not None and brought.state is State.SUCCEEDED
            assert brought.result == {"ok": "ü"} and brought.params == job.params
            # Handed out once: the next read goes to Redis, and agrees.
            before = _script_calls(redis_url)
            assert watcher.get(job.id) == brought
            assert _script_calls(redis_url) == before + 1
        finally:
            stop()
    finally:
        watcher.close()


def test_a_process_reads_its_own_write_over_a_record_that_came_with_a_message(
    redis_store: RedisStore, redis_url: str
) -> None:
    watcher = open_store(redis_url)
    assert isinstance(watcher, RedisStore)
    try:
        _settled(watcher)
        now = time.time()
        job = submit(redis_store, now=now)
        changes = _Changes()
        stop = watcher.notifier.subscribe(job.id, changes)
        try:
            changes.wait_for(1)
            claimed = claim_one(redis_store, now=now)
            changes.wait_for(2)  # the claim's message, with the running record, is here
            assert watcher.save_progress(job.id, fence(claimed), Progress(current=3), now)
            seen = watcher.get(job.id)
            assert seen is not None and seen.progress.current == 3
        finally:
            stop()
    finally:
        watcher.close()


# -- jobs claimed at their submission for an idle worker ----------------------------


def _idle_worker(url: str) -> RedisStore:
    """Another process's store with a worker slot ("w-idle", this thread) that claimed
    and found nothing, which leaves it in the idle set."""
    worker = open_store(url)
    assert isinstance(worker, RedisStore)
    assert worker._listener.connected.wait(5.0)  # hears its wake channel
    assert claim(worker, worker="w-idle") == []
    return worker


def _wait_for_news(store: RedisStore, seen: int) -> None:
    """Wait as the idle slot (this thread) does, until it hears of work."""
    assert store.wait_for_work(seen, 5.0) != seen


def test_a_job_submitted_to_an_idle_worker_is_claimed_for_it_as_its_claim_would(
    redis_store: RedisStore, redis_url: str
) -> None:
    """The submission claims the job for the idle worker and sends it the record: the
    worker's next claim takes it without a round trip, as its own claim would have
    claimed it (attempt 1, its lease, the same events), and no other worker gets it."""
    worker = _idle_worker(redis_url)
    try:
        seen = worker.notifier.version(WORK)
        job = submit(redis_store)
        assert redis_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
        _wait_for_news(worker, seen)  # the record came with the news
        assert claim(worker, worker="w-other") == []
        worker.heartbeat("w-other", ["t"], 0.0)  # its slot goes: nobody is idle now
        before = _script_calls(redis_url)
        got = claim_one(worker, worker="w-idle")
        assert _script_calls(redis_url) == before  # taken without a round trip
        assert got == redis_store.get(job.id)
        assert (got.state, got.attempt, got.worker) == (State.RUNNING, 1, "w-idle")
        assert got.lease_until == pytest.approx(got.created_at + 30.0)
        assert got.started_at == got.created_at
        done = finish(worker, got)
        assert done is not None and done.state is State.SUCCEEDED
        queued = submit(redis_store)  # queued, and claimed as ever
        assert redis_store.get(queued.id).state is State.QUEUED  # type: ignore[union-attr]
        finish(redis_store, claim_one(redis_store, worker="w-idle"))
        kinds = [(e.kind, e.data, e.attempt) for e in redis_store.events(job.id)]
        assert kinds == [(e.kind, e.data, e.attempt) for e in redis_store.events(queued.id)]
        assert redis_store.count(state=State.RUNNING) == 0
    finally:
        worker.close()


def test_jobs_claimed_for_a_worker_that_stops_go_back_to_the_queue(
    redis_store: RedisStore, redis_url: str
) -> None:
    worker = _idle_worker(redis_url)
    try:
        seen = worker.notifier.version(WORK)
        job = submit(redis_store)
        assert redis_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
        _wait_for_news(worker, seen)
        worker.heartbeat("w-idle", ["t"], 0.0)  # it stopped without taking it
        back = redis_store.get(job.id)
        assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
        assert claim_one(redis_store, worker="w-next").id == job.id
    finally:
        worker.close()


def test_jobs_on_their_way_to_a_worker_that_stops_and_closes_go_back_to_the_queue(
    redis_store: RedisStore, redis_url: str
) -> None:
    """The process stops right after two submissions claimed jobs for its two idle
    slots, before its listener has read the news: both go back all the same."""
    worker = _idle_worker(redis_url)
    other_slot = threading.Thread(target=claim, args=(worker,), kwargs={"worker": "w-idle"})
    other_slot.start()
    other_slot.join()
    # The listener reads the news only once the stopping worker sends anything.
    gate = threading.Event()
    heard = worker._listener._on_wake

    def held_up(message: str) -> None:
        if "\n" in message:
            assert gate.wait(10.0)
        heard(message)

    publish = worker._redis.publish

    def publish_then_open(channel: str, message: str) -> int:
        try:
            return int(publish(channel, message))
        finally:
            gate.set()

    worker._listener._on_wake = held_up  # type: ignore[method-assign]
    worker._redis.publish = publish_then_open  # type: ignore[method-assign]
    try:
        jobs = [submit(redis_store), submit(redis_store)]
        assert [redis_store.get(j.id).state for j in jobs] == [State.RUNNING] * 2  # type: ignore[union-attr]
        worker.heartbeat("w-idle", ["t"], 0.0)
    finally:
        worker.close()
    for job in jobs:
        back = redis_store.get(job.id)
        assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)


def test_a_stopped_worker_is_not_handed_jobs(redis_store: RedisStore, redis_url: str) -> None:
    worker = _idle_worker(redis_url)
    try:
        worker.heartbeat("w-idle", ["t"], 0.0)  # its idle slot goes with it
        job = submit(redis_store)
        assert redis_store.get(job.id).state is State.QUEUED  # type: ignore[union-attr]
        kinds = [e.kind for e in redis_store.events(job.id)]
        assert kinds == [kind for kind, _ in lifecycle.submitted()]  # never claimed
    finally:
        worker.close()


def test_a_job_queued_ahead_is_not_passed_by_a_submission(
    redis_store: RedisStore, redis_url: str
) -> None:
    """Claims take jobs oldest first: a submission claims nothing for an idle worker
    while a due job of its tasks waits (here, a delayed one that came due)."""
    worker = _idle_worker(redis_url)
    try:
        now = time.time()
        ahead = submit(redis_store, now=now, run_at=now + 1.0)  # not due: only a wake-up
        assert claim(worker, worker="w-idle", now=now) == []  # idle again
        later = submit(redis_store, now=now + 2.0)  # `ahead` is due by then
        assert redis_store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
        got = claim(worker, worker="w-idle", now=now + 2.0, max_jobs=2)
        assert [r.id for r in got] == [ahead.id, later.id]
    finally:
        worker.close()


def test_a_task_with_a_concurrency_limit_is_never_claimed_at_submission(
    redis_store: RedisStore, redis_url: str
) -> None:
    worker = open_store(redis_url)
    assert isinstance(worker, RedisStore)
    try:
        assert worker._listener.connected.wait(5.0)
        assert claim(worker, ["t", "u"], worker="w-idle", limits={"t": 1}) == []
        seen = worker.notifier.version(WORK)
        limited = submit(redis_store, "t")
        assert redis_store.get(limited.id).state is State.QUEUED  # type: ignore[union-attr]
        # The slot is woken to claim it under the limit, as before.
        _wait_for_news(worker, seen)
        got = claim(worker, ["t", "u"], worker="w-idle", limits={"t": 1})
        assert [r.id for r in got] == [limited.id]
        assert claim(worker, ["t", "u"], worker="w-idle", limits={"t": 1}, max_jobs=2) == []
        free = submit(redis_store, "u")  # its other task has no limit
        assert redis_store.get(free.id).state is State.RUNNING  # type: ignore[union-attr]
    finally:
        worker.close()


@pytest.mark.parametrize("own_channel", [True, False], ids=["own-channel", "process-channel"])
def test_a_wake_up_for_a_job_to_claim_is_news_of_work(
    redis_store: RedisStore, redis_url: str, own_channel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot woken for a job it must claim itself (here under a concurrency limit)
    learns that work came, as for a job handed to it: a worker with ends to write
    claims as it writes them only then. Else it would write them alone and wait, no
    longer known as idle (the wake-up used its word up), with the job left queued
    until its next look (seconds later). The same whether the slot reads a wake
    channel of its own or, when that cannot be opened, its process's listener hears
    the wake-up."""
    if not own_channel:
        monkeypatch.setattr(redis_module, "open_slot_channel", _refused)
    worker = open_store(redis_url)
    assert isinstance(worker, RedisStore)
    try:
        _settled(worker)
        assert claim(worker, ["t"], worker="w-idle", limits={"t": 1}) == []
        seen = worker.notifier.version(WORK)
        limited = submit(redis_store, "t")
        assert redis_store.get(limited.id).state is State.QUEUED  # type: ignore[union-attr]
        assert worker.wait_for_work(seen, 5.0) != seen
        assert [r.id for r in claim(worker, ["t"], worker="w-idle", limits={"t": 1})] == [
            limited.id
        ]
    finally:
        worker.close()


def _refused(*args: object) -> None:
    raise redis.ConnectionError("refused")


def test_a_job_handed_to_a_slot_that_stops_goes_to_another_slot_of_its_worker(
    redis_store: RedisStore, redis_url: str
) -> None:
    """A slot reads the jobs handed to it on a wake channel of its own. One that stops
    right after a submission handed it a job, before reading it, leaves the job to
    its worker's other slots (claimed once, as its own claim would have), and is
    handed no more."""
    worker = _idle_worker(redis_url)  # this thread is the idle slot
    try:
        job = submit(redis_store)
        assert redis_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
        worker.slot_done()
        got: list[JobRecord] = []
        other = threading.Thread(target=lambda: got.extend(claim(worker, worker="w-idle")))
        other.start()
        other.join()
        assert [(r.id, r.state, r.attempt) for r in got] == [(job.id, State.RUNNING, 1)]
        assert redis_store.get(job.id) == got[0]
    finally:
        worker.close()


def test_a_slot_whose_wake_channel_is_lost_wakes_and_gets_another(
    redis_store: RedisStore, redis_url: str
) -> None:
    """The connection of a slot's own wake channel is closed by the server while the
    slot waits: the slot wakes at once (not at its next look, seconds later), and
    its next claim opens another, on which the next job handed to it comes."""
    worker = _idle_worker(redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        lost = worker._local.channel
        host, port = lost.pubsub.connection._sock.getsockname()[:2]
        assert client.client_kill_filter(_type=None, addr=f"{host}:{port}") == 1
        started = time.monotonic()
        worker.wait_for_work(worker.notifier.version(WORK), 10.0)
        assert time.monotonic() - started < 2.5  # not MAX_IDLE_WAIT (5 s): woken by the loss
        assert lost.closed
        assert claim(worker, worker="w-idle") == []
        assert worker._local.channel is not lost and not worker._local.channel.closed
        seen = worker.notifier.version(WORK)
        job = submit(redis_store)
        assert redis_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
        _wait_for_news(worker, seen)
        assert claim_one(worker, worker="w-idle").id == job.id
    finally:
        client.close()
        worker.close()


@pytest.mark.parametrize("how", ["wait", "callback"])
def test_news_that_came_while_nobody_waited_reaches_a_new_waiter_at_once(
    redis_store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """While nothing in the process waits, its listener reads the news only every
    LAZY seconds (here a minute), in one go. A thread that starts to wait for a job,
    or a callback that starts to follow one, is told at once of what came meanwhile
    (here the job's end, sent to the process that submitted it)."""
    monkeypatch.setattr(redis_listener, "LAZY", 60.0)
    _settled(redis_store)
    job = submit(redis_store)
    worker = open_store(redis_url)
    try:
        wait_for(lambda: redis_store._listener._lazy, what="the listener to sleep")
        seen = redis_store.notifier.version(job.id)
        assert finish(worker, claim_one(worker)) is not None
        assert redis_store.notifier.version(job.id) == seen  # not read yet
        started = time.monotonic()
        if how == "wait":
            assert redis_store.notifier.wait_end(job.id, seen, 10.0) != seen
        else:
            told = threading.Event()
            stop = redis_store.notifier.subscribe(job.id, told.set)
            try:
                assert told.wait(10.0)
            finally:
                stop()
        assert time.monotonic() - started < 5.0
        ended = redis_store.get(job.id)
        assert ended is not None and ended.state is State.SUCCEEDED
    finally:
        worker.close()


def test_a_wait_out_of_time_reads_the_job_before_saying_it_is_not_done(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`wait(timeout=0)` on a job that has ended returns its end, even before the
    process has read the news of it (which, while nothing waits, it reads every LAZY
    seconds): out of time, a wait reads the job once before it raises TimeoutError."""
    monkeypatch.setattr(redis_listener, "LAZY", 60.0)
    uw = Underway(redis_url)
    uw.task(name="t")(lambda: None)
    worker = open_store(redis_url)
    try:
        _settled(cast(RedisStore, uw.store))
        job = uw.submit("t")
        with pytest.raises(TimeoutError):
            uw.wait(job.id, timeout=0)
        wait_for(lambda: cast(RedisStore, uw.store)._listener._lazy, what="the listener to sleep")
        assert finish(worker, claim_one(worker), result=7) is not None
        assert uw.wait(job.id, timeout=0).state is State.SUCCEEDED
        assert job.wait(timeout=0) == 7
    finally:
        worker.close()
        uw.close()


def _settled(store: RedisStore) -> None:
    """Return once the store's listener is connected and has handled its news of
    connecting (which forgets all), so that what a test does next is heard."""
    assert store._listener.connected.wait(5.0)
    store._catch_up()


def test_a_waiter_for_a_job_submitted_here_needs_no_read_before_it_waits(
    redis_store: RedisStore, redis_url: str
) -> None:
    """The submission tells this process's feed the new job's state, which stands until
    the job changes: the job's end comes to this store instance's own channel."""
    _settled(redis_store)
    queued = submit(redis_store)
    version, known = redis_store.notifier.known(queued.id)
    assert version == redis_store.notifier.version(queued.id)
    assert known is not None and known.full() == queued and known.until is None
    finish(redis_store, claim_one(redis_store))
    worker = _idle_worker(redis_url)
    try:
        pushed = submit(redis_store)
        known = redis_store.notifier.known(pushed.id)[1]
        assert known is not None and known.state is State.RUNNING
        assert known.full() == redis_store.get(pushed.id)
    finally:
        worker.close()


# -- the ends of jobs submitted here come to this store instance's own channel ----------


def _subscribers(url: str, channel: str) -> int:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return int(client.pubsub_numsub(channel)[0][1])
    finally:
        client.close()


class _EndWaiter:
    """A thread of the submitting process waiting for a job's end (as `wait()` does)."""

    def __init__(self, store: RedisStore, job_id: str) -> None:
        self.seen = store.notifier.version(job_id)
        self.woke: int | None = None
        self._thread = threading.Thread(target=self._run, args=(store, job_id), daemon=True)
        self._thread.start()
        # It sleeps on the feed now, or follows it while it reads the subscription
        # itself (a change before that would have returned at once).
        feed = store.notifier
        wait_for(
            lambda: job_id in feed._end_waiters or job_id in feed._listeners,
            what="the waiter sleeps",
        )

    def _run(self, store: RedisStore, job_id: str) -> None:
        self.woke = store.notifier.wait_end(job_id, self.seen, 10.0)

    def join(self) -> int:
        self._thread.join(10.0)
        assert self.woke is not None and self.woke != self.seen, "the waiter was not woken"
        return self.woke


def test_waiters_are_woken_while_one_of_them_reads_the_news_and_after(
    redis_store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that waits for the end of a job submitted here reads the news itself,
    while no other thread does. What it reads for other waiters wakes them; once it is
    done, the news of those still waiting is read for them at once (though, while
    nobody waits, it is read only every LAZY seconds: here a minute)."""
    monkeypatch.setattr(redis_listener, "LAZY", 60.0)
    _settled(redis_store)
    worker = open_store(redis_url)
    try:
        first, second, third = (submit(redis_store) for _ in range(3))
        reader = _EndWaiter(redis_store, first.id)
        wait_for(redis_store._listener._read_lock.locked, what="a waiter reads the news")
        others = [_EndWaiter(redis_store, second.id), _EndWaiter(redis_store, third.id)]
        claimed = {r.id: r for r in claim(worker, max_jobs=3)}
        assert finish(worker, claimed[second.id]) is not None
        others[0].join()  # read by the first waiter
        assert finish(worker, claimed[first.id]) is not None
        reader.join()
        assert finish(worker, claimed[third.id]) is not None
        others[1].join()
    finally:
        worker.close()


def test_a_job_channel_nobody_follows_is_left_after_a_while_even_while_a_waiter_reads(
    redis_store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's channel stays subscribed LINGER seconds after its last follower left
    (here 0.2 s), then is left: also while a thread of the process waits for a job of
    its own, reading the news itself (so that the listener's thread does not)."""
    monkeypatch.setattr(redis_listener, "LINGER", 0.2)
    _settled(redis_store)
    worker = open_store(redis_url)
    try:
        elsewhere = submit(worker)  # followed here on its own channel
        channel = redis_store.keys.job_channel(elsewhere.id)
        seen = redis_store.notifier.version(elsewhere.id)
        redis_store.notifier.wait(elsewhere.id, seen, 0.05)  # follows it, then leaves it
        wait_for(lambda: _subscribers(redis_url, channel) == 1, what="the channel followed")
        own = submit(redis_store)
        reader = _EndWaiter(redis_store, own.id)
        wait_for(redis_store._listener._read_lock.locked, what="a waiter reads the news")
        wait_for(lambda: _subscribers(redis_url, channel) == 0, 5.0, what="the channel left")
        for claimed in claim(worker, max_jobs=2):
            assert finish(worker, claimed) is not None
        reader.join()
    finally:
        worker.close()


def test_the_end_of_a_job_submitted_here_comes_without_a_subscription_or_a_read(
    redis_store: RedisStore, redis_url: str
) -> None:
    _settled(redis_store)
    worker = open_store(redis_url)  # another process runs it
    try:
        job = submit(redis_store)
        waiter = _EndWaiter(redis_store, job.id)
        assert _subscribers(redis_url, redis_store.keys.job_channel(job.id)) == 0
        claimed = claim_one(worker)
        assert finish(worker, claimed, result={"ok": 1}) is not None
        waiter.join()
        before = _script_calls(redis_url)
        ended = redis_store.get(job.id)
        assert _script_calls(redis_url) == before  # the final record came with the news
        assert ended is not None and ended.state is State.SUCCEEDED
        assert ended.result == {"ok": 1} and ended == worker.get(job.id)
    finally:
        worker.close()


@pytest.mark.parametrize(
    "meanwhile",
    ["nothing", "failed", "meta", "cancel", "progress", "output", "last progress", "both"],
)
def test_the_record_an_end_comes_with_is_the_job_as_stored(
    redis_store: RedisStore, redis_url: str, meanwhile: str
) -> None:
    """The worker that ends a job makes the record its end is announced with, so that
    Redis need not read and encode it; a job changed since its claim in a way the
    worker may not know of (elsewhere, or by its own progress or output, written while
    that record was made) is read by Redis instead. Either way the submitter gets the
    job as stored."""
    _settled(redis_store)
    worker = open_store(redis_url)  # another process runs it
    assert isinstance(worker, RedisStore)
    try:
        job = submit(redis_store)
        claimed = claim_one(worker)
        as_claimed = dict(worker._claimed[job.id])
        now = time.time()
        if meanwhile == "meta":
            assert redis_store.update_meta(job.id, {"note": "elsewhere"})
        elif meanwhile == "cancel":
            assert cancel(redis_store, job.id) is not None
        elif meanwhile in ("progress", "both"):
            assert worker.save_progress(job.id, fence(claimed), Progress(current=3), now)
        elif meanwhile == "output":
            assert worker.append(job.id, fence(claimed), [output_item("a")], now)
        # As if the record were made while that write was on its way.
        worker._claimed[job.id] = as_claimed
        _settled(redis_store)  # what the change said has come
        waiter = _EndWaiter(redis_store, job.id)
        state = State.FAILED if meanwhile == "failed" else State.SUCCEEDED
        # "last progress": the end carries progress its worker had not written yet;
        # "both": it does, after its worker wrote some (which the record predates).
        last = Progress(current=4, total=4) if meanwhile in ("last progress", "both") else None
        decision = ended(claimed, state=state, result={"ok": 1}, now=time.time(), progress=last)
        reads = _script_calls(redis_url, "hgetall")
        assert worker.apply([decision], time.time()) == [True]
        predicted = meanwhile in ("nothing", "failed", "last progress")
        assert _script_calls(redis_url, "hgetall") == reads + (0 if predicted else 1)
        waiter.join()
        before = _script_calls(redis_url)
        came = redis_store.get(job.id)
        assert _script_calls(redis_url) == before  # the record came with the news
        fresh = open_store(redis_url)
        try:
            assert came is not None and came == fresh.get(job.id)
        finally:
            fresh.close()
        assert came.state is state and came.worker is None and came.lease_until is None
        if last is not None:
            assert came.progress == last
        assert job.id not in worker._claimed  # kept while the job ran here, not after
    finally:
        worker.close()


def test_a_large_final_record_is_read_rather_than_sent_to_the_submitter(
    redis_store: RedisStore, redis_url: str
) -> None:
    _settled(redis_store)
    worker = open_store(redis_url)
    try:
        job = submit(redis_store)
        waiter = _EndWaiter(redis_store, job.id)
        big = "x" * 100_000  # a large result: not shipped to every submitting process
        assert finish(worker, claim_one(worker), result=big) is not None
        waiter.join()  # still woken by the end
        assert redis_store._listener._record_chars == 0  # nothing kept
        before = _script_calls(redis_url)
        ended = redis_store.get(job.id)
        assert _script_calls(redis_url) == before + 1
        assert ended is not None and ended.result == big
    finally:
        worker.close()


def test_kept_records_are_bounded_in_size(redis_store: RedisStore) -> None:
    listener = redis_store._listener
    doc = "y" * 60_000
    for n in range(400):  # 24 MB of records, each under the size sent
        listener._ended(f"\x01job-{n}\n{doc}")
    assert listener._record_chars <= redis_listener.MAX_RECORD_BYTES
    assert listener._record_chars == len(listener._records) * len(doc)
    assert listener.take("job-399") == doc and listener.take("job-0") is None


@pytest.mark.parametrize("change", ["meta", "delete"])
def test_a_change_elsewhere_after_the_end_is_not_hidden_by_the_record_that_came_with_it(
    redis_store: RedisStore, redis_url: str, change: str
) -> None:
    _settled(redis_store)
    other = open_store(redis_url)
    try:
        job = submit(redis_store)
        waiter = _EndWaiter(redis_store, job.id)
        finish(other, claim_one(other))
        seen = waiter.join()  # the final record is kept here now
        if change == "meta":
            assert other.update_meta(job.id, {"note": "later"})
        else:
            assert other.delete(job.id)
        assert redis_store.notifier.wait_end(job.id, seen, 10.0) != seen  # heard of it
        now = redis_store.get(job.id)
        if change == "meta":
            assert now is not None and now.meta == {"note": "later"}
        else:
            assert now is None
    finally:
        other.close()


def test_a_job_submitted_before_the_channel_was_lost_is_followed_on_its_own_channel(
    redis_store: RedisStore, redis_url: str
) -> None:
    """Its end may have been sent while the listener was away: its waiters follow it
    on its own channel once the listener is back (after reading it again)."""
    _settled(redis_store)
    job = submit(redis_store)
    assert redis_store._listener.hears(job.id)
    killer = redis.Redis.from_url(redis_url)
    try:
        assert killer.client_kill_filter(_type="pubsub") >= 1
    finally:
        killer.close()
    wait_for(lambda: not redis_store._listener.hears(job.id), what="the loss is seen")
    wait_for(redis_store._listener.connected.is_set, what="the listener is back")
    ended = threading.Event()

    def wait() -> None:  # as `Underway.wait` does: read, then sleep until it changes
        while True:
            seen = redis_store.notifier.version(job.id)
            now = redis_store.get(job.id)
            if now is not None and now.state is State.SUCCEEDED:
                ended.set()
                return
            redis_store.notifier.wait_end(job.id, seen, 10.0)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    channel = redis_store.keys.job_channel(job.id)
    wait_for(lambda: _subscribers(redis_url, channel) == 1, what="the job's channel followed")
    other = open_store(redis_url)
    try:
        finish(other, claim_one(other))
    finally:
        other.close()
    assert ended.wait(10.0)
    waiter.join(10.0)
    later = submit(redis_store)  # submitted since: its end comes to this instance again
    wait_for(lambda: redis_store._listener.hears(later.id), what="the channel is heard again")


# -- a worker slot's own wake channel (`redis_slots`) -------------------------------
def _slot_client(url: str) -> redis.Redis[str]:
    # As the store makes its client: a socket timeout, so its descriptor is non-blocking
    # and recv() would first wait for data on its own.
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0)


def _in_thread(call: Callable[[], T], timeout: float = 10.0) -> T:
    """`call()` in a thread, failing the test when it has not returned by `timeout`."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert box, f"{call} did not return within {timeout}s"
    return box[0]


@pytest.fixture(params=["hiredis", "pubsub"])
def slot(
    request: pytest.FixtureRequest, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[redis.Redis[str], SlotChannel]]:
    """A client like the store's, and a slot channel named `slot-test` opened on it:
    read with hiredis straight from the socket (`redis_pubsub.Subscription`), and
    through redis-py's `PubSub`, as where the first cannot be used (TLS, RESP3)."""
    if request.param == "pubsub":
        monkeypatch.setattr(redis_pubsub, "hiredis", None)
    client = _slot_client(redis_url)
    channel = open_slot_channel(client, "slot-test", "w", "t", 5.0)
    lean = isinstance(channel.pubsub, redis_pubsub.Subscription)
    assert lean == (request.param == "hiredis")
    try:
        yield client, channel
    finally:
        channel.close()
        client.close()


def test_a_slot_channel_reads_what_came_whole_and_in_order(
    slot: tuple[redis.Redis[str], SlotChannel],
) -> None:
    client, channel = slot
    big = "x" * 300_000  # several reads of the socket, and a message cut between them
    sent = ["first", big, *(f"m{i}" for i in range(200)), "é ✓"]
    for message in sent:
        client.publish("slot-test", message)
    got: list[str] = []
    deadline = time.monotonic() + 10.0
    while len(got) < len(sent) and time.monotonic() < deadline:
        got += _in_thread(lambda: channel.wait(0.5, lambda: False))
    assert got == sent
    # Nothing more came: neither a wait that times out nor a look blocks.
    assert _in_thread(lambda: channel.wait(0.05, lambda: False)) == []
    assert _in_thread(channel.take) == []


def test_a_slot_channel_drains_up_to_its_marker(
    slot: tuple[redis.Redis[str], SlotChannel],
) -> None:
    client, channel = slot
    client.publish("slot-test", "before")
    got = _in_thread(lambda: channel.drain(lambda t: client.publish("slot-test", t), 5.0))
    assert got == ["before"]


def test_a_slot_channel_whose_connection_is_cut_says_so(
    slot: tuple[redis.Redis[str], SlotChannel], redis_url: str
) -> None:
    _, channel = slot
    killer = redis.Redis.from_url(redis_url)
    try:
        assert killer.client_kill_filter(_type="pubsub") >= 1
    finally:
        killer.close()
    raised = _in_thread(lambda: _raised(lambda: channel.wait(5.0, lambda: False)))
    assert isinstance(raised, redis.ConnectionError)


def _raised(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # handed to the test's thread, which raises it
        return exc
    return None


def test_a_claim_that_finds_queued_jobs_is_news_of_work(
    redis_store: RedisStore, redis_url: str
) -> None:
    """No submission tells a busy worker of the job it queues: a claim that finds queued
    jobs is news of work to its process, so that a slot with ends to write lets more
    gather before its next claim (`Worker.linger`). A claim that finds none is not."""
    worker = open_store(redis_url)
    assert isinstance(worker, RedisStore)
    try:
        _settled(worker)
        seen = worker.notifier.version(WORK)
        first = submit(redis_store, "t")
        submit(redis_store, "t")
        assert [r.id for r in claim(worker, ["t"], worker="w", max_jobs=1)] == [first.id]
        assert worker.notifier.version(WORK) != seen
        claim(worker, ["t"], worker="w", max_jobs=2)
        seen = worker.notifier.version(WORK)
        assert claim(worker, ["t"], worker="w", max_jobs=2) == []
        assert worker.notifier.version(WORK) == seen
    finally:
        worker.close()


def test_a_slot_that_waited_for_jobs_to_gather_takes_them_all_in_one_claim(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's only slot runs a short job while three more come: one is handed to it
    at its submission (the slot's last claim came up short, so it is known as idle),
    two are queued. With the first job's end to write, the slot lets jobs gather
    (`Worker.linger`), then asks for a whole batch: the three come in one call, where
    a claim of as many as the last one found would take one, then the other two."""
    monkeypatch.setattr(Worker, "SHORT_JOB", 5.0)  # its end waits, on any machine
    uw = Underway(redis_url, workers=1)
    later: list[JobHandle] = []

    @uw.task
    def spawn() -> int:
        later.extend(uw.submit("quick", n=n) for n in range(3))
        return 3

    @uw.task
    def quick(n: int) -> int:
        return n

    claimed: list[list[str]] = []
    store = uw.store
    real = store.apply_and_claim

    def counting(*args: Any, **kwargs: Any) -> tuple[list[bool], list[JobRecord]]:
        done, records = real(*args, **kwargs)
        if records:
            claimed.append([r.id for r in records])
        return done, records

    monkeypatch.setattr(store, "apply_and_claim", counting)
    first = uw.submit("quick", n=-1)
    second = uw.submit("spawn")  # queued behind `first`: claimed with it, or after it
    uw.start()
    try:
        assert first.wait(timeout=10) == -1
        assert second.wait(timeout=10) == 3
        assert [h.wait(timeout=10) for h in later] == [0, 1, 2]
        assert [h.id for h in later] in claimed
    finally:
        uw.close()
