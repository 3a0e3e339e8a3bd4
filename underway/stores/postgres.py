"""The PostgreSQL store: the database a web application often runs already.

`postgresql://user:password@host:port/db?schema=NAME` (also `postgres://`); the
tables (`underway_jobs`, `underway_events`, `underway_workers`, `underway_idle`,
`underway_schema`) live in schema NAME (default `public`), created and migrated on
first use (`postgres_schema`).

Connections come from a psycopg pool. Every change is one statement (a CTE that
updates the job, writes its events and announces it with `pg_notify`), guarded and
fenced like the other stores: the store applies the lifecycle's decisions
(`Decision`) and decides nothing itself. A worker's batch (the ends of its last
jobs, then a claim with `FOR UPDATE SKIP LOCKED`) is one transaction, sent as one
pipeline with a single Sync (an implicit transaction: no BEGIN, no COMMIT), so one
round trip: one statement per decision and one for the whole claim; the end of a
single job and the next claim are one statement. A submission is one statement
too, and wakes one idle worker process rather than all (`Statements.submit`); it
claims the job for that process's idle worker there and then, when it can, and
the notification carries the job's row, so that the worker runs it without a
claim of its own (such jobs wait in the store for the worker's next claim, are
renewed with its jobs, and go back to the queue if it stops first, or if two of
its renewals in a row find them waiting while no slot of its process waits for
work).
A submission that finds no idle worker for its task spares the submissions of the
same task in the next `no_idle_for` seconds the search (jobs come faster than the
workers take them): they are queued by a plain insert, without news of their own;
a thread of the store sends one news of work to all `no_idle_for` seconds after the
first of them, so that a worker that became idle meanwhile claims them (each news
wakes every worker process, so one per job would cost them more than the jobs).
A worker's slot that writes an end without claiming (it saw the queue drained, and
waits for work after) renews its process's word in the same statement, as a claim
that found nothing does; its end is news of work for others only when it frees
room under its task's concurrency limit.
Claims of tasks with a concurrency limit take a transaction-level advisory lock
per limited task, so two workers never both fill the last free place.

Waiting does not poll: a listener thread (`postgres_listener`) LISTENs on the
store's channels, those this process needs, and feeds the change feed; this
instance's own writes wake its waiters directly. Either way the feed learns the
jobs' new states, and a job's final record when it ends, so that `wait()` need not
read them back. While the server cannot be reached, every call raises
`StoreUnavailable`; workers keep what they could not write and retry, and the
listener reconnects by itself.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from math import inf
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool

from .._util import dumps, loads, new_id
from ..errors import ConfigurationError, StoreUnavailable
from ..feed import WORK, Known
from ..records import Decision, Event, EventKind, Fence, JobRecord, Page, Progress, State
from . import postgres_schema as schema
from .base import Store, listing_filter, merged_meta
from .postgres_listener import PostgresFeed, PostgresListener
from .postgres_sql import (
    COLUMN_NAMES,
    COLUMNS,
    PUSH_BYTES,
    Result,
    Rows,
    Statements,
    cached_text_array,
    doc_to_record,
    end_values,
    event_arrays,
    fetch,
    fetch_many,
    is_plain_end,
    job_values,
    lock_key,
    place,
    push_doc,
    row_to_record,
    run,
    stored_name,
    text_array,
)

_KINDS = {k.value: k for k in EventKind}
RETRY_AFTER = 2.0  # seconds callers are told to wait while the server is unreachable
POOL_TIMEOUT = 5.0  # seconds a call waits for a pooled connection before giving up
DOWN_TIMEOUT = 0.5  # the same while the server was lost at the last call
POOL_SIZE = 16  # connections at most, per store (one more for the listener)
STATS_CHECK = 1.0  # seconds between looks at the jobs table's statistics, while claims find work
# ... or sooner, once this store has claimed this many jobs since its last look: a table
# that grows from empty by thousands of jobs a second outgrows its plans within one.
STATS_JOBS = 256
# Seconds a submission that found no idle worker for its task spares the next ones of
# that task the search (`PostgresStore.no_idle_for`): while jobs come faster than the
# workers take them, none is idle, and the search costs a submission about a sixth of
# its time and half its server's. Such jobs get no news of their own: one news for
# all of them goes out this long after the first (see `_owe_news`).
NO_IDLE_FOR = 0.005
CONNECT_WAIT = 5.0  # seconds a first idle word waits for the listener to connect

log = logging.getLogger("underway.stores.postgres")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _names_no_job(job_id: str) -> bool:
    """An id a caller gave that holds a NUL names no job: the store's ids never do,
    and PostgreSQL's text holds none, so the server could not be asked."""
    return "\x00" in job_id


