"""What only the PostgreSQL store promises: its schema, its URL, its wake-ups, outages."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.contract.helpers import (
    claim,
    claim_one,
    ended,
    enqueue,
    fence,
    finish,
    output_item,
    submit,
)
from tests.contract.helpers import (
    record as new_record,
)
from tests.support.postgres_server import PostgresServer, drop_schema, fresh_schema, with_schema
from tests.support.services import free_port, missing
from tests.support.wait import wait_for
from underway import Underway, lifecycle
from underway.errors import ConfigurationError, StoreUnavailable
from underway.feed import WORK
from underway.records import POSITION_LIMIT, JobRecord, State
from underway.stores import open_store, postgres
from underway.stores import postgres_schema as schema
from underway.stores.postgres import PostgresStore, split_url
from underway.stores.postgres_sql import fetch, fetch_many

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[PostgresStore]:
    store = open_store(postgres_url)
    assert isinstance(store, PostgresStore)
    # Each submission looks for an idle worker, whenever the last one found none (the
    # window in which it would not is tested on its own).
    store.no_idle_for = 0.0
    yield store
    store.close()


def _tables(url: str, schema: str) -> list[str]:
    with psycopg.connect(split_url(url)[0]) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        ).fetchall()
    return [r[0] for r in rows]


def test_the_schema_option_keeps_the_tables_apart(postgres_session_url: str) -> None:
    name = fresh_schema()
    url = with_schema(postgres_session_url, name).replace("postgresql://", "postgres://")
    try:
        store = open_store(url)
        try:
            submit(store)
            assert store.count() == 1
        finally:
            store.close()
        assert _tables(postgres_session_url, name) == [
            "underway_events",
            "underway_idle",
            "underway_jobs",
            "underway_schema",
            "underway_workers",
        ]
    finally:
        drop_schema(postgres_session_url, name)


def test_split_url_strips_the_schema_option_only() -> None:
    assert split_url("postgresql://u@h:5/db?schema=jobs&sslmode=disable") == (
        "postgresql://u@h:5/db?sslmode=disable",
        "jobs",
    )
    assert split_url("postgres://h/db") == ("postgres://h/db", "public")


def test_a_newer_schema_is_refused_in_one_line(pg_store: PostgresStore, postgres_url: str) -> None:
    pg_store.close()
    conninfo, name = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'UPDATE "{name}".underway_schema SET version = 99')
    with pytest.raises(ConfigurationError) as caught:
        open_store(postgres_url)
    message = str(caught.value)
    assert "\n" not in message
    assert "schema version 99" in message and "upgrade underway" in message


def test_stores_opened_together_migrate_once(postgres_url: str) -> None:
    import threading

    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            opened = open_store(postgres_url)
            assert isinstance(opened, PostgresStore)
            stores.append(opened)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        submit(stores[0])
        assert all(s.count() == 1 for s in stores)
    finally:
        for s in stores:
            s.close()


def test_unreachable_server_is_a_one_line_configuration_error() -> None:
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db"
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    assert "127.0.0.1" in message


def test_a_missing_extra_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "underway.stores.postgres", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'underway\[postgres\]'"):
        open_store("postgresql://localhost/db")


def test_another_store_instance_is_woken_by_notify(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    other = open_store(postgres_url)
    try:
        job = submit(pg_store)
        key_seen = other.notifier.version(job.id)
        # The first wait has the other instance listen for job changes; it then
        # wakes every waiter once (what happened before was not heard).
        key_seen = other.notifier.wait(job.id, key_seen, 5.0)
        started = time.monotonic()
        claimed = claim_one(pg_store)
        # Far less than the safety-net poll: the change came by NOTIFY.
        assert other.notifier.wait(job.id, key_seen, 5.0) != key_seen
        assert time.monotonic() - started < 2.0
        assert pg_store.append(claimed.id, fence(claimed), [output_item(1)], time.time())
        work_seen = other.wait_for_work(other.notifier.version("\x00work"), 5.0)  # listens
        submit(pg_store)
        assert other.wait_for_work(work_seen, 5.0) != work_seen
    finally:
        other.close()


def test_a_bulk_claim_and_finish_takes_few_statements(pg_store: PostgresStore) -> None:
    """A batch of ends and the next claim go out as one pipeline, in one implicit
    transaction (no BEGIN, no COMMIT): one statement for all the plain ends and one
    for the claim."""
    jobs = 60
    for _ in range(jobs):
        submit(pg_store)
    sent: list[int] = []
    real_run, real_fetch_many = postgres.run, postgres.fetch_many

    def run(*args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return real_run(*args, **kwargs)

    def fetch_many(conn: Any, statements: Any) -> Any:
        sent.append(len(statements))
        return real_fetch_many(conn, statements)

    patch = pytest.MonkeyPatch()
    patch.setattr(postgres, "run", run)
    patch.setattr(postgres, "fetch_many", fetch_many)
    try:
        now = time.time()
        held = claim(pg_store, max_jobs=20, now=now)
        finished = 0
        while held:
            decisions = [ended(r, now=now) for r in held]
            done, held = pg_store.apply_and_claim(
                decisions, worker="worker-a", tasks=["t"], limits={}, lease=30.0, now=now,
                max_jobs=20,
            )  # fmt: skip
            assert all(done)
            finished += len(done)
    finally:
        patch.undo()
    assert finished == jobs
    assert pg_store.count(state=State.SUCCEEDED) == jobs
    # 1 claim, then 3 batches of 20 ends with the next claim: 2 statements each.
    assert sum(sent) == 7, f"{sum(sent)} statements for {jobs} jobs: {sent}"


def _analyzed(store: PostgresStore) -> bool:
    """Has someone run ANALYZE on the store's jobs table (autovacuum's do not count)?"""
    with store._connection() as conn:
        row = conn.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relid = %s::regclass",
            (store._sql.jobs,),
        ).fetchone()
    return bool(row and row[0])


def test_a_table_that_grows_from_empty_is_analyzed_after_hundreds_of_claims(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Statements are planned once for all their runs: a plan made while the jobs table
    was empty reads the whole table (a batch of ends, to lock its rows). A store that
    claims hundreds of jobs looks at the table's statistics after every
    `STATS_JOBS` of them, not only once a second, and analyzes a table that has
    outgrown them, which has every session plan afresh."""
    monkeypatch.setattr(postgres, "STATS_CHECK", 3600.0)  # no look brought by the clock

    held: list[Any] = []
    for turn in range(3 * postgres.STATS_JOBS // 16):
        for _ in range(16):
            submit(pg_store)
        now = time.time()
        done, held = pg_store.apply_and_claim(
            [ended(r, now=now) for r in held], worker="worker-a", tasks=["t"], limits={},
            lease=30.0, now=now, max_jobs=16,
        )  # fmt: skip
        assert all(done) and len(held) == 16
        if turn == 0:
            assert not _analyzed(pg_store)  # the first look found a table too small to matter
    assert _analyzed(pg_store)


def test_a_store_does_not_wait_for_another_session_that_analyzes_the_table(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Every worker process looks at the table's statistics for itself: one that finds
    them off while another session analyzes the table goes on (its next look tries
    again) instead of waiting to analyze it once more."""
    pg_store.enqueue_many([new_record("t") for _ in range(1500)], lifecycle.submitted())
    jobs = pg_store._sql.jobs

    with psycopg.connect(split_url(postgres_url)[0]) as other:
        other.execute(f"LOCK TABLE {jobs} IN SHARE UPDATE EXCLUSIVE MODE")  # as ANALYZE does
        looked = threading.Thread(target=pg_store._refresh_stats, args=(postgres.STATS_JOBS,))
        looked.start()
        looked.join(timeout=20)
        assert not looked.is_alive(), "the look waited for the other session's lock"
        assert not _analyzed(pg_store)
        other.rollback()
    pg_store._refresh_stats(postgres.STATS_JOBS)
    assert _analyzed(pg_store)


def test_a_server_without_skip_locked_for_analyze_gets_a_plain_one(
    pg_store: PostgresStore,
) -> None:
    """PostgreSQL before 12 knows no `ANALYZE (SKIP_LOCKED)`: the store analyzes the
    plain way from then on (it waits for another session's analysis there)."""
    sent: list[str] = []

    class Older:
        def execute(self, sql: str) -> None:
            sent.append(sql)
            if "SKIP_LOCKED" in sql:
                raise psycopg.errors.SyntaxError('syntax error at or near "SKIP_LOCKED"')

    for _ in range(2):
        pg_store._analyze(Older())  # type: ignore[arg-type]
    jobs = pg_store._sql.jobs
    assert sent == [f"ANALYZE (SKIP_LOCKED) {jobs}", f"ANALYZE {jobs}", f"ANALYZE {jobs}"]


def test_a_look_at_the_statistics_that_fails_is_not_tried_again_for_a_minute(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that may not analyze the table (it is not the table's owner, say) looks
    again after a minute, not after every `STATS_JOBS` jobs it claims."""
    looks: list[int] = []
    real = pg_store._connection

    @contextlib.contextmanager
    def failing() -> Iterator[Any]:
        looks.append(1)
        with real() as conn:
            conn.execute("SELECT 1/0")  # raises psycopg's DivisionByZero
            yield conn

    monkeypatch.setattr(pg_store, "_connection", failing)
    pg_store._stats_due = 0.0
    pg_store._refresh_stats(1)
    for _ in range(4):
        pg_store._refresh_stats(postgres.STATS_JOBS)
    assert len(looks) == 1


def test_a_batch_of_ends_locks_its_rows_in_the_order_of_their_ids(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Two transactions that lock the same jobs lock them in one order (their ids), so
    neither waits on a row the other holds while holding one it needs: a batch of
    ends that finds the middle job locked holds the first and not yet the last."""
    for _ in range(3):
        submit(pg_store)
    held = claim(pg_store, max_jobs=3, now=time.time())
    first, middle, last = sorted(held, key=lambda r: r.id)
    jobs = pg_store._sql.jobs
    url = split_url(postgres_url)[0]
    with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as probe:
        holder.execute(f"SELECT id FROM {jobs} WHERE id = %s FOR UPDATE", (middle.id,))
        answers: list[list[bool]] = []
        ends = threading.Thread(
            target=lambda: answers.append(
                pg_store.apply([ended(r) for r in (last, middle, first)], time.time())
            )
        )
        ends.start()
        try:
            wait_for(
                lambda: (
                    probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                    == (1,)
                ),
                timeout=30,
                what="the batch to wait for the middle job's row",
            )

            def locked(job_id: str) -> bool:
                try:
                    with probe.transaction():
                        probe.execute(
                            f"SELECT id FROM {jobs} WHERE id = %s FOR UPDATE NOWAIT", (job_id,)
                        )
                    return False
                except psycopg.errors.LockNotAvailable:
                    return True

            assert (locked(first.id), locked(last.id)) == (True, False)
        finally:
            holder.rollback()
            ends.join(timeout=30)
    assert answers == [[True, True, True]]


def test_a_batch_that_fails_leaves_nothing_applied(pg_store: PostgresStore) -> None:
    """The ends and the claim of a batch are one transaction without BEGIN/COMMIT
    (one pipeline with one Sync, or one statement for a single end): when the claim
    fails, the ends are undone too, and the store goes on working."""
    first, second = submit(pg_store), submit(pg_store)
    now = time.time()
    held = claim_one(pg_store, now=now)
    sql = pg_store._sql
    selects = sql.claim_select, sql.claim_select_after_apply
    sql.claim_select, sql.claim_select_after_apply = (
        text.replace("ORDER BY", "ORDER BY nonsense,") for text in selects
    )
    try:
        with pytest.raises(psycopg.Error):
            pg_store.apply_and_claim(
                [ended(held, now=now)], worker="worker-a", tasks=["t"], limits={},
                lease=30.0, now=now, max_jobs=2,
            )  # fmt: skip
    finally:
        sql.claim_select, sql.claim_select_after_apply = selects
    again = pg_store.get(held.id)
    assert again is not None and again.state is State.RUNNING
    other = first if held.id == second.id else second
    queued = pg_store.get(other.id)
    assert queued is not None and queued.state is State.QUEUED
    done, claimed = pg_store.apply_and_claim(
        [ended(held, now=now)], worker="worker-a", tasks=["t"], limits={}, lease=30.0,
        now=now, max_jobs=2,
    )  # fmt: skip
    assert done == [True] and [r.id for r in claimed] == [other.id]


def test_calls_raise_store_unavailable_while_the_server_is_down_then_resume() -> None:
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        missing(f"PostgreSQL ({exc})")
    with server:
        store = PostgresStore(server.url)
        try:
            job = submit(store)
            store.notifier.wait_end(job.id, store.notifier.version(job.id), 0.01)  # listens
            assert store._listener.connected.wait(10)
            server.stop()
            with pytest.raises(StoreUnavailable) as caught:
                store.get(job.id)
            assert caught.value.retry_after > 0
            with pytest.raises(StoreUnavailable):
                submit(store)
            with pytest.raises(StoreUnavailable):
                store.ping()
            server.start()
            deadline = time.monotonic() + 30
            while True:
                try:
                    got = store.get(job.id)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store did not come back"
                    time.sleep(0.05)
            assert got is not None and got.id == job.id
            # The listener reconnects by itself.
            assert store._listener.connected.wait(10)
            claimed = claim_one(store)
            assert claimed.id == job.id
        finally:
            store.close()


def test_a_waiter_elsewhere_learns_the_final_record_with_the_news(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    other = open_store(postgres_url)
    try:
        job = submit(pg_store)
        seen = other.notifier.wait_end(job.id, other.notifier.version(job.id), 5.0)  # listens
        claimed = claim_one(pg_store)
        done = finish(pg_store, claimed, result={"n": 1})
        assert done is not None
        assert other.notifier.wait_end(job.id, seen, 5.0) != seen
        _, known = other.notifier.known(job.id)
        assert known is not None and known.state is State.SUCCEEDED
        assert known.full() == done  # no read needed
    finally:
        other.close()


def test_a_submission_wakes_one_idle_worker_process(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Two worker processes with an idle slot each: a new job is announced to one of
    them (the one idle longest), not to both; with none idle, to all."""
    first, second = open_store(postgres_url), open_store(postgres_url)
    assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
    conninfo, name = split_url(postgres_url)

    def idle() -> list[str]:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            rows = conn.execute(
                f'SELECT channel FROM "{name}".underway_idle WHERE slots > 0 ORDER BY at'
            )
            return [r[0] for r in rows]

    try:
        seen = {}
        for worker in (first, second):
            seen[worker] = worker.wait_for_work(worker.notifier.version("\x00work"), 5.0)
            assert claim(worker, worker=f"w-{id(worker)}") == []  # found nothing: idle
        assert idle() == [first._listener.own_channel, second._listener.own_channel]
        job = submit(pg_store)
        assert idle() == [second._listener.own_channel]  # the first's word is used up
        assert first.wait_for_work(seen[first], 5.0) != seen[first]
        # Claimed for the idle worker at its submission: its next claim takes it.
        assert claim_one(first, worker=f"w-{id(first)}").id == job.id
        submit(pg_store)  # the second is still idle: its turn
        assert idle() == []
        assert second.wait_for_work(seen[second], 5.0) != seen[second]
        seen = {w: w.notifier.version("\x00work") for w in (first, second)}
        submit(pg_store)  # nobody said it is idle: everyone hears
        for worker in (first, second):
            assert worker.wait_for_work(seen[worker], 5.0) != seen[worker]
    finally:
        first.close()
        second.close()


def test_a_process_chosen_when_its_slots_got_busy_passes_the_work_on(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    busy, other = open_store(postgres_url), open_store(postgres_url)
    assert isinstance(busy, PostgresStore) and isinstance(other, PostgresStore)
    try:
        seen = other.wait_for_work(other.notifier.version("\x00work"), 5.0)  # listens
        assert claim(busy, worker="w-busy") == []  # says it is idle, but no slot waits
        submit(pg_store)  # chooses `busy`, which passes it on to all
        assert other.wait_for_work(seen, 5.0) != seen
    finally:
        busy.close()
        other.close()


def test_a_version_1_schema_is_migrated(pg_store: PostgresStore, postgres_url: str) -> None:
    job = submit(pg_store)
    pg_store.close()
    conninfo, name = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{name}".underway_idle')
        conn.execute(f'UPDATE "{name}".underway_schema SET version = 1')
    again = open_store(postgres_url)
    try:
        assert again.get(job.id) is not None
        assert claim(again) != []  # claims work, and a claim that finds nothing too
        assert claim(again) == []
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(f'SELECT version FROM "{name}".underway_schema').fetchone()
        assert row == (schema.SCHEMA_VERSION,)
    finally:
        again.close()


def test_a_version_2_schema_is_migrated(pg_store: PostgresStore, postgres_url: str) -> None:
    """Version 3 adds to the idle table what a submission needs to claim a job for an
    idle worker; a version 2 store gets it on first use, and works as before."""
    job = submit(pg_store)
    pg_store.close()
    conninfo, name = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{name}".underway_idle')
        for statement in schema.MIGRATIONS[2]:
            conn.execute(statement.format(s=f'"{name}"'))
        conn.execute(f'UPDATE "{name}".underway_schema SET version = 2')
    again = open_store(postgres_url)
    try:
        assert claim_one(again).id == job.id
        assert claim(again) == []  # says it is idle, in the new columns too
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(f'SELECT version FROM "{name}".underway_schema').fetchone()
            assert row == (schema.SCHEMA_VERSION,)
            words = conn.execute(f'SELECT worker, push_tasks FROM "{name}".underway_idle')
            assert words.fetchall() == [(None, ["t"])]  # nobody waits for work: no pushes
    finally:
        again.close()


def test_a_version_3_schema_is_migrated_and_its_jobs_keep_their_first_event(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Version 4 keeps a new job's first event on its row; a job stored before has it
    in the events table, and both read the same events."""
    old = submit(pg_store)
    old_events = pg_store.events(old.id)
    pg_store.close()
    conninfo, name = split_url(postgres_url)
    jobs, events = f'"{name}".underway_jobs', f'"{name}".underway_events'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # As version 3 stored it: the first event a row of the events table.
        conn.execute(
            f"INSERT INTO {events} (job_id, seq, kind, idx, data, at, attempt) "
            f"SELECT id, 1, 'state', NULL, first_event, created_at, 0 FROM {jobs}"
        )
        conn.execute(f"ALTER TABLE {jobs} DROP COLUMN first_event")
        # ... with version 3's indexes.
        conn.execute(f'DROP INDEX "{name}".underway_jobs_idempotency')
        conn.execute(f'DROP INDEX "{name}".underway_jobs_queued')
        conn.execute(f"ALTER TABLE {jobs} ADD UNIQUE (idempotency_key)")
        conn.execute(
            f"CREATE INDEX underway_jobs_ready ON {jobs} (priority, id) WHERE state = 'queued'"
        )
        conn.execute(
            f"CREATE INDEX underway_jobs_queue ON {jobs} (queue, priority, id) "
            "WHERE state = 'queued'"
        )
        conn.execute(f'UPDATE "{name}".underway_schema SET version = 3')
    again = open_store(postgres_url)
    try:
        assert again.events(old.id) == old_events
        new = submit(again)
        assert [(e.seq, e.kind.value, e.data) for e in again.events(new.id)] == [
            (1, "state", {"state": "queued"})
        ]
        assert again.events(new.id, after=1) == []
        assert finish(again, claim_one(again)) is not None  # the old job: older id
        assert finish(again, claim_one(again)) is not None
        for job in (old, new):
            events_of = again.events(job.id)
            assert [e.seq for e in events_of] == [1, 2, 3, 4]
            assert again.events(job.id, after=2) == events_of[2:]
            assert again.events(job.id, limit=2) == events_of[:2]
        with psycopg.connect(conninfo, autocommit=True) as conn:
            row = conn.execute(f'SELECT version FROM "{name}".underway_schema').fetchone()
            assert row == (4,)
            stored = conn.execute(
                f"SELECT count(*) FROM {events} WHERE job_id = %s AND seq = 1", (new.id,)
            ).fetchone()
            assert stored == (0,)  # on its row, not in the events table
            indexes = conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
                "AND tablename = 'underway_jobs' ORDER BY indexname",
                (name,),
            ).fetchall()
        names = [n for n, _ in indexes]
        assert "underway_jobs_queued" in names and "underway_jobs_idempotency" in names
        assert not {"underway_jobs_ready", "underway_jobs_queue", "underway_jobs_finished"} & set(
            names
        )
        assert not any("idempotency_key_key" in n for n in names)
        assert "WHERE (idempotency_key IS NOT NULL)" in dict(indexes)["underway_jobs_idempotency"]
        # The key is still unique.
        first = submit(again, idempotency_key="k")
        stored_again, created, _ = enqueue(again, new_record("t", idempotency_key="k"))
        assert not created and stored_again.id == first.id
    finally:
        again.close()


def _listen_for_work(store: PostgresStore) -> None:
    """As a worker slot's first wait for work does: the store listens for it from
    then on. Returns once the listener gave the wake-up it gives every waiter when it
    starts to listen (after it says `push_ready`): that wake-up, had it come later,
    would end a test's next wait for news of work before the news."""
    if store._listener.push_ready.is_set():
        return  # it listens already (an earlier call waited for that wake-up)
    seen = store.notifier.version("\x00work")
    assert store.wait_for_work(seen, 5.0) != seen
    assert store._listener.push_ready.is_set()


def _idle_worker(store: PostgresStore, worker: str) -> None:
    """As a worker slot does: wait for work once (the store listens for it from then
    on), then find nothing, which leaves the process's word that it is idle."""
    _listen_for_work(store)
    assert claim(store, worker=worker) == []


def test_a_job_submitted_to_an_idle_worker_is_claimed_for_it_as_its_claim_would(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """The submission claims the job for the idle worker and sends it the row: the
    worker's next claim takes it without a round trip, as its own claim would have
    claimed it (attempt 1, its lease, the same events), and no other worker gets it."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    pg_store._listener.start(wait=5.0)  # as its claim below would: it hears from now on
    try:
        _idle_worker(worker, "w-idle")
        seen = worker.notifier.version("\x00work")
        job = submit(pg_store)
        assert worker.wait_for_work(seen, 5.0) != seen  # the row came with the news
        assert claim(worker, worker="w-other") == []
        before = pg_store.notifier.version(job.id)
        got = claim_one(worker, worker="w-idle")
        assert got == pg_store.get(job.id)
        assert (got.state, got.attempt, got.worker) == (State.RUNNING, 1, "w-idle")
        assert got.lease_until == pytest.approx(got.created_at + 30.0)
        assert got.started_at == got.created_at
        done = finish(worker, got)
        assert done is not None and done.state is State.SUCCEEDED
        worker.heartbeat("w-other", ["t"], 0.0)  # its word goes: nobody is idle now
        queued = submit(pg_store)  # queued, and claimed as ever
        claimed = claim_one(pg_store, worker="w-idle")
        finish(pg_store, claimed)
        kinds = [(e.kind, e.data) for e in pg_store.events(job.id)]
        assert kinds == [(e.kind, e.data) for e in pg_store.events(queued.id)]
        assert pg_store.notifier.version(job.id) == before  # no news of its own writes
    finally:
        worker.close()


def test_jobs_claimed_for_a_worker_that_stops_go_back_to_the_queue(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    pg_store._listener.start(wait=5.0)  # as its claim below would: it hears from now on
    try:
        _idle_worker(worker, "w-idle")
        seen = worker.notifier.version("\x00work")
        job = submit(pg_store)
        assert worker.wait_for_work(seen, 5.0) != seen
        assert pg_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
        worker.heartbeat("w-idle", ["t"], 0.0)  # it stopped without taking it
        back = pg_store.get(job.id)
        assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
        assert claim_one(pg_store, worker="w-next").id == job.id
        later = submit(pg_store)  # its word went with it
        assert pg_store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
    finally:
        worker.close()


def test_a_job_queued_ahead_is_not_passed_by_a_submission(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Claims take jobs oldest first: a submission claims nothing for an idle worker
    while a due job of its tasks waits in the queue (it only tells the worker)."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    try:
        _idle_worker(worker, "w-idle")
        now = time.time()
        ahead = submit(pg_store, now=now, run_at=now + 1.0)  # not due yet: takes no word
        later = submit(pg_store, now=now + 2.0)  # `ahead` is due by then
        assert pg_store.get(later.id).state is State.QUEUED  # type: ignore[union-attr]
        assert [r.id for r in claim(worker, worker="w-idle", now=now + 2.0, max_jobs=2)] == [
            ahead.id,
            later.id,
        ]
    finally:
        worker.close()


def test_an_idle_process_is_handed_as_many_jobs_as_it_has_idle_slots(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """Its word counts the slots that wait for work and the one that claimed: so many
    submissions claim their job for it; the next one is queued for whoever claims."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    # Waiting once has the store listen for work, which wakes every waiter when it does.
    first = worker.notifier.version("\x00work")
    assert worker.wait_for_work(first, 10.0) != first
    seen = worker.notifier.version("\x00work")
    slots = [threading.Thread(target=worker.wait_for_work, args=(seen, 30.0)) for _ in range(2)]
    try:
        for slot in slots:
            slot.start()
        deadline = time.monotonic() + 10.0
        while worker._feed.idle_slots() < 2:  # both slots wait (no other way to know)
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert worker._listener.push_ready.wait(5.0)
        assert claim(worker, worker="w-idle") == []  # says: 3 slots idle
        pushed = [submit(pg_store) for _ in range(3)]
        queued = submit(pg_store)
        states = [pg_store.get(job.id).state for job in [*pushed, queued]]  # type: ignore[union-attr]
        assert states == [State.RUNNING] * 3 + [State.QUEUED]
        for slot in slots:
            slot.join(10.0)  # each push woke one
            assert not slot.is_alive()
        taken = claim(worker, worker="w-idle", max_jobs=4)  # the rows that came in by now
        assert {job.id for job in taken} <= {job.id for job in pushed}
    finally:
        worker.close()


def test_a_submission_soon_after_one_that_found_no_idle_worker_does_not_look(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """While a submission of a task found no idle worker a moment ago (`no_idle_for`),
    the next ones of that task are queued without looking and without news of their
    own (jobs come faster than workers take them); one news for them comes when the
    moment is over, so a worker that became idle meanwhile claims them. After that, a
    submission looks again, and is claimed for that worker."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    try:
        pg_store.no_idle_for = 1.0  # far longer than the steps below take
        first = submit(pg_store)  # nobody idle
        started = time.monotonic()
        _listen_for_work(worker)
        _end_without_claim(worker, claim_one(worker, worker="w-idle"))  # `first`; idle now
        seen = worker.notifier.version("\x00work")
        soon = [pg_store.get(submit(pg_store).id) for _ in range(3)]
        assert time.monotonic() - started < 1.0, "too slow a machine for this test"
        assert [(r.state, r.worker) for r in soon if r] == [(State.QUEUED, None)] * 3
        assert worker.wait_for_work(seen, 5.0) != seen  # one news for them
        assert time.monotonic() - started >= 1.0  # when the moment was over
        got = claim(worker, worker="w-idle", max_jobs=5)
        assert [r.id for r in got] == [r.id for r in soon if r]
        assert pg_store.get(first.id).state is State.SUCCEEDED  # type: ignore[union-attr]
        _end_without_claim(worker, *got)  # idle again
        later = pg_store.get(submit(pg_store).id)
        assert later is not None and (later.state, later.worker) == (State.RUNNING, "w-idle")
    finally:
        worker.close()


def _end_without_claim(
    store: PostgresStore, *claimed: Any, limits: dict[str, int] | None = None
) -> None:
    """As a worker slot writes jobs' ends when it saw the queue drained: no claim."""
    applied, none = store.apply_and_claim(
        [ended(job) for job in claimed],
        worker=claimed[0].worker,
        tasks=["t"],
        limits=limits or {},
        lease=30.0,
        now=time.time(),
        max_jobs=0,
    )
    assert applied == [True] * len(claimed) and none == []


def _row_arrives(store: PostgresStore, job_id: str, timeout: float = 5.0) -> None:
    """Wait until the row of `job_id`, which a submission claimed for a worker of
    `store`, has come in on its listener's connection (another thread, at its own
    pace): the worker's next claim takes it from there. Any news of work wakes this
    wait (the listener's first wake-up, another submission's news), so it looks again."""
    deadline = time.monotonic() + timeout
    while True:
        seen = store.notifier.version("\x00work")  # before the look: no wake-up is missed
        with store._push_lock:
            if any(r.id == job_id for r in store._pushed):
                return
        left = deadline - time.monotonic()
        assert left > 0, f"the row of {job_id} did not come within {timeout} s"
        store.wait_for_work(seen, left)


def test_an_end_written_without_a_claim_says_again_that_the_worker_is_idle(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """A slot that writes its job's end without claiming (it saw the queue drained)
    waits for work after it: the same statement renews its process's word, so that
    the next submission is claimed for it too, as after a claim that found nothing."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    try:
        _idle_worker(worker, "w-idle")
        first = submit(pg_store)  # uses its word up
        _row_arrives(worker, first.id)
        got = claim_one(worker, worker="w-idle")
        assert got.id == first.id
        _end_without_claim(worker, got)
        again = pg_store.get(submit(pg_store).id)
        assert again is not None and (again.state, again.worker) == (State.RUNNING, "w-idle")
        # Several ends at once (one transaction) do the same.
        _row_arrives(worker, again.id)  # else the first claim below takes `queued`
        queued = submit(pg_store)  # its word is used up again: queued
        taken = [claim_one(worker, worker="w-idle") for _ in range(2)]  # its row, then a claim
        assert [job.id for job in taken] == [again.id, queued.id]
        _end_without_claim(worker, *taken)
        last = pg_store.get(submit(pg_store).id)
        assert last is not None and (last.state, last.worker) == (State.RUNNING, "w-idle")
    finally:
        worker.close()


def test_an_end_a_worker_writes_is_news_of_work_only_under_a_concurrency_limit(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """A worker's end frees room for others only under its task's limit, which the
    worker names: without one, idle processes are not woken for it (they would all
    claim, and find nothing). A caller that names no limits (`apply`) wakes them."""
    conninfo, _ = split_url(postgres_url)
    with psycopg.connect(conninfo, autocommit=True) as listen:
        listen.execute(f'LISTEN "{pg_store._work_channel}"')

        def news(expected: int) -> None:
            """Hear `expected` news of work, and no more: none comes before a marker
            of ours, sent once they came. (They may come late: a submission that finds
            the word an end left, below, sends its news to this store's own channel,
            and its listener thread passes it on to all, no slot of it waiting.)"""
            heard: list[str] = []
            deadline = time.monotonic() + 5.0
            while len(heard) < expected:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(heard)} news of work within 5 s, not {expected}"
                heard += [note.payload for note in listen.notifies(timeout=left, stop_after=1)]
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, 'marker')", (pg_store._work_channel,))
            for note in listen.notifies(timeout=5.0):
                if note.payload == "marker":
                    assert len(heard) == expected, heard
                    return
                heard.append(note.payload)
            raise AssertionError(f"no marker within 5 s, after {heard}")

        for limits, wakes in (({}, 0), ({"t": 5}, 1)):
            submit(pg_store)
            news(1)  # the new job (queued)
            _end_without_claim(pg_store, claim_one(pg_store), limits=limits)
            news(wakes)
        submit(pg_store)
        news(1)
        finish(pg_store, claim_one(pg_store))  # `apply`: the limits are not known
        news(1)


def test_jobs_claimed_for_a_worker_whose_slots_stay_busy_go_back_to_the_queue(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """A word may count one slot too many (the one that wrote it, which does not
    always wait for work after). A job claimed for the worker that still waits at its
    next renewal, and no slot of its process waits for work, goes back to the queue,
    its attempt given back: it does not wait for a busy slot while others are idle."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    try:
        _idle_worker(worker, "w-idle")  # no slot waits for work after this
        seen = worker.notifier.version("\x00work")
        job = submit(pg_store)
        assert worker.wait_for_work(seen, 5.0) != seen  # its row is here
        for _ in range(2):  # its first renewal sees it wait; the next one too
            assert pg_store.get(job.id).state is State.RUNNING  # type: ignore[union-attr]
            assert worker.renew(worker="w-idle", fences={}, lease=30.0, now=time.time()) == (
                set(),
                set(),
            )
        back = pg_store.get(job.id)
        assert back is not None and (back.state, back.attempt) == (State.QUEUED, 0)
        assert claim_one(pg_store, worker="w-next").id == job.id
    finally:
        worker.close()


def test_the_row_a_submission_sends_an_idle_worker_is_the_row_it_stored(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """The submission builds the row it sends with the job (the server adds the
    worker and its lease): the worker's record is the stored job's, whatever the
    parameters, names and numbers hold (the caller's names a NUL too, which the
    table keeps as `\\0`; a queue is named by the application, and is not escaped)."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    odd = 'é "quoted" \\ back\\slash \u2603 \n line'
    nul = odd + " \x00 nul \\0 \\\x00"
    try:
        for changes in (
            {},
            {
                "params": {"s": nul, "n": [1, 2.5, None, True], "big": 10**20},
                "owner": nul,
                "idempotency_key": nul,
                "supersede_key": nul,
                "meta": {"m": nul},
                "priority": -3,
                "max_attempts": 4,
                "timeout": 2.0,
                "keep_for": 7.25,
                "queue": odd,
            },
        ):
            _idle_worker(worker, "w-idle")
            seen = worker.notifier.version("\x00work")
            job = submit(pg_store, **changes)
            assert worker.wait_for_work(seen, 5.0) != seen
            got = claim_one(worker, worker="w-idle")
            assert got.started_at == got.created_at  # claimed at its submission
            assert got == pg_store.get(job.id)
            _, known = pg_store.notifier.known(job.id)  # the submitter's own news
            assert known is not None and known.full() == got
            finish(worker, got)
    finally:
        worker.close()


def test_a_process_that_only_submits_keeps_no_listening_session(postgres_url: str) -> None:
    """Every notification in the database interrupts each session that LISTENs, so a
    store that only submits and reads keeps none (a web process that hands jobs to
    workers elsewhere costs the server nothing per job); it listens from the first
    time a thread waits for a job's end, and then hears it."""
    name = f"uw-test-{time.monotonic_ns()}"
    url = f"{postgres_url}&application_name={name}"
    admin = split_url(postgres_url)[0]

    def listening() -> int:
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                (name,),
            ).fetchone()
        return int(row[0]) if row else 0

    store, worker = open_store(url), open_store(postgres_url)
    try:
        jobs = [submit(store) for _ in range(3)]
        assert store.get(jobs[0].id) is not None and store.count() == 3
        assert listening() == 0
        job = jobs[-1]
        seen = store.notifier.version(job.id)
        waiter = threading.Thread(target=store.notifier.wait_end, args=(job.id, seen, 10.0))
        waiter.start()
        wait_for(lambda: listening() == 1, timeout=10,
                 what="a listening session once a thread waits")  # fmt: skip
        for claimed in claim(worker, max_jobs=3):
            finish(worker, claimed)
        waiter.join(timeout=10)
        assert not waiter.is_alive(), "the waiting thread did not hear the job's end"
    finally:
        store.close()
        worker.close()


def test_the_end_of_a_pushed_job_claims_the_work_announced_since(
    pg_store: PostgresStore, postgres_url: str
) -> None:
    """A job handed to an idle worker at its submission leaves nothing due queued, so
    its end is written without a claim while no work was announced since; once some
    was, the end's claim takes it at once (it does not wait for the idle poll)."""
    worker = open_store(postgres_url)
    assert isinstance(worker, PostgresStore)
    try:
        _idle_worker(worker, "w-idle")
        seen = worker.notifier.version("\x00work")
        first = submit(pg_store)
        assert worker.wait_for_work(seen, 5.0) != seen
        assert claim_one(worker, worker="w-idle").id == first.id  # handed over
        # Nothing was announced since: the end is written alone.
        now = time.time()
        done, claimed = worker.apply_and_claim(
            [ended(pg_store.get(first.id) or first, now=now)], worker="w-idle", tasks=["t"],
            limits={}, lease=30.0, now=now, max_jobs=1,
        )  # fmt: skip
        assert done == [True] and claimed == []
        # Handed over again; then a job no idle word takes is announced.
        _idle_worker(worker, "w-idle")
        seen = worker.notifier.version("\x00work")
        second = submit(pg_store)
        assert worker.wait_for_work(seen, 5.0) != seen
        assert claim_one(worker, worker="w-idle").id == second.id
        seen = worker.notifier.version("\x00work")
        third = submit(pg_store)  # the word is used up: news for every process
        assert worker.wait_for_work(seen, 5.0) != seen
        now = time.time()
        done, claimed = worker.apply_and_claim(
            [ended(pg_store.get(second.id) or second, now=now)], worker="w-idle",
            tasks=["t"], limits={}, lease=30.0, now=now, max_jobs=1,
        )  # fmt: skip
        assert done == [True] and [r.id for r in claimed] == [third.id]
    finally:
        worker.close()


def test_calls_one_after_another_go_to_the_session_used_last(pg_store: PostgresStore) -> None:
    """After a burst of calls at once opened several sessions, one thread's calls one
    after another all go to one of them (the one returned last), not to each in turn:
    a stream of submissions keeps one server process busy and warm."""
    with contextlib.ExitStack() as burst:
        pids = {burst.enter_context(pg_store._connection()).info.backend_pid for _ in range(3)}
    assert len(pids) == 3
    used = set()
    for _ in range(6):
        with pg_store._connection() as conn:
            used.add(conn.info.backend_pid)
    assert len(used) == 1 and used <= pids


def test_statements_run_directly_keep_their_types_and_survive_a_discard(
    postgres_url: str,
) -> None:
    """The store runs its statements through libpq directly (`fetch`), prepared on
    each connection at their first use: values keep their types, a name that gets an
    int one time and a float the next gets both right, and statements the server
    dropped (DISCARD ALL, as a connection reset does) are prepared again."""
    conninfo = split_url(postgres_url)[0]
    query = (
        "SELECT %(n)s::float8 * 2, %(flag)s::bool, %(text)s::text, %(none)s::text IS NULL, "
        "%(n)s::float8 = 'Infinity'::float8"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        values = {"flag": True, "text": "é \\ ' \"", "none": None}
        assert fetch(conn, query, {**values, "n": 3}) == [(6.0, True, "é \\ ' \"", True, False)]
        assert fetch(conn, query, {**values, "n": 2.25})[0][0] == 4.5
        assert fetch(conn, query, {**values, "n": 2**40})[0][0] == 2.0**41
        assert fetch(conn, query, {**values, "n": float("inf")})[0][-1] is True
        conn.execute("DISCARD ALL")
        assert fetch(conn, query, {**values, "n": 1, "flag": False})[0][:2] == (2.0, False)


def test_a_statement_run_directly_raises_as_psycopg_would(postgres_url: str) -> None:
    conninfo = split_url(postgres_url)[0]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            fetch(conn, "SELECT 1 / %(z)s::int", {"z": 0})
        assert fetch(conn, "SELECT 1 / %(z)s::int", {"z": 1}) == [(1,)]
        # Text with a NUL, which libpq would send cut at the NUL.
        for run_it in (fetch, lambda c, q, v: fetch_many(c, [(q, v)])):
            with pytest.raises(psycopg.DataError):
                run_it(conn, "SELECT %(s)s::text", {"s": "a\x00b"})
        pid = conn.info.backend_pid
        with psycopg.connect(conninfo, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # A lost connection is an OperationalError, which the store reports as
        # StoreUnavailable.
        with pytest.raises(psycopg.OperationalError):
            fetch(conn, "SELECT 1 / %(z)s::int", {"z": 1})


def test_a_connection_in_another_encoding_gets_its_text_right(postgres_url: str) -> None:
    conninfo = split_url(postgres_url)[0]
    with psycopg.connect(conninfo, autocommit=True, client_encoding="latin1") as conn:
        assert fetch(conn, "SELECT %(s)s::text, length(%(s)s::text)", {"s": "déjà"}) == [
            ("déjà", 4)
        ]


def test_a_batch_of_ends_is_undone_with_its_failed_claim(pg_store: PostgresStore) -> None:
    """Several ends and a claim go out in one pipeline (`fetch_many`): one implicit
    transaction, so a failing claim undoes the ends before it."""
    jobs = [submit(pg_store) for _ in range(3)]
    now = time.time()
    held = claim(pg_store, now=now, max_jobs=2)
    sql = pg_store._sql
    select = sql.claim_select
    sql.claim_select = select.replace("ORDER BY", "ORDER BY nonsense,")
    try:
        with pytest.raises(psycopg.errors.UndefinedColumn):
            pg_store.apply_and_claim(
                [ended(r, now=now) for r in held], worker="worker-a", tasks=["t"], limits={},
                lease=30.0, now=now, max_jobs=1,
            )  # fmt: skip
    finally:
        sql.claim_select = select
    for record in held:
        again = pg_store.get(record.id)
        assert again is not None and again.state is State.RUNNING
    done, claimed = pg_store.apply_and_claim(
        [ended(r, now=now) for r in held], worker="worker-a", tasks=["t"], limits={},
        lease=30.0, now=now, max_jobs=1,
    )  # fmt: skip
    left = {j.id for j in jobs} - {r.id for r in held}
    assert done == [True, True] and [r.id for r in claimed] == sorted(left)


def test_statements_sent_together_answer_in_order_and_all_or_nothing(
    postgres_url: str,
) -> None:
    conninfo = split_url(postgres_url)[0]
    insert = "WITH i AS (INSERT INTO t VALUES (%(v)s) RETURNING v) SELECT v FROM i"
    total = "SELECT count(*), coalesce(sum(v), 0) FROM t"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE t (v bigint CHECK (v < 100))")
        # The same statement twice, prepared once in the same round trip.
        answers = fetch_many(conn, [(insert, {"v": 1}), (insert, {"v": 2}), (total, {})])
        assert answers == [[(1,)], [(2,)], [(2, 3)]]
        with pytest.raises(psycopg.errors.CheckViolation):
            fetch_many(conn, [(insert, {"v": 5}), (insert, {"v": 500})])
        assert fetch(conn, total, {}) == [(2, 3)]  # the first insert was undone too
        conn.execute("DISCARD ALL")
        conn.execute("CREATE TEMP TABLE t (v bigint CHECK (v < 100))")
        assert fetch_many(conn, [(insert, {"v": 7}), (total, {})]) == [[(7,)], [(1, 7)]]


def test_statements_sent_together_carry_megabytes_both_ways(postgres_url: str) -> None:
    """Megabytes out and back in one batch: every statement's rows come back whole
    and in order, however the sending and the reading interleave on the socket."""
    conninfo = split_url(postgres_url)[0]
    big = "x" * 2_000_000
    query = "SELECT repeat(%(s)s, 3)"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        answers = fetch_many(conn, [(query, {"s": big + str(i)}) for i in range(6)])
        assert [len(a[0][0]) for a in answers] == [3 * (len(big) + 1)] * 6


def test_a_connection_lost_under_statements_sent_together_is_an_operational_error(
    postgres_url: str,
) -> None:
    conninfo = split_url(postgres_url)[0]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with psycopg.connect(conninfo, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            fetch_many(conn, [("SELECT %(a)s::int", {"a": 1}), ("SELECT 2", {})])
        assert conn.closed


def _statement_stats(url: str) -> list[tuple[str, int, int, int]]:
    """(query, calls, plans, shared blocks touched) of each statement on the jobs
    table that ran 20 times or more, from pg_stat_statements."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls, plans, shared_blks_hit + shared_blks_read "
            "FROM pg_stat_statements WHERE query LIKE '%underway_jobs%' AND calls >= 20"
        ).fetchall()
    return [(str(q), int(c), int(p), int(b)) for q, c, p, b in rows]


def test_a_workers_statements_are_planned_once_and_claim_from_a_deep_queue_by_its_index() -> None:
    """A worker's statements run again and again with new values: each is planned
    once per connection, not at every run (planning a batch's statement cost the
    server more than running it). Their plan does not know how many jobs a claim
    takes unless the statement says it: a claim of one job from a deep queue reads
    a few pages of the queued jobs' index, not every queued job."""
    try:
        server = PostgresServer(
            settings={
                "shared_preload_libraries": "pg_stat_statements",
                "pg_stat_statements.track_planning": "on",
            }
        )
    except FileNotFoundError as exc:
        missing(f"PostgreSQL ({exc})")
    with server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        store = PostgresStore(server.url)
        try:
            for _ in range(20):  # 20,000 queued jobs
                store.enqueue_many([new_record() for _ in range(1000)], lifecycle.submitted())
            with store._connection() as conn:
                conn.execute(f"ANALYZE {store._sql.jobs}")
                conn.execute("SELECT pg_stat_statements_reset()")
            held: list[Any] = []
            for _ in range(60):  # one job at a time, as an idle worker takes them
                now = time.time()
                done, held = store.apply_and_claim(
                    [ended(r, now=now) for r in held], worker="worker-a", tasks=["t"],
                    limits={}, lease=30.0, now=now, max_jobs=1,
                )  # fmt: skip
                assert all(done) and len(held) == 1
        finally:
            store.close()
        stats = _statement_stats(server.url)
    assert stats, "no statement of the jobs table ran 20 times"
    for query, calls, plans, blocks in stats:
        # Once per pooled connection (and after a new look at the statistics); left
        # to itself, PostgreSQL plans each statement afresh for its first 5 runs at
        # least, and at every run while it thinks a plan for the values is cheaper.
        assert plans < 5, f"planned {plans} times in {calls} runs: {query[:200]}"
        assert blocks / calls < 100, f"{blocks / calls:.0f} pages a run: {query[:200]}"


def test_places_in_a_deep_queue_are_counted_no_further_than_the_limit(
    pg_store: PostgresStore,
) -> None:
    """As on the other stores, a queued job's place is exact up to POSITION_LIMIT jobs
    ahead and None past it, so that reads of a long queue stay cheap: a page of its
    newest jobs is counted in one round trip, each job from the one before it."""
    front = [submit(pg_store) for _ in range(4)]
    for _ in range((POSITION_LIMIT + 2_000) // 1_000):
        pg_store.enqueue_many([new_record() for _ in range(1_000)], lifecycle.submitted())
    urgent = submit(pg_store, priority=-1)  # the newest, and first in the queue
    other = [submit(pg_store, queue="other") for _ in range(3)]  # a queue of its own

    assert [pg_store.get(r.id).position for r in front] == [1, 2, 3, 4]  # type: ignore[union-attr]
    assert pg_store.get(urgent.id).position == 0  # type: ignore[union-attr]
    newest = pg_store.list_jobs(limit=50).jobs
    assert [r.id for r in newest[:4]] == [other[2].id, other[1].id, other[0].id, urgent.id]
    assert [r.position for r in newest[:4]] == [2, 1, 0, 0]
    assert len(newest) == 50 and all(r.position is None for r in newest[4:])
    deep = pg_store.get(newest[-1].id)
    assert deep is not None and deep.state is State.QUEUED and deep.position is None
    # The front of the queue: exact places, each counted from the one before.
    tail = pg_store.list_jobs(limit=3, cursor=front[3].id).jobs
    assert [r.position for r in tail] == [3, 2, 1]
    claim(pg_store)  # `urgent`: each job of the front moves up
    assert [r.position for r in pg_store.list_jobs(limit=3, cursor=front[3].id).jobs] == [
        2, 1, 0,
    ]  # fmt: skip


def test_a_page_whose_first_queued_job_was_claimed_meanwhile_places_the_others(
    pg_store: PostgresStore,
) -> None:
    """A page's places are counted from its first queued job of each queue: when that
    job left the queue after the page was read, the others are counted from the front,
    and it comes back with its record now (it was never "deep in the queue")."""
    jobs = [submit(pg_store) for _ in range(3)]
    page = [r for r in pg_store.list_jobs(limit=10).jobs if r.state is State.QUEUED]
    assert sorted(r.id for r in page) == sorted(r.id for r in jobs)
    assert claim_one(pg_store).id == jobs[0].id  # after the page was read
    with pg_store._connection() as conn:
        found = pg_store._places(conn, page)
    first = found[jobs[0].id]
    assert isinstance(first, JobRecord) and first.state is State.RUNNING
    assert [found[jobs[1].id], found[jobs[2].id]] == [0, 1]


def test_a_bulk_submission_to_an_idle_worker_starts_on_as_many_slots(postgres_url: str) -> None:
    # As on SQLite (tests/unit/test_engine.py): twenty jobs that can only finish
    # together, submitted at once while every slot of the worker waits for work and
    # polls only once a minute. The submission announces its jobs once.
    uw = Underway(postgres_url)
    together = threading.Barrier(20)

    @uw.task
    def meet() -> bool:
        together.wait(timeout=10)
        return True

    try:
        uw.start(24, idle_poll=60)
        waiting = uw.store.notifier._waiters  # the slots' wake-ups, by key
        wait_for(lambda: len(waiting.get(WORK, ())) == 24, timeout=10)
        handles = uw.submit_many("meet", [{} for _ in range(20)])
        assert all(h.wait(15) for h in handles)
    finally:
        uw.close()