def split_url(url: str) -> tuple[str, str]:
    """The libpq URL (without underway's own `schema` option) and the schema name."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for key, value in query if key == "schema"]
    rest = [(key, value) for key, value in query if key != "schema"]
    name = names[-1] if names else "public"
    if not name:
        raise ConfigurationError(f"empty schema name in store URL {safe_url(url)!r}")
    return urlunsplit(parts._replace(query=urlencode(rest))), name


def _configure(conn: psycopg.Connection[Any]) -> None:
    """A new pooled connection: its prepared statements keep one generic plan.

    The store's statements run prepared (`postgres_sql.fetch`), and most take arrays
    (a batch's ids, states, results): for those, PostgreSQL's own choice is to plan
    each run afresh for its values (a custom plan), which cost a worker's ends and
    claims more server time than running them. A generic plan is made once per
    connection and kept until the table's statistics change (see `stale_stats`).
    PostgreSQL 11 has no such setting: it keeps its own choice there."""
    if conn.info.server_version >= 120000:
        conn.execute("SET plan_cache_mode = force_generic_plan")


class _RecentFirstPool(ConnectionPool[psycopg.Connection[Any]]):
    """A pool that hands out the connection returned last (psycopg's own hands out the
    one idle longest, in turn).

    Statements a thread runs one after another then go to one server process, whose
    caches are warm, rather than to each of the pool's sessions in turn, which wakes a
    different server process each time: on 2 cores that made a stream of submissions
    to a busy worker a fifth to a quarter slower end to end (medians of interleaved
    rounds), and its rate jump between two speeds from round to round.
    The idle connection that waited longest stays first in line, so the pool still
    closes the connections a quieter load leaves unused (`max_idle`).

    The order is psycopg_pool's private `_pool` deque, taken from under the pool's lock
    (`_get_ready_connection`, as in psycopg_pool 3.2 and 3.3); a pool without them
    hands out connections in its own order."""

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection[Any] | None:
        idle = getattr(self, "_pool", None)
        if isinstance(idle, deque) and len(idle) > 1:
            idle.rotate(1)  # the one returned last is taken first
        return super()._get_ready_connection(timeout)


# In a row of `Statements.get`: the job's state, and the count of the jobs ahead of it.
_STATE = COLUMN_NAMES.index("state")
_AHEAD = len(COLUMN_NAMES)


def _placed(record: JobRecord, found: int | JobRecord | None) -> JobRecord:
    """A page's queued job with its place, or its record now (see `_places`)."""
    if isinstance(found, JobRecord):
        return found
    return replace(record, position=found)


class PostgresStore(Store):
    """`postgresql://user:password@host:port/db?schema=NAME` (or `postgres://`)."""

    driver_errors = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = split_url(url)
        self._feed = PostgresFeed()
        self.notifier = self._feed
        self.poll_interval = 10.0  # a safety net only: waiters are woken by LISTEN/NOTIFY
        self._sql = Statements(self.schema)
        self.no_idle_for = NO_IDLE_FOR
        # By task: when (monotonic) a submission of it last found no idle worker.
        self._none_idle: dict[str, float] = {}
        # Since when (monotonic) news of work is owed for jobs queued without it, or
        # None; how many such jobs were queued, and how many of the first of them a
        # news of work to all came after; the thread that sends it, from the first on.
        self._owed_since: float | None = None
        self._silent = self._covered = 0
        self._news_lock = threading.Lock()
        self._news_due = threading.Event()
        self._news_closed = False
        self._news_thread: threading.Thread | None = None
        self._origin = new_id()[-12:]  # names this instance's own notifications
        self._jobs_channel, self._ends_channel, self._work_channel = schema.channels(self.schema)
        self._lock_prefix = f"underway:{self.schema}:"
        own_channel = f"{self._jobs_channel[:40]}.{self._origin}"
        self._push_key = lock_key(f"{self._lock_prefix}push:{own_channel}")
        # Jobs submissions claimed for this process's workers, not handed out yet
        # (`Statements.submit`), and the workers that stopped (theirs go back).
        self._pushed: list[JobRecord] = []
        self._taken: set[str] = set()  # ... handed to a worker, whose end is not written yet
        # By worker: the version of WORK when its last claim took only jobs handed to it
        # at their submission, which finds no due job of its tasks queued (see
        # `Statements.submit`); while no work has been announced since, its next end
        # is written without a claim (`apply_and_claim`).
        self._drained: dict[str, int] = {}
        self._stopped: set[str] = set()
        self._waited: dict[str, set[str]] = {}  # ... by worker, at its last renewal
        self._push_lock = threading.Lock()
        # Held (shared) by the processes that listen on these channels (see `Statements`).
        self._listen_keys = {
            channel: lock_key(f"{self._lock_prefix}listen:{channel}")
            for channel in (self._jobs_channel, self._ends_channel)
        }
        self._pool = _RecentFirstPool(
            self.conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "connect_timeout": 5},
            configure=_configure,
            timeout=POOL_TIMEOUT,
            # Give up a failing reconnection soon: the next call starts a fresh one at
            # once, so the store is back as soon as the server is.
            reconnect_timeout=1.0,
            open=False,
            name=f"underway-{self.schema}",
        )
        self._healthy = True  # False after a lost server: calls then wait less long
        self._stats_due = 0.0  # monotonic time of the next look at the table's statistics
        self._stats_claimed = 0  # jobs claimed since the last look
        self._stats_every: float = STATS_JOBS  # ... that bring the next (inf: seconds only)
        self._analyze_skips = True  # ANALYZE (SKIP_LOCKED) is understood (PostgreSQL 12+)
        try:
            with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                self._migrate(conn)
            self._pool.open(wait=True, timeout=10.0)
        except psycopg.Error as exc:
            self._pool.close()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigurationError(
                f"cannot open the PostgreSQL store at {safe_url(url)}: {reason}"
            ) from None
        except BaseException:
            self._pool.close()
            raise
        self._listener = PostgresListener(
            self.conninfo,
            self.notifier,
            jobs_channel=self._jobs_channel,
            ends_channel=self._ends_channel,
            work_channel=self._work_channel,
            own_channel=own_channel,
            origin=self._origin,
            on_reconnect=self._drop_lost_connections,
            poke=self._poke,
            on_work=self._work_for_us,
            on_pushed=self._pushed_to_us,
            listen_keys=self._listen_keys,
            push_key=self._push_key,
        )
        self._feed.listener = self._listener  # it starts once a thread waits (`want`)

    # -- plumbing --------------------------------------------------------------------
    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        s = schema.quote(self.schema)
        version_table = schema.VERSION_TABLE.format(s=s)
        if self._version(conn, version_table) == schema.SCHEMA_VERSION:
            return
        conn.execute("SELECT pg_advisory_lock(%s)", (schema.lock_key(self.schema),))
        try:
            with conn.transaction():
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
                conn.execute(f"CREATE TABLE IF NOT EXISTS {version_table} (version integer)")
                version = self._version(conn, version_table) or 0
                if version > schema.SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"the PostgreSQL store at {safe_url(self.url)} (schema "
                        f"{self.schema}) has schema version {version}, newer than this "
                        f"underway understands ({schema.SCHEMA_VERSION}); upgrade underway"
                    )
                for target in range(version + 1, schema.SCHEMA_VERSION + 1):
                    for statement in schema.MIGRATIONS[target]:
                        conn.execute(statement.format(s=s))
                conn.execute(f"DELETE FROM {version_table}")
                conn.execute(
                    f"INSERT INTO {version_table} (version) VALUES (%s)",
                    (schema.SCHEMA_VERSION,),
                )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (schema.lock_key(self.schema),))

    def _version(self, conn: psycopg.Connection[Any], table: str) -> int | None:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return None
        row = conn.execute(f"SELECT max(version) FROM {table}").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a lost or unreachable server, or one that refuses
        writes, is StoreUnavailable."""
        try:
            # Not `pool.connection()`, whose exit also commits: a round of the
            # driver's machinery per call, for connections in autocommit mode. The
            # pool brings a connection returned in a transaction back to idle.
            conn = self._pool.getconn(POOL_TIMEOUT if self._healthy else DOWN_TIMEOUT)
            try:
                yield conn
            finally:
                self._pool.putconn(conn)
            self._healthy = True
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            # A server that takes no writes for now (a primary demoted after a failover,
            # `default_transaction_read_only`): the statement changed nothing.
            reason = str(exc).strip().splitlines()[0]
            raise StoreUnavailable(
                f"PostgreSQL at {safe_url(self.url)} refuses writes for now: {reason}",
                retry_after=RETRY_AFTER,
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._healthy = False
            self._drop_lost_connections()  # the others the server lost too
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(
                f"PostgreSQL at {safe_url(self.url)} is unavailable: {reason}",
                retry_after=RETRY_AFTER,
            ) from None

    def _drop_lost_connections(self) -> None:
        if not self._pool.closed:
            try:
                self._pool.check()
            except psycopg.Error:
                pass

    def _poke(self) -> None:
        """End the listener's wait for notifications at once."""
        with self._pool.connection(timeout=1.0) as conn:
            conn.execute("SELECT pg_notify(%s, '')", (self._listener.own_channel,))

    def _work_for_us(self) -> None:
        """A submission chose this process's idle slot (see `Statements.submit`): wake
        it, or pass the news on to every process when no slot waits any more."""
        if not self._feed.idle_slots():
            try:
                with self._pool.connection(timeout=1.0) as conn:
                    self._announce_work(conn)
            except psycopg.Error:
                pass  # the idle slots elsewhere claim within their poll
        self.notifier.notify(WORK)

    def _pushed_to_us(self, doc: str) -> None:
        """A submission claimed a job for a worker of this process (see
        `Statements.submit`): its next claim takes it, without a round trip. A
        worker that stopped meanwhile gives it back."""
        record = doc_to_record(doc)
        with self._push_lock:
            stopped = record.worker in self._stopped
            if not stopped:
                self._pushed.append(record)
        if stopped:
            self.hand_back([record])
            return
        self.notifier.notify(WORK)

    def _take_pushed(self, worker: str, tasks: Collection[str], max_jobs: int) -> list[JobRecord]:
        """Up to `max_jobs` of the jobs claimed for `worker` at their submission."""
        if not self._pushed or max_jobs <= 0:
            return []
        with self._push_lock:
            taken = [r for r in self._pushed if r.worker == worker and r.task in tasks]
            taken = taken[:max_jobs]
            if taken:
                self._pushed = [r for r in self._pushed if r not in taken]
                self._taken.update(r.id for r in taken)
        return taken

    def _may_push(self, worker: str) -> bool:
        return self._listener.push_ready.is_set() and worker not in self._stopped

    def _names(self) -> dict[str, Any]:
        return {
            "jobs_channel": self._jobs_channel,
            "ends_channel": self._ends_channel,
            "work_channel": self._work_channel,
            "jobs_key": self._listen_keys[self._jobs_channel],
            "ends_key": self._listen_keys[self._ends_channel],
            "origin": self._origin,
        }

    # -- submission ------------------------------------------------------------------
    def enqueue(
        self, record: JobRecord, events: Sequence[tuple[EventKind, str]]
    ) -> tuple[JobRecord, bool, list[str]]:
        sql = self._sql
        superseded: list[str] = []
        values = job_values(record)
        # The one `state` event every new job has: kept on the job's row.
        one = len(events) == 1 and events[0][0] is EventKind.STATE
        if one:
            values["n"], values["data"] = 1, events[0][1]
        else:
            values["n"], values["kinds"], values["datas"] = event_arrays(tuple(events))
        submit, submit_queued = sql.submission(record.idempotency_key is not None, one)
        # No idle worker for its task a moment ago: none is looked for (`no_idle_for`).
        looked = time.monotonic()
        statement = submit_queued
        if looked - self._none_idle.get(record.task, -inf) >= self.no_idle_for:
            statement = submit
            values.update(self._names())
            values["doc_head"], values["doc_tail"] = push_doc(values)
            # Its row must fit in the notification that hands it to a worker.
            values["pushable"] = (
                sum(len(values[k] or "") for k in ("params", "meta", "idempotency_key", "owner"))
                + len(record.supersede_key or "")
                < PUSH_BYTES
            )
        covers = self._silent  # a news of work to all after this statement covers them
        mark = self.notifier.mark()
        with self._connection() as conn:
            if record.supersede_key is None:
                # One statement, so one round trip and its own transaction.
                inserted = run(conn, statement, values, direct=True).fetchone()
            else:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(%s)",
                        (lock_key(self._lock_prefix + "supersede:" + record.supersede_key),),
                    )
                    superseded = [
                        r[0]
                        for r in conn.execute(
                            f"SELECT id FROM {sql.jobs} WHERE supersede_key = %s "
                            "AND state IN ('queued', 'running') ORDER BY id",
                            (values["supersede_key"],),
                        )
                    ]
                    inserted = run(conn, statement, values).fetchone()
            if inserted is None:  # the idempotency key names a job that exists
                row = conn.execute(
                    f"SELECT {COLUMNS} FROM {sql.jobs} WHERE idempotency_key = %s",
                    (values["idempotency_key"],),
                ).fetchone()
                if row is not None:
                    return row_to_record(row), False, []
                raise StoreUnavailable("an idempotency key was taken and released; try again")
        if statement is submit_queued:
            self._owe_news()
        elif not inserted[3]:  # no idle worker: its news went to all
            self._news_went(covers)
            if record.run_at <= record.created_at:
                self._none_idle[record.task] = looked
        doc = inserted[2]
        if doc is None:
            self.notifier.notify(
                WORK, record.id, known={record.id: Known(State.QUEUED, record=record)}, since=mark
            )
        else:  # claimed for an idle worker at once: it is running already
            known = Known(State.RUNNING, load=partial(doc_to_record, doc))
            self.notifier.notify(record.id, known={record.id: known}, since=mark)
        return record, True, superseded

    def _owe_news(self) -> None:
        """A job was queued without news of work (see `Statements.submit_queued`): have
        the news thread send one `no_idle_for` seconds after the first such job."""
        with self._news_lock:
            self._silent += 1
            if self._owed_since is not None or self._news_closed:
                return
            self._owed_since = time.monotonic()
            if self._news_thread is None:
                self._news_thread = threading.Thread(
                    target=self._send_news, name="underway-pg-news", daemon=True
                )
                self._news_thread.start()
        self._news_due.set()

    def _news_went(self, covers: int) -> None:
        """A news of work to all came after the first `covers` jobs queued without
        news: nothing is owed for those."""
        if covers <= self._covered:
            return
        with self._news_lock:
            self._covered = max(self._covered, covers)
            if self._covered >= self._silent:
                self._owed_since = None

    def _send_news(self) -> None:
        """The news thread: one news of work to all worker processes, `no_idle_for`
        seconds after the first job queued without news since the last one."""
        while True:
            self._news_due.wait()
            with self._news_lock:
                self._news_due.clear()
                since = self._owed_since
                if self._news_closed:
                    return
            if since is None:
                continue
            left = since + self.no_idle_for - time.monotonic()
            if left > 0:
                self._news_due.wait(left)
                self._news_due.set()  # look again (a close, or the time came)
                continue
            with self._news_lock:
                self._owed_since = None
                covers = self._silent
            try:
                with self._connection() as conn:
                    self._announce_work(conn)
                self._news_went(covers)
            except (StoreUnavailable, psycopg.Error) as exc:
                # The jobs are queued: idle workers find them at their next look.
                log.warning("could not send the news of queued work: %s", exc)

    def _announce_work(self, conn: psycopg.Connection[Any]) -> None:
        """News of work to every worker process."""
        conn.execute("SELECT pg_notify(%s, %s)", (self._work_channel, self._origin))

    def enqueue_many(
        self, records: Sequence[JobRecord], events: Sequence[tuple[EventKind, str]]
    ) -> None:
        if not records:
            return
        kinds = [k.value for k, _ in events]
        datas = [d for _, d in events]
        # One pipeline, one implicit transaction (see `apply_and_claim`).
        with self._connection() as conn, conn.pipeline():
            for start in range(0, len(records), self.MANY_CHUNK):
                chunk = records[start : start + self.MANY_CHUNK]
                conn.execute(
                    self._sql.insert_many,
                    {
                        "n": len(events),
                        "ids": [r.id for r in chunk],
                        "tasks": [r.task for r in chunk],
                        "queues": [r.queue for r in chunk],
                        "priorities": [r.priority for r in chunk],
                        "params": [dumps(r.params) for r in chunk],
                        "max_attempts": [r.max_attempts for r in chunk],
                        "created": [r.created_at for r in chunk],
                        "run_at": [r.run_at for r in chunk],
                        "timeouts": [r.timeout for r in chunk],
                        "keep_for": [r.keep_for for r in chunk],
                        "owners": [stored_name(r.owner) for r in chunk],
                        "metas": [dumps(r.meta) if r.meta else None for r in chunk],
                        "kinds": kinds,
                        "datas": datas,
                    },
                )
            self._announce_work(conn)
        self.notifier.notify(WORK)

    def get(self, job_id: str) -> JobRecord | None:
        if _names_no_job(job_id):
            return None
        with self._connection() as conn:
            rows = fetch(conn, self._sql.get, {"id": job_id})
        row = rows[0] if rows else None
        if row is None:
            return None
        return row_to_record(row, place(row[_AHEAD]))

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        if task is not None and "\x00" in task:
            # No job's task holds one (`postgres_sql._bind` refuses it), and the server
            # could not be asked.
            return Page(jobs=[], next_cursor=None)
        where, args = listing_filter(
            task=task, state=state, owner=stored_name(owner), cursor=cursor, mark="%s"
        )
        sql = f"SELECT {COLUMNS} FROM {self._sql.jobs}{where} ORDER BY id DESC LIMIT %s"
        args.append(limit + 1)
        with self._connection() as conn:
            rows = conn.execute(sql, args).fetchall()
            records = [row_to_record(r) for r in rows[:limit]]
            places = self._places(conn, [r for r in records if r.state is State.QUEUED])
        records = [_placed(r, places[r.id]) if r.id in places else r for r in records]
        return Page(jobs=records, next_cursor=records[-1].id if len(rows) > limit else None)

    def _places(
        self, conn: psycopg.Connection[Any], queued: Sequence[JobRecord]
    ) -> dict[str, int | JobRecord | None]:
        """The places of a page's queued jobs, in one round trip: the first of each
        queue and priority counted from the front, each next one from the one before
        it (a short count between them), every count stopping at POSITION_LIMIT. A job
        that left the queue since the page was read: its record now."""
        groups: dict[tuple[str, int], list[JobRecord]] = {}
        for record in queued:
            groups.setdefault((record.queue, record.priority), []).append(record)
        statements: list[tuple[str, dict[str, Any]]] = []
        for members in groups.values():
            members.sort(key=lambda r: r.id)
            statements.append((self._sql.get, {"id": members[0].id}))
            statements += [
                (
                    self._sql.between,
                    {"queue": r.queue, "priority": r.priority, "after": b.id, "id": r.id},
                )
                for b, r in itertools.pairwise(members)
            ]
        if not statements:
            return {}
        answers = iter(fetch_many(conn, statements))
        found: dict[str, int | JobRecord | None] = {}
        lost: list[JobRecord] = []  # counted from a job that left the queue meanwhile
        for members in groups.values():
            rows = next(answers)
            gaps = [int(next(answers)[0][0]) for _ in members[1:]]
            if not rows or rows[0][_STATE] != State.QUEUED.value:
                if rows:  # claimed (or cancelled) since the page was read
                    found[members[0].id] = row_to_record(rows[0])
                lost += members[1:]
                continue
            at = place(rows[0][_AHEAD])
            found[members[0].id] = at
            for record, gap in zip(members[1:], gaps, strict=True):
                at = place(at + gap) if at is not None else None
                found[record.id] = at
        if lost:  # each counted from the front (a rare race: one more round trip)
            for record, rows in zip(
                lost, fetch_many(conn, [(self._sql.get, {"id": r.id}) for r in lost]), strict=True
            ):
                if rows and rows[0][_STATE] == State.QUEUED.value:
                    found[record.id] = place(rows[0][_AHEAD])
                elif rows:
                    found[record.id] = row_to_record(rows[0])
        return found

    def count(self, *, state: State | None = None) -> int:
        with self._connection() as conn:
            if state is None:
                row = conn.execute(f"SELECT count(*) FROM {self._sql.jobs}").fetchone()
            else:
                row = conn.execute(
                    f"SELECT count(*) FROM {self._sql.jobs} WHERE state = %s",
                    (State(state).value,),
                ).fetchone()
        return int(row[0]) if row is not None else 0

    def running_of(self, task: str) -> int:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM {self._sql.jobs} WHERE state = 'running' AND task = %s",
                (task,),
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def heartbeat(self, worker: str, tasks: Collection[str], until: float) -> None:
        if until <= 0:
            self._stop_pushing(worker)
        table = self._sql.workers
        with self._connection() as conn, conn.transaction():
            if until <= 0:
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (worker,))
                return
            conn.execute(
                f"INSERT INTO {table} (id, tasks, until) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET tasks = EXCLUDED.tasks, until = EXCLUDED.until",
                (worker, dumps(sorted(tasks)), until),
            )
            # Rows of workers that died without saying so, an hour on.
            conn.execute(f"DELETE FROM {table} WHERE until < %s", (until - 3600,))

    def _stop_pushing(self, worker: str) -> None:
        """`worker` stopped: no more jobs are claimed for it at submission, and those
        that were and it never took go back to the queue (those whose notification is
        still on its way too: they are in the table already)."""
        with self._push_lock:
            self._stopped.add(worker)
            self._pushed = [r for r in self._pushed if r.worker != worker]
        with self._connection() as conn:
            # Waits for a submission that holds the word to commit: its job is seen below.
            conn.execute(
                f"DELETE FROM {self._sql.idle} WHERE channel = %s", (self._listener.own_channel,)
            )
            rows = conn.execute(self._sql.pushed_to, (worker,)).fetchall()
        # Not those it ran: a job whose code ran and whose end it could not write is
        # lost when its lease runs out, the attempt counted.
        with self._push_lock:
            records = [row_to_record(row) for row in rows if row[0] not in self._taken]
        self.hand_back(records)

    def live_workers(self, now: float) -> dict[str, list[str]] | None:
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT id, tasks FROM {self._sql.workers} WHERE until >= %s", (now,)
            ).fetchall()
        return {str(worker): list(loads(tasks)) for worker, tasks in rows}

    # -- state changes ---------------------------------------------------------------
    def _decision_params(
        self, d: Decision, now: float, *, any_room: bool, limited: str
    ) -> dict[str, Any]:
        if any(kind is EventKind.OUTPUT for kind, _ in d.events):
            raise ValueError("a decision carries no output: append it under the job's fence")
        moves = d.moves
        queued = d.state is State.QUEUED
        return {
            **self._names(),
            "id": d.job_id,
            "expect": cached_text_array(tuple(sorted(s.value for s in d.expect))),
            "fence_worker": None if d.fence is None else d.fence.worker,
            "fence_attempt": None if d.fence is None else d.fence.attempt,
            "lease_before": d.lease_before,
            "state": d.state.value,
            "attempt": d.attempt,
            "cancel": d.cancel_requested,
            "moves": moves,
            "queued": queued,
            "ends": moves and not queued,
            "frees": moves and not queued and State.RUNNING in d.expect,
            "any_room": any_room,
            "limited": limited,
            "result": d.result_text(),
            "error": dumps(d.error.to_dict()) if d.error else None,
            "run_at": (d.run_at if d.run_at is not None else now) if queued else None,
            "finished_at": d.finished_at,
            "expires_at": d.expires_at,
            "started_at": d.started_at,
            "progress": d.progress,
            "n": len(d.events),
            "kinds": cached_text_array(tuple(k.value for k, _ in d.events)),
            "datas": text_array(data for _, data in d.events),
            "now": now,
        }

    def apply_and_claim(
        self,
        decisions: Sequence[Decision],
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> tuple[list[bool], list[JobRecord]]:
        if not tasks:
            max_jobs = 0
        if self._taken and decisions:
            with self._push_lock:
                self._taken.difference_update(d.job_id for d in decisions)
        # An end frees room under a task's concurrency limit: news of work for idle
        # slots elsewhere. A worker names its limits; a caller that claims nothing and
        # names no tasks (`apply`) does not, so its ends are news for all.
        any_room = max_jobs <= 0 and not tasks
        # Jobs claimed for this worker at their submission come first, with no round
        # trip: with no decision to write, they are all this call takes.
        pushed = self._take_pushed(worker, tasks, max_jobs)
        max_jobs = 0 if pushed and not decisions else max_jobs - len(pushed)
        if max_jobs > 0 and decisions and not pushed:
            drained = self._drained.get(worker)
            if drained is not None and drained == self.notifier.version(WORK):
                # Nothing announced since the queue was found drained: write the ends
                # and the idle word only, as after a claim that found nothing (the
                # idle poll still claims, for jobs that fall due).
                max_jobs = 0
        if max_jobs > 0:
            self._drained.pop(worker, None)  # this claim looks for itself
        if not decisions and max_jobs <= 0:
            if pushed:
                self._drained[worker] = self.notifier.version(WORK)
                self._refresh_stats(len(pushed))
                self.notifier.notify(
                    *(r.id for r in pushed),
                    known={r.id: Known(State.RUNNING, record=r) for r in pushed},
                )
            return [], pushed
        # In the order of their jobs, so that two batches never wait on each other's rows.
        order = sorted(range(len(decisions)), key=lambda i: decisions[i].job_id)
        limited = cached_text_array(tuple(sorted(limits)))
        done = [False] * len(decisions)
        docs: list[str | None] = [None] * len(decisions)
        rows: list[Any] = []
        capped = max_jobs > 0 and any(t in limits for t in tasks)
        # Plain ends (see `is_plain_end`), two or more, are written by one statement
        # rather than one each, in the round trip of the others; not the last decision
        # when it renews the idle word.
        renews = max_jobs <= 0 and bool(tasks)
        candidates = [] if capped else order[:-1] if renews else order
        ends = [i for i in candidates if is_plain_end(decisions[i])]
        if len(ends) < 2 or len({decisions[i].job_id for i in ends}) < len(ends):
            ends = []  # (two decisions on one job: each in turn, as `apply` runs them)
        batched = set(ends)
        order = [i for i in order if i not in batched]
        params = [
            self._decision_params(decisions[i], now, any_room=any_room, limited=limited)
            for i in order
        ]
        mark = self.notifier.mark()
        with self._connection() as conn:
            if capped:
                # The claim reads the running counts under its advisory locks before it
                # picks: a transaction with a round trip in the middle.
                with conn.pipeline(), conn.transaction():
                    applied = [run(conn, self._sql.apply, p) for p in params]
                    claim = self._claim(conn, worker, tasks, limits, lease, now, max_jobs)
            elif len(params) == 1 and max_jobs > 0 and not ends:
                # The end of a job and the next claim: one statement (the claim does
                # not see what the decision changed, nor needs to).
                merged = self._claim(
                    conn,
                    worker,
                    tasks,
                    limits,
                    lease,
                    now,
                    max_jobs,
                    decision=params[0],
                    direct=True,
                )
                applied = []
                claim = None
                if merged is not None:
                    rows = merged.fetchall()
                    done[order[0]] = bool(rows[0][-2])
                    docs[order[0]] = rows[0][-1]
                    rows = [row[:-2] for row in rows if row[0] is not None]
                else:  # no room under the limits: the decision alone
                    applied = [run(conn, self._sql.apply, params[0], direct=True)]
            elif len(params) + (max_jobs > 0) == 1 and not ends:
                # One statement is a transaction of its own.
                if params and tasks:
                    # A worker that claims nothing: its slot waits for work after.
                    idle = self._idle_values(worker, tasks, limits, lease)
                    applied = [run(conn, self._sql.apply_idle, {**params[0], **idle}, direct=True)]
                    claim = None
                elif params:
                    applied = [run(conn, self._sql.apply, params[0], direct=True)]
                    claim = None
                else:
                    applied = []
                    claim = self._claim(
                        conn, worker, tasks, limits, lease, now, max_jobs, direct=True
                    )
            else:
                # One pipeline with one Sync at its end: the decisions and the claim go
                # out together, run as one implicit transaction (a failure in any of
                # them undoes them all), and answer together: one round trip. No
                # BEGIN/COMMIT and no `conn.transaction()`, which syncs at its entry and
                # exit (each sync is a round trip of its own).
                statements = []
                if ends:
                    values = {
                        **self._names(),
                        **end_values([decisions[i] for i in ends]),
                        "b_lock": text_array(sorted(d.job_id for d in decisions)),
                        "now": now,
                        "any_room": any_room,
                        "limited": limited,
                    }
                    statements.append((self._sql.apply_ends, values))
                statements += [(self._sql.apply, p) for p in params[:-1]]
                if params and renews:  # the last one renews the idle word too
                    idle = self._idle_values(worker, tasks, limits, lease)
                    statements.append((self._sql.apply_idle, {**params[-1], **idle}))
                elif params:
                    statements.append((self._sql.apply, params[-1]))
                if max_jobs > 0:  # none of the tasks has a limit (else `capped`)
                    group = (sorted(set(tasks)), max_jobs)
                    statements.append(
                        self._claim_groups(
                            worker, tasks, limits, lease, now, max_jobs, [group], None
                        )
                    )
                answers = fetch_many(conn, statements)
                if ends:
                    index = {decisions[i].job_id: i for i in ends}
                    for row in answers[0]:
                        done[index[row[0]]] = True
                        docs[index[row[0]]] = row[3]
                    answers = answers[1:]
                applied = [Rows(rows) for rows in answers[: len(params)]]
                claim = Rows(answers[-1]) if max_jobs > 0 else None
            for i, cur in zip(order if applied else (), applied, strict=True):
                row = cur.fetchone()
                if row is not None:
                    done[i] = True
                    docs[i] = row[2]
            if claim is not None:
                rows = claim.fetchall()
        claimed = pushed + [row_to_record(row) for row in rows]
        if claimed:
            self._refresh_stats(len(claimed))
        known = {r.id: Known(State.RUNNING, record=r) for r in claimed}
        work = False
        for d, ok, doc in zip(decisions, done, docs, strict=True):
            if ok:
                work = work or d.state is State.QUEUED
                known[d.job_id] = Known(
                    d.state, load=None if doc is None else partial(doc_to_record, doc)
                )
        if known:
            changed = [*known, WORK] if work else list(known)
            self.notifier.notify(*changed, known=known, since=mark)
        return done, claimed

    def _claim(
        self,
        conn: psycopg.Connection[Any],
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
        decision: dict[str, Any] | None = None,
        direct: bool = False,
    ) -> Result | None:
        """Send the claim; its cursor yields the claimed rows (None: no room). With the
        parameters of one `decision`, the same statement applies it first (see
        `Statements.claim_select_after_apply` for what it yields then). `direct`: run
        alone, outside a pipeline (see `run`)."""
        sql = self._sql
        capped = sorted(t for t in set(tasks) if t in limits)
        free = sorted(t for t in set(tasks) if t not in limits)
        groups: list[tuple[list[str], int]] = [(free, max_jobs)] if free else []
        if capped:
            # One claimer at a time per limited task: the count below stays true
            # until this transaction commits.
            keys = sorted(lock_key(f"{self._lock_prefix}limit:{t}") for t in capped)
            conn.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", (keys,)
            )
            running = dict(conn.execute(sql.running_counts, (capped,)).fetchall())
            for task in capped:
                room = min(max_jobs, limits[task] - int(running.get(task, 0)))
                if room > 0:
                    groups.append(([task], room))
        if not groups:
            return None
        query, values = self._claim_groups(
            worker, tasks, limits, lease, now, max_jobs, groups, decision
        )
        return run(conn, query, values, direct=direct)

    def _claim_groups(
        self,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
        groups: list[tuple[list[str], int]],
        decision: dict[str, Any] | None,
    ) -> tuple[str, dict[str, Any]]:
        """The claim of `groups` (tasks, room) as one statement, applying `decision`
        first when given (see `_claim`)."""
        sql = self._sql
        values: dict[str, Any] = {
            **self._names(),
            **self._idle_values(worker, tasks, limits, lease),
            "now": now,
            "worker": worker,
            "lease_until": now + lease,
        }
        # Each group is a CTE of its own (FOR UPDATE does not go with UNION).
        ctes = []
        for number, (names, room) in enumerate(groups):
            values[f"tasks{number}"] = cached_text_array(tuple(names))
            # The counts are part of the text: a generic plan (see `_configure`) that
            # knew them only as parameters would sort every due job of a deep queue.
            pick = sql.pick.format(tasks=f"tasks{number}", room=room)
            ctes.append(f"g{number} AS {pick}")
        if len(groups) == 1:
            picked = "SELECT id AS pick FROM g0"
        else:
            union = " UNION ALL ".join(f"SELECT id, priority FROM g{n}" for n in range(len(groups)))
            picked = (
                f"SELECT id AS pick FROM ({union}) AS grp ORDER BY priority, id LIMIT {max_jobs:d}"
            )
        if decision is not None:
            ctes.insert(0, f"{sql.apply_head}, un AS ({sql.apply_tail})")
            values = {**decision, **values}
        return (
            f"WITH {', '.join(ctes)}, picked AS ({picked}), c AS ({sql.claim_set}), "
            f"{sql.claim_tail}"
            f"{sql.claim_select if decision is None else sql.claim_select_after_apply}",
            values,
        )

    def _idle_values(
        self, worker: str, tasks: Collection[str], limits: Mapping[str, int], lease: float
    ) -> dict[str, Any]:
        """The word that `worker`'s slot, which found (or claimed) nothing, waits for
        work: this process has an idle slot (see `Statements.submit`)."""
        # Submissions that read the word notify this process's own channel: it must
        # be heard from the first word on.
        self._listener.start(wait=CONNECT_WAIT)
        return {
            "idle_channel": self._listener.own_channel,
            "idle_tasks": cached_text_array(tuple(sorted(tasks))),
            # Its slots that wait for work, and the claiming one, which will.
            "idle_slots": self._feed.idle_slots() + 1,
            # ... to which submissions may hand jobs, claimed (while its listener holds
            # the lock that says it hears them).
            "push_worker": worker if self._may_push(worker) else None,
            "push_lease": lease,
            "push_tasks": cached_text_array(tuple(sorted(set(tasks) - set(limits)))),
            "push_key": self._push_key,
        }

    def _refresh_stats(self, claimed: int) -> None:
        """ANALYZE the jobs table when the planner's idea of it is far off (see
        `Statements.stale_stats`). A claim planned for a (nearly) empty table reads
        and sorts the whole queue to take one job, and a batch of ends reads the
        whole table to lock its rows; autovacuum corrects that only within a minute
        or so, and a queue can grow by thousands of jobs meanwhile. Looked at every
        second while claims (`claimed` jobs, this call) find work, and after every
        `STATS_JOBS` jobs claimed."""
        self._stats_claimed += claimed
        now = time.monotonic()
        if now < self._stats_due and self._stats_claimed < self._stats_every:
            return
        self._stats_due = now + STATS_CHECK
        self._stats_claimed = 0
        try:
            with self._connection() as conn:
                row = conn.execute(self._sql.stale_stats, (self._sql.jobs,)).fetchone()
                if row is not None and row[0]:
                    self._analyze(conn)
            self._stats_every = STATS_JOBS
        except (psycopg.Error, StoreUnavailable) as exc:  # e.g. not the table's owner
            log.debug("could not refresh the statistics of %s: %s", self._sql.jobs, exc)
            self._stats_due = now + 60 * STATS_CHECK
            self._stats_every = inf  # not again before then

    def _analyze(self, conn: psycopg.Connection[Any]) -> None:
        """ANALYZE the jobs table, unless another session analyzes it now (each worker
        process looks for itself, and would otherwise wait its turn to do it again);
        the table's next look tries again if its statistics are still off. A server
        older than PostgreSQL 12 knows no SKIP_LOCKED: it waits."""
        if self._analyze_skips:
            try:
                conn.execute(f"ANALYZE (SKIP_LOCKED) {self._sql.jobs}")
                return
            except psycopg.errors.SyntaxError:
                self._analyze_skips = False
        conn.execute(f"ANALYZE {self._sql.jobs}")

    def renew(
        self, *, worker: str, fences: Mapping[str, int], lease: float, now: float
    ) -> tuple[set[str], set[str]]:
        with self._push_lock:
            mine = [r for r in self._pushed if r.worker == worker]
            # Jobs claimed for it at submission that have waited here since its last
            # renewal while no slot of this process waits for work: its slots are
            # busy, maybe for long (a word counts the slot that wrote it, which is
            # not always about to wait), while other processes may be idle.
            stuck: list[JobRecord] = []
            if mine and not self._feed.idle_slots():
                before = self._waited.get(worker, set())
                stuck = [r for r in mine if r.id in before]
                if stuck:
                    gone = {r.id for r in stuck}
                    self._pushed = [r for r in self._pushed if r.id not in gone]
                    mine = [r for r in mine if r.id not in gone]
            self._waited[worker] = {r.id for r in mine}
            waiting = {r.id: r.attempt for r in mine}
        if stuck:
            self.hand_back(stuck)  # back to the queue, for whoever claims first
        # Jobs claimed for it at submission are its own too, while they wait for a slot.
        fences = {**waiting, **fences} if waiting else fences
        if not fences:
            return set(), set()
        ids = sorted(fences)
        with self._connection() as conn:
            rows = fetch(
                conn,
                self._sql.renew,
                {
                    "until": now + lease,
                    "worker": worker,
                    "ids": text_array(ids),
                    "attempts": "{" + ",".join(str(fences[i]) for i in ids) + "}",
                },
            )
        held, cancelled = {r[0] for r in rows}, {r[0] for r in rows if r[1]}
        if waiting:
            self._update_pushed(waiting, held, cancelled)
        return held - waiting.keys(), cancelled - waiting.keys()

    def _update_pushed(self, ids: Collection[str], held: set[str], cancelled: set[str]) -> None:
        """What a renewal said of the jobs claimed at submission that wait here: those
        no longer held are dropped; those asked to cancel start cancelled."""
        with self._push_lock:
            self._pushed = [
                replace(r, cancel_requested=True) if r.id in cancelled else r
                for r in self._pushed
                if r.id not in ids or r.id in held
            ]

    def save_progress(self, job_id: str, fence: Fence, progress: Progress, now: float) -> bool:
        mark = self.notifier.mark()
        with self._connection() as conn:
            rows = fetch(
                conn,
                self._sql.progress,
                {
                    **self._names(),
                    "id": job_id,
                    "worker": fence.worker,
                    "attempt": fence.attempt,
                    "data": dumps(progress.to_dict()),
                    "now": now,
                },
            )
        row = rows[0] if rows else None
        if row is not None:
            self.notifier.notify(job_id, known={job_id: Known(State.RUNNING)}, since=mark)
        return row is not None

    def append(
        self, job_id: str, fence: Fence, items: Sequence[tuple[EventKind, str]], now: float
    ) -> bool:
        if not items:
            return True
        idx: list[int | None] = []
        n_out = 0
        for kind, _ in items:
            if kind is EventKind.OUTPUT:
                idx.append(n_out)
                n_out += 1
            else:
                idx.append(None)
        mark = self.notifier.mark()
        with self._connection() as conn:
            rows = fetch(
                conn,
                self._sql.append,
                {
                    **self._names(),
                    "id": job_id,
                    "worker": fence.worker,
                    "attempt": fence.attempt,
                    "n": len(items),
                    "n_out": n_out,
                    "kinds": cached_text_array(tuple(k.value for k, _ in items)),
                    "datas": text_array(d for _, d in items),
                    "idx": "{" + ",".join("NULL" if i is None else str(i) for i in idx) + "}",
                    "now": now,
                },
            )
        row = rows[0] if rows else None
        if row is not None:
            self.notifier.notify(job_id, known={job_id: Known(State.RUNNING)}, since=mark)
        return row is not None

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        with self._connection() as conn:
            rows = fetch(conn, self._sql.expired, {"now": now, "limit": limit})
        return [row_to_record(r) for r in rows]

    # -- callers ---------------------------------------------------------------------
    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        if _names_no_job(job_id):
            return False
        # Merged here, under the row's lock, rather than by the server's `jsonb ||`:
        # jsonb holds no string with a NUL (`\u0000`), which JSON text, and so the
        # meta column, holds.
        with self._connection() as conn, conn.transaction():
            row = conn.execute(self._sql.meta_for_update, (job_id,)).fetchone()
            if row is None:
                return False
            meta = dumps(merged_meta(row[0], changes))
            conn.execute(self._sql.update_meta, {**self._names(), "id": job_id, "meta": meta})
        self.notifier.notify(job_id)
        return True

    def delete(self, job_id: str) -> bool:
        if _names_no_job(job_id):
            return False
        with self._connection() as conn:
            row = conn.execute(self._sql.delete, {**self._names(), "id": job_id}).fetchone()
        if row is not None:
            self.notifier.notify(job_id)
            self.notifier.forget(job_id)
        return row is not None

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        if _names_no_job(job_id):
            return []
        with self._connection() as conn:
            rows = fetch(
                conn, self._sql.events_after, {"id": job_id, "after": after, "limit": limit}
            )
        out = []
        for seq, kind, idx, data, at, attempt in rows:
            value = loads(data)
            if idx is not None:
                value = {"attempt": attempt, "index": idx, "item": value}
            out.append(Event(seq=seq, kind=_KINDS[kind], data=value, at=at, attempt=attempt))
        return out

    def output(
        self, job_id: str, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]:
        if limit <= 0 or _names_no_job(job_id):
            return []
        with self._connection() as conn:
            rows = fetch(
                conn,
                self._sql.output,
                {"id": job_id, "attempt": attempt, "after": max(after, 0), "limit": limit},
            )
        return [loads(r[0]) for r in rows]

    # -- housekeeping ----------------------------------------------------------------
    def purge(self, now: float, *, finished_before: float | None = None) -> int:
        column, bound = (
            ("expires_at", now) if finished_before is None else ("finished_at", finished_before)
        )
        with self._connection() as conn:
            rows = conn.execute(self._sql.purge.format(column=column), (bound,)).fetchall()
            if finished_before is None:  # the janitor's round: the word of gone processes too
                conn.execute(self._sql.purge_idle)
        for (job_id,) in rows:
            self.notifier.forget(job_id)
        return len(rows)

    def wait_for_work(self, seen: int, timeout: float) -> int:
        return self.notifier.wait(WORK, seen, timeout)

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        with self._news_lock:
            self._news_closed = True
            thread, owed = self._news_thread, self._owed_since is not None
        self._news_due.set()
        if thread is not None:
            thread.join(timeout=5)
        if owed:  # sent now rather than a moment later
            try:
                with self._pool.connection(timeout=1.0) as conn:
                    self._announce_work(conn)
            except psycopg.Error:
                pass  # idle workers find the jobs at their next look

        def wake() -> None:
            try:
                with self._pool.connection(timeout=1.0) as conn:
                    conn.execute("SELECT pg_notify(%s, '')", (self._listener.own_channel,))
            except psycopg.Error:
                pass

        self._listener.close(wake)
        with self._push_lock:
            left, self._pushed = self._pushed, []
        self.hand_back(left)
        try:
            with self._pool.connection(timeout=1.0) as conn:
                conn.execute(
                    f"DELETE FROM {self._sql.idle} WHERE channel = %s",
                    (self._listener.own_channel,),
                )
        except psycopg.Error:
            pass  # its word goes stale within seconds
        self._pool.close()
