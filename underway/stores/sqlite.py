"""The embedded store: one SQLite file in WAL mode, shared safely by many processes.

Writes go through one connection per process, serialised by a lock and wrapped in
`BEGIN IMMEDIATE`, so claims are atomic across processes too. The store applies the
lifecycle's decisions (`Decision`) as guarded UPDATEs and writes the events they
carry; it decides nothing itself. Waiters are woken in-process by the change feed.
Other processes on the same file are told after each COMMIT through a datagram
socket per process (`sqlite_wake`), naming the jobs that changed or new work; one
watcher thread per store receives theirs and feeds the change feed. As a fallback it
looks at `PRAGMA data_version` about once a second and wakes every waiter when the
file changed without a datagram (a writer killed between COMMIT and its send, or one
that does not speak the channel), and every `sweep_every` looks when anything changed.
Without a usable socket folder it polls `data_version` every 50 ms as before.

A submission made while a worker slot of this same store instance waits for work
claims its job for that slot in the transaction that inserts it, as the slot's claim
would, and hands it the record in memory: the slot's next claim returns it without a
transaction of its own (see `SQLiteStore.enqueue`). Other processes on the file
submit and claim as ever.

A full disk (or a file that cannot be written) raises `StoreUnavailable`: the
caller keeps what it could not write and tries again. The log is checkpointed on a
thread of the store's own (`sqlite_checkpoint`), not by the committing connection.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .._util import dumps, loads
from ..errors import ConfigurationError, StoreUnavailable
from ..feed import WORK, ChangeFeed, Known, Signal
from ..records import (
    EMPTY_PROGRESS,
    POSITION_LIMIT,
    TERMINAL,
    Decision,
    Event,
    EventKind,
    Fence,
    JobRecord,
    Page,
    Progress,
    State,
)
from .base import ROW_COLUMNS, Store, listing_filter, merged_meta, row_record
from .sqlite_checkpoint import BACKSTOP_PAGES, Checkpointer
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION, statements
from .sqlite_wake import SETTLE, WakeChannel, wake_folder

_COLUMNS = ", ".join(ROW_COLUMNS)
_CLAIM_SET = (
    "state = 'running', attempt = attempt + 1, started_at = ?, worker = ?, lease_until = ?, "
    "output_count = 0, progress = NULL, event_seq = event_seq + 1"
)
_STATES = {s.value: s for s in State}
# Plain strings of the enums' values, looked up once (an enum's `.value` is a property).
_VALUES: dict[Any, str] = {**{s: s.value for s in State}, **{k: k.value for k in EventKind}}
_ID, _PRIORITY, _STATE, _ATTEMPT = 0, 3, 4, 10  # positions in _COLUMNS
# What the end of a job this store claimed returns: the columns that may have changed
# while it ran; the rest of its final record is the claimed record and the decision.
_SLIM_RETURNING = "event_seq, attempt, progress, cancel_requested, output_count, meta"
# Records of the jobs this store claimed, kept for their ends, at most this many.
_HELD_MAX = 4096
# What a claim returns while this store holds records of jobs it submitted: the
# columns a queued job's first claim leaves that its submitted record cannot tell.
_SLIM_CLAIM = "id, priority, attempt, cancel_requested, meta, event_seq"
# Records of queued jobs this store submitted while a worker of it claims, kept for
# their first claim, at most this many (a backlog's older ones are read back).
_SUBMITTED_MAX = 1024
_EVENT_INSERT = (
    "INSERT INTO events (job_id, seq, kind, idx, data, at, attempt) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Events go in one statement per batch rather than by `executemany`, which steps once
# per row: each step lets go of the GIL while the write lock is held, and in a busy
# process every such let-go may hand the GIL to another thread for a while, so that
# the transaction (and every writer queued behind it) waits a thread switch per row.
_EVENTS_PER_INSERT = 64
# Batches of every size have statements of their own (events, grouped decisions):
# room for them all in each connection's cache of prepared statements.
_CACHED_STATEMENTS = 512


@functools.lru_cache(maxsize=_EVENTS_PER_INSERT)
def _events_sql(count: int) -> str:
    return _EVENT_INSERT + ", (?, ?, ?, ?, ?, ?, ?)" * (count - 1)


@functools.lru_cache(maxsize=_EVENTS_PER_INSERT)
def _unindexed_events_sql(count: int) -> str:
    """`_events_sql` for events without an output index (written as NULL)."""
    return _nulls_written(_events_sql(count), tuple(range(3, 7 * count, 7)))[0]


_WITHOUT_INDEX = operator.itemgetter(0, 1, 2, 4, 5, 6)


def _insert_events(db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), _EVENTS_PER_INSERT):
        chunk = rows[start : start + _EVENTS_PER_INSERT]
        if all(row[3] is None for row in chunk):  # no output item among them
            values = [value for row in chunk for value in _WITHOUT_INDEX(row)]
            db.execute(_unindexed_events_sql(len(chunk)), values)
        else:
            db.execute(_events_sql(len(chunk)), [value for row in chunk for value in row])


# A None bound as a parameter costs the sqlite3 module a failed look-up of two
# adaptation hooks (two exceptions raised and dropped: ~0.5 us, with the GIL held),
# where an int costs nothing of the kind. The statements on every job's path write
# their NULLs into the SQL instead.
@functools.lru_cache(maxsize=256)
def _nulls_written(
    sql: str, nulls: tuple[int, ...]
) -> tuple[str, Callable[[Sequence[Any]], tuple[Any, ...]]]:
    """`sql` with its placeholders number `nulls` (counted from 0) written as NULL, and
    what picks the values still bound out of all of them (at least two remain)."""
    parts = sql.split("?")
    text = parts[0] + "".join(
        ("NULL" if i in nulls else "?") + part for i, part in enumerate(parts[1:])
    )
    kept = [i for i in range(len(parts) - 1) if i not in nulls]
    return text, operator.itemgetter(*kept)


# Errors that mean "cannot write now" rather than "this is wrong": the caller retries.
_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    }
)


_KINDS = {k.value: k for k in EventKind}
# Every end the lifecycle decides is a `state` event and a `done` event that says the
# same state: stored as one row of this kind, and read back as both (a row, and its
# share of a page, fewer per job). Any other pair goes in as two rows.
_END = "end"
_END_STATES = {s: (EventKind.STATE, dumps({"state": s.value})) for s in TERMINAL}


_INSERT = (
    "INSERT INTO jobs (id, task, queue, priority, state, params, max_attempts, "
    "created_at, run_at, timeout, keep_for, owner, idempotency_key, supersede_key, meta, "
    "event_seq, first_event) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_values(record: JobRecord, events: Sequence[tuple[EventKind, str]]) -> tuple[Any, ...]:
    return (
        record.id,
        record.task,
        record.queue,
        record.priority,
        dumps(record.params),
        record.max_attempts,
        record.created_at,
        record.run_at,
        record.timeout,
        record.keep_for,
        record.owner,
        record.idempotency_key,
        record.supersede_key,
        dumps(record.meta) if record.meta else None,
        len(events),
        _on_row(events),
    )


# The places in `_insert_values` (and in `_INSERT_RUNNING`'s values, which start the
# same) of the columns a job often leaves empty: timeout, owner, idempotency key,
# supersede key, meta, and the first event when it is not kept on the row.
_OFTEN_NULL = (8, 10, 11, 12, 13, 15)


_often_null = operator.itemgetter(*_OFTEN_NULL)
_NONE = itertools.repeat(None)


def _insert_statement(sql: str, values: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """`sql` (`_INSERT` or `_INSERT_RUNNING`) and `values` with the empty columns' NULLs
    written into the SQL (see `_nulls_written`)."""
    empty = tuple(map(operator.is_, _often_null(values), _NONE))
    if not any(empty):
        return sql, values
    text, pick = _nulls_written(sql, tuple(itertools.compress(_OFTEN_NULL, empty)))
    return text, pick(values)


def _on_row(events: Sequence[tuple[EventKind, str]]) -> str | None:
    """The first event's data when it is one `state` event (it stays on the job's row
    and is read back as event 1: a submission is one row and one statement); None
    when the events go in the events table by themselves."""
    if len(events) == 1 and events[0][0] is EventKind.STATE:
        return events[0][1]
    return None


def _first_events(
    record: JobRecord, events: Sequence[tuple[EventKind, str]]
) -> list[tuple[Any, ...]]:
    if _on_row(events) is not None:
        return []
    return [
        (record.id, seq, kind.value, None, data, record.created_at, 0)
        for seq, (kind, data) in enumerate(events, 1)
    ]


# -- claims at submission (see `SQLiteStore.enqueue`) -----------------------------------

# A job claimed at its submission: running, attempt 1, its worker and lease, and the
# claim's `state` event after the submission's (so `event_seq` is one more).
_INSERT_RUNNING = (
    "INSERT INTO jobs (id, task, queue, priority, state, params, max_attempts, "
    "created_at, run_at, timeout, keep_for, owner, idempotency_key, supersede_key, meta, "
    "event_seq, first_event, attempt, started_at, worker, lease_until) "
    "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?)"
)
# The first queued jobs that a new job of some priority would not pass: a submission
# claims nothing for a slot while one of them is due and of the slot's tasks (claims
# go oldest first), nor while the queue holds this many of them (it looks no further).
_AHEAD_LOOK = 16
_AHEAD = (
    "SELECT task, run_at FROM jobs INDEXED BY jobs_queued "
    f"WHERE state = 'queued' AND priority <= ? LIMIT {_AHEAD_LOOK}"
)
# A job claimed for a slot that no slot of its worker took within this many seconds
# (they all went into jobs meanwhile) goes back to the queue at the worker's next
# renewal, for whoever claims first.
_PUSH_HOSTAGE = 0.1


class _Feed(ChangeFeed):
    """The store's change feed, with what claims at submission need: a worker slot
    waits for work on an event of its own (`enlist`), which a submission can take out
    of the waiters of work (`take_waiter`) and set once the slot's job is ready for it
    (`hand_over`); and whether anything but those hand-overs moved WORK's version on
    since some version of it (`only_handed_over_since`)."""

    # Hand-overs remembered, to follow WORK's version back through them.
    HANDED_OVER = 256

    def __init__(self) -> None:
        super().__init__()
        self._handed_over: dict[int, int] = {}  # WORK version a hand-over made: the one before

    def enlist(self, event: Signal, seen: int) -> int | None:
        """Have `event` wait for work, as `wait(WORK, seen, ...)` would wait: None, or
        WORK's version when it is not `seen` any more (then there is no waiting)."""
        with self._lock:
            current = self._versions.get(WORK, self._floor)
            if current != seen:
                return current
            self._waiters.setdefault(WORK, []).append(event)
        return None

    def take_waiter(self, event: Signal) -> bool:
        """Take `event` out of the waiters of work, if it still waits there (it was
        not woken yet): then no announcement wakes it, but `hand_over`."""
        with self._lock:
            waiters = self._waiters.get(WORK)
            if not waiters or event not in waiters:
                return False
            waiters.remove(event)
            if not waiters:
                del self._waiters[WORK]
            return True

    def hand_over(self, event: Signal) -> None:
        """Wake the waiter taken out (`take_waiter`), moving WORK's version on: a slot
        that looks at the version after this (say, to decide it only writes ends)
        knows that work came."""
        with self._lock:
            before = self._versions.get(WORK, self._floor)
            self._counter += 1
            self._versions[WORK] = self._counter
            if len(self._handed_over) >= self.HANDED_OVER:
                self._handed_over.clear()  # older versions read as other news
            self._handed_over[self._counter] = before
        event.set()

    def only_handed_over_since(self, version: int) -> bool:
        """Was WORK's version moved on since `version` by hand-overs alone (or not at
        all), and never by an announcement of work?"""
        current = self.version(WORK)
        for _ in range(self.HANDED_OVER):
            if current == version:
                return True
            before = self._handed_over.get(current)
            if before is None:
                return False
            current = before
        return False


@dataclass(eq=False, slots=True)
class _Slot:
    """A worker slot (a thread) of this process, as its latest claim left it."""

    key: tuple[Any, ...]  # what its claims said: worker, lease, tasks, limited tasks
    worker: str
    tasks: frozenset[str]
    pushable: frozenset[str]  # its tasks without a concurrency limit
    lease: float
    idle: bool = False  # that claim found fewer jobs than it asked for


class _Write:
    """`with store._write() as db:` one write transaction, holding the store's lock; it
    commits, or rolls back on an exception, and a full disk or an unwritable file is
    StoreUnavailable. (A class: a generator's context manager costs a few microseconds
    more, on the path of every submission and every batch of ends.)"""

    __slots__ = ("store",)

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._lock.acquire()
        try:
            store._plain.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            store._lock.release()
            if isinstance(exc, sqlite3.OperationalError):
                store._raise_unavailable(exc)
            raise
        return store._db

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: Any
    ) -> None:
        store = self.store
        db = store._db
        try:
            if kind is None:
                store._plain.execute("COMMIT")
                if store._checkpointer is not None:
                    store._checkpointer.committed()
            elif db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            store._raise_unavailable(exc)
            raise
        finally:
            store._lock.release()
        if isinstance(value, sqlite3.OperationalError):
            store._raise_unavailable(value)


@dataclass(eq=False, slots=True)
class _Waiter:
    """An idle slot waiting for work (`SQLiteStore.wait_for_work`), on `event`."""

    slot: _Slot
    event: Signal


@dataclass(eq=False, slots=True)
class _Pushed:
    """A job claimed for a worker at its submission, that no slot of it took yet."""

    record: JobRecord
    at: float  # monotonic time of the claim


class SQLiteStore(Store):
    """`sqlite:///path/to/file.db` (default `./underway.db`); `memory://` uses `:memory:`."""

    driver_errors = (sqlite3.Error,)

    fallback_interval = 1.0  # seconds between looks at data_version beside the channel
    poll_without_channel = 0.05  # ... and without it
    sweep_every = 10  # every Nth look wakes every waiter if the file changed at all

    def __init__(
        self,
        path: str = "underway.db",
        *,
        url: str | None = None,
        fallback_interval: float | None = None,
        wake: bool = True,
    ) -> None:
        """`fallback_interval`: how often to look for changes that came without a
        datagram (default `fallback_interval`, or `poll_without_channel` when there is
        no channel); `wake=False` goes without the channel."""
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._feed = _Feed()
        self.notifier = self._feed
        # Claims at submission (see `enqueue`): the slots waiting for work, oldest
        # first; the jobs claimed for workers and not taken yet; the workers that
        # stopped; and for each worker, WORK's version before its latest claim that
        # found its queue drained (no entry once one found as many jobs as it asked for).
        self._push_lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._pushed: list[_Pushed] = []
        self._stopped: set[str] = set()
        self._drained: dict[str, int] = {}
        # The records of jobs claimed here, by id, until their end is written: a job's
        # final record is made of its claimed record, the end's decision and the few
        # columns its end returns (`_FinalRecord`), not of its whole row read back.
        self._held: dict[str, JobRecord] = {}
        # The same for jobs submitted here, until their first claim (`_claimed_records`),
        # once a worker claims through this store (a process that only submits keeps
        # none: its jobs are claimed elsewhere).
        self._submitted: dict[str, JobRecord] = {}
        self._claiming = False
        self._memory = path == ":memory:"
        self._lock = threading.RLock()
        self._writer = _Write(self)
        self._local = threading.local()
        self._closed = threading.Event()
        # Set once this process has taken its look at everything after binding its
        # wake-up socket (see sqlite_wake.SETTLE); from then on, idle waiters stay idle.
        self.settled = threading.Event()
        self._db = self._connect()
        # The write connection's statements that return no rows (a transaction's
        # BEGIN and COMMIT, a plain submission) go through this one cursor, under the
        # write lock: `Connection.execute` makes a cursor each time, and registers a
        # weak reference to it, two more objects a statement for the garbage collector.
        self._plain = self._db.cursor()
        # The log's checkpoints run on a thread of their own (see sqlite_checkpoint).
        self._checkpointer: Checkpointer | None = None
        if not self._memory:
            self._db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            self._checkpointer = Checkpointer(functools.partial(_connect, path))
        self._migrate()
        self._wake: WakeChannel | None = None
        if wake and not self._memory:
            folder = wake_folder(path)
            if folder is not None:
                try:
                    self._wake = WakeChannel(folder)
                except OSError:
                    self._wake = None
        if fallback_interval is not None:
            self.fallback_interval = fallback_interval
        elif self._wake is None:
            self.fallback_interval = self.poll_without_channel
        self.poll_interval = self.fallback_interval if not self._memory else 1.0
        # Every commit is news in this process, and in the others through the wake
        # channel (without it they poll: a worker then lingers the whole while).
        self.announces_each_job = self._memory or self._wake is not None
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._watcher: threading.Thread | None = None
        if not self._memory:
            self._watcher = threading.Thread(
                target=self._watch_other_processes, name="underway-sqlite-watch", daemon=True
            )
            self._watcher.start()
        else:
            self.settled.set()  # no other process can share it

    # -- connections -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise ConfigurationError(f"cannot open job store {self.path}: no folder {parent}")
        try:
            db = _connect(self.path)
            if not self._memory:
                mode = _switch_to_wal(db)
                if mode.lower() != "wal":
                    raise sqlite3.DatabaseError(f"cannot switch to WAL (journal mode {mode})")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = OFF")
        except sqlite3.DatabaseError as exc:
            raise ConfigurationError(f"cannot open job store {self.path}: {exc}") from None
        return db

    def _reader(self) -> sqlite3.Connection:
        """Readers use their own connection per thread (WAL lets them run beside writes)."""
        if self._memory:
            return self._db
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = _connect(self.path)
            self._local.db = db
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._lock:
                yield self._db
        else:
            yield self._reader()

    def _write(self) -> _Write:
        """One write transaction; a full disk or an unwritable file is StoreUnavailable."""
        return self._writer

    def _raise_unavailable(self, exc: sqlite3.OperationalError) -> None:
        """StoreUnavailable for a full disk or an unwritable file (else return)."""
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _UNAVAILABLE:
            raise StoreUnavailable(
                f"job store {self.path} cannot be written: {exc}", retry_after=5.0
            ) from None

    def _migrate(self) -> None:
        try:
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"job store {self.path} has schema version {version}, newer than this "
                        f"underway understands ({SCHEMA_VERSION}); upgrade underway"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in statements(MIGRATIONS[target]):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {target}")
        except sqlite3.DatabaseError as exc:
            raise ConfigurationError(f"cannot open job store {self.path}: {exc}") from None

    def _changed(
        self, *keys: str, known: Mapping[str, Known] | None = None, since: int | None = None
    ) -> None:
        """Wake this process's waiters for `keys` (telling them what is `known` of the
        jobs after this write, taken at `since`: see `ChangeFeed.notify`), then the other
        processes' (after COMMIT: whoever wakes reads the change)."""
        self.notifier.notify(*keys, known=known, since=since)
        if self._wake is not None:
            self._wake.send(keys)

    def _watch_other_processes(self) -> None:
        wake = self._wake
        next_look = time.monotonic() + self.fallback_interval
        heard = False  # a datagram came since the last look
        looks = 0
        swept_version = self._data_version
        # One more look at everything shortly after binding (see sqlite_wake.SETTLE).
        settle_at: float | None = time.monotonic() + SETTLE if wake is not None else None
        if settle_at is None:
            self.settled.set()
        while not self._closed.is_set():
            left = next_look - time.monotonic()
            if settle_at is not None:
                if time.monotonic() >= settle_at:
                    settle_at = None
                    self.notifier.notify_everything()
                    self.settled.set()
                else:
                    left = min(left, settle_at - time.monotonic())
            if wake is None:
                if self._closed.wait(max(0.0, left)):
                    return
            else:
                if wake.owes:
                    left = min(left, 0.05)
                got = wake.receive(left)
                if got is not None:
                    keys, work, everything = got
                    if self._closed.is_set():
                        return
                    if everything:
                        self.notifier.notify_everything()
                        heard = True
                    elif keys or work:
                        # One WORK per datagram that named it: each wakes one idle slot.
                        self.notifier.notify(*keys, *[WORK] * min(work, 64))
                        heard = True
                if wake.owes:
                    wake.pay_debts()
                if time.monotonic() < next_look:
                    continue
            next_look = time.monotonic() + self.fallback_interval
            looks += 1
            try:
                with self._lock:
                    version = self._db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                continue
            changed = version != self._data_version
            self._data_version = version
            if wake is None:
                if changed:
                    self.notifier.notify_everything()
                continue
            if not wake.still_bound():
                try:
                    wake.rebind()
                except OSError:
                    pass
                self.notifier.notify_everything()
                settle_at = time.monotonic() + SETTLE
            else:
                sweep = looks % self.sweep_every == 0
                # A change nobody told us about, or (now and then) any change at all:
                # a datagram may have been lost with its sender.
                if (changed and not heard) or (sweep and version != swept_version):
                    self.notifier.notify_everything()
                if sweep:
                    swept_version = version
            heard = False

    # -- helpers ---------------------------------------------------------------------
    def _insert_events(
        self,
        db: sqlite3.Connection,
        job_id: str,
        items: Sequence[tuple[EventKind, str]],
        now: float,
        last_seq: int,
        attempt: int,
        last_idx: int | None = None,
    ) -> None:
        """Insert `items` as the events ending at `last_seq` (output items numbered up
        to `last_idx` within `attempt`)."""
        seq = last_seq - len(items)
        idx = 0 if last_idx is None else last_idx - sum(k is EventKind.OUTPUT for k, _ in items)
        rows: list[tuple[Any, ...]] = []
        for kind, data in items:
            seq += 1
            if kind is EventKind.OUTPUT:
                rows.append((job_id, seq, kind.value, idx, data, now, attempt))
                idx += 1
            else:
                rows.append((job_id, seq, kind.value, None, data, now, attempt))
        _insert_events(db, rows)

    def _apply_one(
        self,
        db: sqlite3.Connection,
        d: Decision,
        statement: tuple[str, list[Any]],
        now: float,
        rows: list[tuple[Any, ...]],
        finals: list[tuple[Decision, tuple[Any, ...]]],
    ) -> bool:
        """Apply `d` with its `statement`; its events go to `rows`, for the caller to
        insert in one go, and the row of a job it finished to `finals`."""
        sql, values = statement
        row = db.execute(sql, values).fetchone()
        if row is None:
            return False
        _took(d, row, now, rows, finals)
        return True

    def _apply_many(
        self,
        db: sqlite3.Connection,
        decisions: Sequence[Decision],
        statements: Sequence[tuple[str, list[Any]]],
        members: list[int],
        now: float,
        rows: list[tuple[Any, ...]],
        finals: list[tuple[Decision, tuple[Any, ...]]],
        done: list[bool],
    ) -> None:
        """Apply decisions of one shape (`members`, on distinct jobs) in one statement,
        in the order given: what `_apply_one` does for each, with one call."""
        sql, width = _bulk_sql(statements[members[0]][0], len(members))
        values = [v for k in members for v in statements[k][1]]
        assert len(values) == width * len(members)
        returned = {row[0]: row for row in db.execute(sql, values)}
        for k in members:
            d = decisions[k]
            row = returned.get(d.job_id)
            if row is None:
                continue
            done[k] = True
            _took(d, row[1:], now, rows, finals)

    # -- submission ------------------------------------------------------------------
    def enqueue(
        self, record: JobRecord, events: Sequence[tuple[EventKind, str]]
    ) -> tuple[JobRecord, bool, list[str]]:
        """Insert the job; while a slot of this process waits for work and may take it,
        claimed for that slot in the same transaction (see `_push`)."""
        superseded: list[str] = []
        # A look without the lock, to keep the plain way plain (`_push` looks again).
        push = (
            bool(self._waiting)
            and record.run_at <= record.created_at
            and any(record.task in w.slot.pushable for w in self._waiting)
        )
        if not push and record.idempotency_key is None and record.supersede_key is None:
            first = _first_events(record, events)
            if not first:  # one statement, and so its own transaction
                sql, values = _insert_statement(_INSERT, _insert_values(record, events))
                mark = self.notifier.mark()
                with self._lock:
                    try:
                        self._plain.execute(sql, values)
                    except sqlite3.OperationalError as exc:
                        self._raise_unavailable(exc)
                        raise
                    if self._checkpointer is not None:
                        self._checkpointer.committed()
                if self._claiming:
                    self._remember(self._submitted, record, _SUBMITTED_MAX)
                queued = {record.id: Known(State.QUEUED, record=record)}
                self._changed(WORK, record.id, known=queued, since=mark)
                return record, True, superseded
        mark = self.notifier.mark()
        handed: tuple[JobRecord, _Waiter] | None = None
        # The write lock is held until a job claimed for a slot is among `_pushed`:
        # a worker that stops, or the store closing, finds it there (see `_stop_pushing`).
        with self._lock:
            try:
                with self._write() as db:
                    if record.idempotency_key is not None:
                        row = db.execute(
                            f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                            (record.idempotency_key,),
                        ).fetchone()
                        if row is not None:
                            return row_record(row), False, []
                    if record.supersede_key is not None:
                        superseded = [
                            r[0]
                            for r in db.execute(
                                "SELECT id FROM jobs WHERE supersede_key = ? "
                                "AND state IN ('queued', 'running')",
                                (record.supersede_key,),
                            )
                        ]
                    if push:
                        handed = self._push(db, record, events)
                    if handed is None:
                        db.execute(*_insert_statement(_INSERT, _insert_values(record, events)))
                        _insert_events(db, _first_events(record, events))
            except BaseException:
                if handed is not None:  # nothing was claimed for the slot taken: wake it
                    handed[1].event.set()
                raise
            if handed is not None:
                with self._push_lock:
                    self._pushed.append(_Pushed(handed[0], time.monotonic()))
        if handed is None:
            queued = {record.id: Known(State.QUEUED, record=record)}
            self._changed(WORK, record.id, known=queued, since=mark)
            return record, True, superseded
        job, waiter = handed
        self._feed.hand_over(waiter.event)
        self._changed(record.id, known={record.id: Known(State.RUNNING, record=job)}, since=mark)
        return record, True, superseded

    def _push(
        self, db: sqlite3.Connection, record: JobRecord, events: Sequence[tuple[EventKind, str]]
    ) -> tuple[JobRecord, _Waiter] | None:
        """In the submission's transaction: insert `record` claimed for a slot of this
        process that waits for work, as that slot's claim would claim it (running,
        attempt 1, its worker, its lease from the submission's time, which is also its
        start, and the claim's `state` event), and take that slot out of the waiters
        of work. The job and the slot's waiter; None (nothing written) when no slot
        may take it: none waits for its task, or the task has a concurrency limit, or
        a due job of the slot's tasks is queued ahead of it."""
        if self._closed.is_set():
            return None
        with self._push_lock:
            waiter = next((w for w in self._waiting if record.task in w.slot.pushable), None)
        if waiter is None:
            return None
        slot = waiter.slot
        created = record.created_at
        ahead = db.execute(_AHEAD, (record.priority,)).fetchall()
        if len(ahead) >= _AHEAD_LOOK or any(
            task in slot.tasks and run_at <= created for task, run_at in ahead
        ):
            return None
        with self._push_lock:
            if waiter not in self._waiting or slot.worker in self._stopped:
                return None
            if not self._feed.take_waiter(waiter.event):
                return None  # woken meanwhile (it claims anyway)
            self._waiting.remove(waiter)
        lease_until = created + slot.lease
        values = _insert_values(record, events)
        rows = _first_events(record, events)
        rows.append((record.id, len(events) + 1, "state", None, _running_json(1), created, 1))
        try:
            db.execute(
                *_insert_statement(
                    _INSERT_RUNNING,
                    (*values[:-2], len(events) + 1, values[-1], created, slot.worker, lease_until),
                )
            )
            _insert_events(db, rows)
        except BaseException:
            waiter.event.set()
            raise
        # The row as inserted (`ROW_COLUMNS`), made into a record as a claim's would be.
        row = (
            record.id, record.task, record.queue, record.priority, "running", values[4],
            None, None, None, 0, 1, record.max_attempts, created, created, None, None,
            record.run_at, record.timeout, record.keep_for, 0, record.owner,
            record.idempotency_key, record.supersede_key, slot.worker, lease_until, values[13],
        )  # fmt: skip
        return row_record(row), waiter

    def enqueue_many(
        self, records: Sequence[JobRecord], events: Sequence[tuple[EventKind, str]]
    ) -> None:
        if not records:
            return
        with self._write() as db:
            db.executemany(_INSERT, [_insert_values(r, events) for r in records])
            rows = [row for r in records for row in _first_events(r, events)]
            if rows:
                _insert_events(db, rows)
        self._changed(WORK)

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            position = _position(db, row) if row[4] == "queued" else None
        return row_record(row, position)

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        where, args = listing_filter(task=task, state=state, owner=owner, cursor=cursor, mark="?")
        sql = f"SELECT {_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT ?"
        args.append(limit + 1)
        with self._read() as db:
            rows = db.execute(sql, args).fetchall()
            page = rows[:limit]
            positions = _positions(db, [r for r in page if r[4] == "queued"])
        records = [row_record(r, positions.get(r[_ID])) for r in page]
        return Page(jobs=records, next_cursor=records[-1].id if len(rows) > limit else None)

    def count(self, *, state: State | None = None) -> int:
        with self._read() as db:
            if state is None:
                return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
            row = db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state.value,))
            return int(row.fetchone()[0])

    def running_of(self, task: str) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) FROM jobs WHERE state = 'running' AND task = ?", (task,)
            )
            return int(row.fetchone()[0])

    def heartbeat(self, worker: str, tasks: Collection[str], until: float) -> None:
        if until <= 0:
            self._stop_pushing(worker)
        with self._write() as db:
            if until <= 0:
                db.execute("DELETE FROM workers WHERE id = ?", (worker,))
                return
            db.execute(
                "INSERT OR REPLACE INTO workers (id, tasks, until) VALUES (?, ?, ?)",
                (worker, dumps(sorted(tasks)), until),
            )
            # Rows of workers that died without saying so, an hour on.
            db.execute("DELETE FROM workers WHERE until < ?", (until - 3600,))

    def _stop_pushing(self, worker: str) -> None:
        """`worker` stopped: no more jobs are claimed for it at submission, and those
        that were and no slot of it took go back to the queue."""
        with self._lock, self._push_lock:  # see `enqueue`
            self._stopped.add(worker)
            self._drained.pop(worker, None)
            left = [p.record for p in self._pushed if p.record.worker == worker]
            if left:
                self._pushed = [p for p in self._pushed if p.record.worker != worker]
            self._waiting = [w for w in self._waiting if w.slot.worker != worker]
        self.hand_back(left)

    def _take_pushed(self, worker: str, tasks: Collection[str], max_jobs: int) -> list[JobRecord]:
        """Up to `max_jobs` of the jobs claimed for `worker` at their submission."""
        with self._push_lock:
            taken: list[JobRecord] = []
            kept: list[_Pushed] = []
            for pushed in self._pushed:
                record = pushed.record
                if len(taken) < max_jobs and record.worker == worker and record.task in tasks:
                    taken.append(record)
                else:
                    kept.append(pushed)
            if taken:
                self._pushed = kept
        return taken

    def _put_back(self, records: Sequence[JobRecord]) -> None:
        """Taken jobs claimed at submission that a failed call did not return: they
        wait again for their worker's next claim (or go back, if it stopped)."""
        at = time.monotonic()
        with self._push_lock:
            stopped = [r for r in records if r.worker in self._stopped]
            kept = [_Pushed(r, at) for r in records if r.worker not in self._stopped]
            self._pushed[:0] = kept
        self.hand_back(stopped)

    def _drained_quiet(self, worker: str) -> bool:
        """Did `worker` find its queue drained, with no work announced since (other than
        jobs claimed for slots at their submission)?"""
        drained = self._drained.get(worker)
        return drained is not None and self._feed.only_handed_over_since(drained)

    def _note_claim(
        self,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        asked: int,
        got: int,
    ) -> None:
        """What a claim of the calling thread (a worker slot) says of it: idle when it
        found fewer jobs than it asked for, until its next claim."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if got >= asked:
            if slot is not None:
                slot.idle = False
            return
        key = (worker, lease, tuple(tasks), tuple(limits))
        if slot is None or slot.key != key:
            names = frozenset(tasks)
            slot = _Slot(key, worker, names, names.difference(limits), lease)
            self._local.slot = slot
        slot.idle = True

    def _remember(self, records: dict[str, JobRecord], record: JobRecord, most: int) -> None:
        """Keep `record` in `records` (`_held`, `_submitted`), the oldest going first
        beyond `most` (jobs lost to another process, a backlog claimed elsewhere)."""
        records[record.id] = record
        if len(records) > most:
            with self._push_lock:
                try:
                    while len(records) > most:
                        records.pop(next(iter(records)), None)
                except RuntimeError:  # another thread changed it meanwhile: next time
                    pass

    def live_workers(self, now: float) -> dict[str, list[str]] | None:
        with self._read() as db:
            rows = db.execute("SELECT id, tasks FROM workers WHERE until >= ?", (now,)).fetchall()
        return {worker: loads(tasks) for worker, tasks in rows}

    # -- state changes ---------------------------------------------------------------
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
        elif not self._claiming and max_jobs > 0:
            self._claiming = True
        asked = max_jobs
        pushed: list[JobRecord] = []
        if max_jobs > 0 and self._pushed:
            # Jobs claimed for this worker at their submission come first. With no
            # decision to write, they are all this call takes, with no transaction:
            # unless it takes fewer than asked for while work was announced since its
            # worker last found its queue drained (the slot would take the queue for
            # drained), when it claims the rest as ever.
            pushed = self._take_pushed(worker, tasks, max_jobs)
            if pushed:
                if not decisions and (len(pushed) == max_jobs or self._drained_quiet(worker)):
                    self._note_claim(worker, tasks, limits, lease, asked, len(pushed))
                    return [], pushed
                max_jobs -= len(pushed)
        if not decisions and max_jobs <= 0:
            return [], []
        work_version = self._feed.version(WORK) if max_jobs > 0 else 0
        held = self._held
        slim: dict[str, JobRecord] = {}
        for d in decisions:
            record = held.get(d.job_id)
            if (
                record is not None
                and d.fence is not None
                and d.fence.attempt == record.attempt
                and d.state in TERMINAL
            ):
                slim[d.job_id] = record
        statements = [_statement(d, now, d.job_id in slim) for d in decisions]
        groups = _same_shape(decisions, statements)
        mark = self.notifier.mark()
        try:
            with self._write() as db:  # one transaction: one commit for the whole batch
                rows: list[tuple[Any, ...]] = []
                finals: list[tuple[Decision, tuple[Any, ...]]] = []
                done = [False] * len(decisions)
                for members in groups:
                    if len(members) == 1:
                        k = members[0]
                        done[k] = self._apply_one(
                            db, decisions[k], statements[k], now, rows, finals
                        )
                    else:
                        self._apply_many(
                            db, decisions, statements, members, now, rows, finals, done
                        )
                if rows:
                    _insert_events(db, rows)
                claimed: list[JobRecord] = []
                if max_jobs > 0:
                    quiet = worker in self._drained and self._drained_quiet(worker)
                    claimed = self._claim_any(
                        db, worker, tasks, limits, lease, now, max_jobs, look_first=quiet
                    )
        except BaseException:
            if pushed:  # the worker gets none of this call's jobs: they wait for the next
                self._put_back(pushed)
            raise
        if asked > 0:
            if max_jobs > 0:
                if len(claimed) < max_jobs:
                    self._drained[worker] = work_version
                else:
                    self._drained.pop(worker, None)
            self._note_claim(worker, tasks, limits, lease, asked, len(pushed) + len(claimed))
        # What waiters of these jobs may take without a read: a claimed job's record,
        # and a finished job's final record (made only if someone asks).
        known = {r.id: Known(State.RUNNING, record=r) for r in claimed}
        for d, extra in finals:
            load: Callable[[], JobRecord]
            if d.job_id in slim:
                load = _FinalRecord(slim[d.job_id], d, extra)
            else:
                load = functools.partial(row_record, extra[1:])
            known[d.job_id] = Known(d.state, load=load)
        applied = [d for d, ok in zip(decisions, done, strict=True) if ok]
        for d in decisions:  # applied or not, the claim it held is over
            held.pop(d.job_id, None)
        for record in [*pushed, *claimed]:
            self._remember(held, record, _HELD_MAX)
        changed = [d.job_id for d in applied]
        if any(d.state is State.QUEUED for d in applied):
            changed.append(WORK)
        if changed or claimed:
            self._changed(*changed, *(r.id for r in claimed), known=known, since=mark)
        if claimed and len(claimed) == max_jobs:
            # It took all it asked for: more may be queued, and the jobs beyond the
            # first wait in the worker for a slot. An idle slot of this process for
            # each (a wake-up finds one waiting): it runs a claimed job that waits, or
            # claims in its turn, so that queued jobs never wait for a slot's poll while
            # slots are free (a bulk submission announces its jobs once).
            self.notifier.notify(*[WORK] * len(claimed))
        return done, pushed + claimed if pushed else claimed

    def _claim_any(
        self,
        db: sqlite3.Connection,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
        look_first: bool = False,
    ) -> list[JobRecord]:
        """Claim up to `max_jobs` ready jobs; their records, in claim order. `look_first`:
        the queue is likely empty of them (no work was announced since the worker
        found it so)."""
        slim = False
        if limits:
            rows = self._claim_limited_in(db, worker, tasks, limits, lease, now, max_jobs)
        else:
            marks = ",".join("?" * len(tasks))
            # The UPDATE builds its work tables (the list it picks from, the rows it
            # returns) even when it finds nothing: a claim likely to find nothing
            # looks first.
            if look_first and not _any_ready(db, marks, tasks, now):
                return []
            slim = bool(self._submitted)
            rows = db.execute(
                f"UPDATE jobs SET {_CLAIM_SET} WHERE id IN (SELECT id FROM jobs "
                f"INDEXED BY jobs_queued WHERE state = 'queued' AND run_at <= ? "
                f"AND task IN ({marks}) ORDER BY priority, id LIMIT ?) "
                f"RETURNING {_SLIM_CLAIM if slim else _COLUMNS + ', event_seq'}",
                (now, worker, now + lease, now, *tasks, max_jobs),
            ).fetchall()
        if not rows:
            return []
        # Both shapes start with the id and end with event_seq.
        at_priority, at_attempt = (1, 2) if slim else (_PRIORITY, _ATTEMPT)
        rows.sort(key=lambda r: (r[at_priority], r[_ID]))
        _insert_events(
            db,
            [
                (r[_ID], r[-1], "state", None, _running_json(r[at_attempt]), now, r[at_attempt])
                for r in rows
            ],
        )
        if slim:
            return self._claimed_records(db, rows, worker, lease, now)
        return [row_record(r[:-1]) for r in rows]

    def _claimed_records(
        self,
        db: sqlite3.Connection,
        rows: list[tuple[Any, ...]],
        worker: str,
        lease: float,
        now: float,
    ) -> list[JobRecord]:
        """The records of jobs a claim returned `_SLIM_CLAIM` of (`rows`, in claim
        order): a job submitted here, on its first attempt, is its submitted record as
        the claim changed it (and as a change of its meta since left it); others are
        read back."""
        submitted = self._submitted
        records: list[JobRecord | None] = []
        unknown: list[str] = []
        for job_id, _, attempt, cancel_requested, meta, _ in rows:
            record = submitted.pop(job_id, None)
            if record is None or attempt != 1:
                unknown.append(job_id)
                records.append(None)
                continue
            values = dict(record.__dict__)
            values.update(
                state=State.RUNNING,
                attempt=1,
                started_at=now,
                worker=worker,
                lease_until=now + lease,
                output_count=0,
                progress=EMPTY_PROGRESS,
                cancel_requested=bool(cancel_requested),
                meta=loads(meta) or {},
                position=None,
                waiting=None,
            )
            records.append(JobRecord.from_fields(values))
        if unknown:
            read = {
                row[_ID]: row_record(row)
                for row in db.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE id IN ({','.join('?' * len(unknown))})",
                    unknown,
                )
            }
            return [
                read[row[0]] if record is None else record
                for record, row in zip(records, rows, strict=True)
            ]
        return [record for record in records if record is not None]

    def _claim_limited_in(
        self,
        db: sqlite3.Connection,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
    ) -> list[tuple[Any, ...]]:
        claimed: list[tuple[Any, ...]] = []
        allowed = set(tasks)
        room: dict[str, int] = {}
        running = dict(
            db.execute(
                "SELECT task, count(*) FROM jobs WHERE state = 'running' AND task IN "
                f"({','.join('?' * len(limits))}) GROUP BY task",
                list(limits),
            ).fetchall()
        )
        for name, cap in limits.items():
            room[name] = cap - running.get(name, 0)
            if room[name] <= 0:
                allowed.discard(name)
        if not allowed:
            return []
        rows = db.execute(
            "SELECT id, task FROM jobs INDEXED BY jobs_queued "
            "WHERE state = 'queued' AND run_at <= ? AND task IN "
            f"({','.join('?' * len(allowed))}) ORDER BY priority, id LIMIT ?",
            (now, *allowed, max_jobs * 4),
        ).fetchall()
        for job_id, task in rows:
            if len(claimed) >= max_jobs:
                break
            if task in room:
                if room[task] <= 0:
                    continue
                room[task] -= 1
            claimed.append(
                db.execute(
                    f"UPDATE jobs SET {_CLAIM_SET} WHERE id = ? RETURNING {_COLUMNS}, event_seq",
                    (now, worker, now + lease, job_id),
                ).fetchone()
            )
        return claimed

    def renew(
        self, *, worker: str, fences: Mapping[str, int], lease: float, now: float
    ) -> tuple[set[str], set[str]]:
        if self._pushed:
            self._release_hostages(worker)
        if not fences:
            return set(), set()
        held: set[str] = set()
        cancelled: set[str] = set()
        with self._write() as db:
            for job_id, attempt in fences.items():
                row = db.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' "
                    "AND worker = ? AND attempt = ? RETURNING cancel_requested",
                    (now + lease, job_id, worker, attempt),
                ).fetchone()
                if row is not None:
                    held.add(job_id)
                    if row[0]:
                        cancelled.add(job_id)
        return held, cancelled

    def _release_hostages(self, worker: str) -> None:
        """Jobs claimed at submission for `worker` that none of its slots took within
        `_PUSH_HOSTAGE` (they all went into jobs since) go back to the queue: the
        worker renews leases while its slots run jobs."""
        old = time.monotonic() - _PUSH_HOSTAGE
        with self._push_lock:
            stale = [p for p in self._pushed if p.record.worker == worker and p.at < old]
            if stale:
                self._pushed = [p for p in self._pushed if p not in stale]
        self.hand_back([p.record for p in stale])

    def save_progress(self, job_id: str, fence: Fence, progress: Progress, now: float) -> bool:
        data = dumps(progress.to_dict())
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET progress = ?, event_seq = event_seq + 1 WHERE id = ? "
                "AND state = 'running' AND worker = ? AND attempt = ? RETURNING event_seq",
                (data, job_id, fence.worker, fence.attempt),
            ).fetchone()
            if row is not None:
                db.execute(
                    _EVENT_INSERT,
                    (job_id, row[0], EventKind.PROGRESS.value, None, data, now, fence.attempt),
                )
        if row is not None:
            self._changed(job_id)
        return row is not None

    def append(
        self, job_id: str, fence: Fence, items: Sequence[tuple[EventKind, str]], now: float
    ) -> bool:
        if not items:
            return True
        n_out = sum(1 for kind, _ in items if kind is EventKind.OUTPUT)
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET event_seq = event_seq + ?, output_count = output_count + ? "
                "WHERE id = ? AND state = 'running' AND worker = ? AND attempt = ? "
                "RETURNING event_seq, output_count",
                (len(items), n_out, job_id, fence.worker, fence.attempt),
            ).fetchone()
            if row is not None:
                self._insert_events(db, job_id, items, now, row[0], fence.attempt, row[1])
        if row is not None:
            self._changed(job_id)
        return row is not None

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < ? LIMIT ?",
                (now, limit),
            ).fetchall()
        return [row_record(r) for r in rows]

    # -- callers ---------------------------------------------------------------------
    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        # Merged here, under the write lock: SQLite's json_patch would merge an object
        # into the old one and drop a key set to null (see `merged_meta`).
        with self._write() as db:
            row = db.execute("SELECT meta FROM jobs WHERE id = ?", (job_id,)).fetchone()
            changed = row is not None
            if changed:
                meta = dumps(merged_meta(row[0], changes))
                db.execute("UPDATE jobs SET meta = ? WHERE id = ?", (meta, job_id))
        if changed:
            self._changed(job_id)
        return bool(changed)

    def delete(self, job_id: str) -> bool:
        with self._write() as db:
            gone = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
        if gone:
            self._changed(job_id)
            self.notifier.forget(job_id)
        return bool(gone)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        rows: list[tuple[Any, ...]] = []
        with self._read() as db:
            if after < 1 and limit > 0:  # the first event, kept on the job's row
                row = db.execute(
                    "SELECT first_event, created_at FROM jobs WHERE id = ?", (job_id,)
                ).fetchone()
                if row is not None and row[0] is not None:
                    rows.append((1, EventKind.STATE.value, None, row[0], row[1], 0))
            rows += db.execute(
                "SELECT seq, kind, idx, data, at, attempt FROM events WHERE job_id = ? "
                "AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after, limit - len(rows)),
            ).fetchall()
        out = []
        for seq, kind, idx, data, at, attempt in rows:
            value = loads(data)
            if idx is not None:
                value = {"attempt": attempt, "index": idx, "item": value}
            elif kind == _END:  # the state event and the done event of an end
                if seq - 1 > after:
                    state = {"state": value["state"]}
                    out.append(Event(seq=seq - 1, kind=EventKind.STATE, data=state, at=at,
                                     attempt=attempt))  # fmt: skip
                kind = EventKind.DONE.value
            out.append(Event(seq=seq, kind=_KINDS[kind], data=value, at=at, attempt=attempt))
        return out[:limit]

    def output(
        self, job_id: str, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]:
        with self._read() as db:
            if attempt is None:
                row = db.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None:
                    return []
                attempt = int(row[0])
            rows = db.execute(
                "SELECT data FROM events WHERE job_id = ? AND attempt = ? AND idx >= ? "
                "ORDER BY idx LIMIT ?",
                (job_id, attempt, after, limit),
            ).fetchall()
        return [loads(r[0]) for r in rows]

    # -- housekeeping ----------------------------------------------------------------
    def purge(self, now: float, *, finished_before: float | None = None) -> int:
        with self._write() as db:
            if finished_before is None:
                ids = db.execute(
                    "DELETE FROM jobs WHERE expires_at < ? RETURNING id", (now,)
                ).fetchall()
            else:
                ids = db.execute(
                    "DELETE FROM jobs WHERE finished_at < ? RETURNING id", (finished_before,)
                ).fetchall()
            db.executemany("DELETE FROM events WHERE job_id = ?", ids)
        for (job_id,) in ids:
            self.notifier.forget(job_id)
        return len(ids)

    def wait_for_work(self, seen: int, timeout: float) -> int:
        """Wait for work; a worker slot whose latest claim found fewer jobs than it
        asked for waits where a submission can claim a job for it (see `enqueue`)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is None or not slot.idle:
            return self.notifier.wait(WORK, seen, timeout)
        # Listed first, then among the waiters of work: a submission claims a job for
        # a listed slot only if it can take it out of those waiters (see `_push`).
        waiter = _Waiter(slot, Signal())
        with self._push_lock:
            listed = slot.worker not in self._stopped and not self._closed.is_set()
            if listed:
                self._waiting.append(waiter)
        try:
            current = self._feed.enlist(waiter.event, seen)
            if current is not None:
                return current
            if not waiter.event.wait(timeout):
                self._feed.take_waiter(waiter.event)
        finally:
            if listed:
                with self._push_lock:
                    if waiter in self._waiting:
                        self._waiting.remove(waiter)
        return self.notifier.version(WORK)

    def subscribe(self, job_id: str, fn: Callable[[], None]) -> Callable[[], None]:
        return self.notifier.subscribe(job_id, fn)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock, self._push_lock:  # see `enqueue`
            left = [p.record for p in self._pushed]
            self._pushed = []
            self._waiting = []
        self.hand_back(left)
        if self._wake is not None:
            self._wake.interrupt()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        if self._wake is not None:
            self._wake.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        with self._lock:
            self._db.close()


def _connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), shared by threads
    under the store's lock, waiting up to 30 s for other processes' locks."""
    db = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=30.0,
        cached_statements=_CACHED_STATEMENTS,
    )
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def _switch_to_wal(db: sqlite3.Connection, patience: float = 30.0) -> str:
    """Put the file in WAL mode (it stays so); the journal mode it is in then.

    Switching needs the file to itself and answers "database is locked" at once, not
    after the busy timeout, while another process is opening the same new file: so
    a file already in WAL mode is left alone, and a busy switch is tried again."""
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            mode = str(db.execute("PRAGMA journal_mode").fetchone()[0])
            if mode.lower() == "wal":
                return mode
            return str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            busy = code is not None and (code & 0xFF) in (
                sqlite3.SQLITE_BUSY,
                sqlite3.SQLITE_LOCKED,
            )
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # another process holds the file for its own switch: a moment
        delay = min(delay * 2, 0.1)


def _took(
    d: Decision,
    row: tuple[Any, ...],
    now: float,
    rows: list[tuple[Any, ...]],
    finals: list[tuple[Decision, tuple[Any, ...]]],
) -> None:
    """`d` applied, and its statement returned `row` (event_seq, attempt, then the
    whole job, or the columns of `_SLIM_RETURNING`, when it finished it): its events go
    to `rows`, and `d` with the row after event_seq to `finals`."""
    seq, attempt = row[0] - len(d.events), row[1]
    if len(row) > 2:
        finals.append((d, row[1:]))
    events = d.events
    if d.progress is not None and len(events) == 3 and events[0][0] is EventKind.PROGRESS:
        seq += 1  # the last progress the job reported, then its end in one row
        rows.append((d.job_id, seq, _VALUES[EventKind.PROGRESS], None, events[0][1], now, attempt))
        events = events[1:]
    if (
        len(events) == 2
        and events[1][0] is EventKind.DONE
        and events[0] == _END_STATES.get(d.state)
    ):
        rows.append((d.job_id, seq + 2, _END, None, events[1][1], now, attempt))
        return
    for kind, data in events:
        seq += 1
        rows.append((d.job_id, seq, _VALUES[kind], None, data, now, attempt))


class _FinalRecord:
    """The record of a job ended by a decision, made when first asked for (a waiter's
    `Known.load`), as the row its end left would read: the job's record as claimed,
    in the attempt the decision ended, with what the decision wrote and the columns of
    `_SLIM_RETURNING` after event_seq (`extra`), which others (a cancel request, a
    change of meta) or the job's own flushes may have changed since.

    It keeps what it needs of the decision, not the decision: the change feed holds
    it for thousands of ended jobs, and every object held that long is one more for
    each of the garbage collector's passes to look at."""

    __slots__ = ("_held", "_state", "_result", "_error", "_started", "_finished", "_expires",
                 "_extra")  # fmt: skip

    def __init__(self, held: JobRecord, d: Decision, extra: tuple[Any, ...]) -> None:
        self._held = held.__dict__  # not the record: one object fewer to hold
        self._state = d.state
        self._result = d.result_text()
        self._error = d.error
        self._started = d.started_at
        self._finished = d.finished_at
        self._expires = d.expires_at
        self._extra = extra

    def __call__(self) -> JobRecord:
        attempt, progress, cancel_requested, output_count, meta = self._extra
        values = dict(self._held)
        values.update(
            state=self._state,
            result=loads(self._result),
            error=self._error,
            finished_at=self._finished,
            expires_at=self._expires,
            worker=None,
            lease_until=None,
            attempt=attempt,
            progress=EMPTY_PROGRESS if progress is None else Progress.from_dict(loads(progress)),
            cancel_requested=bool(cancel_requested),
            output_count=output_count,
            meta=loads(meta) or {},
            position=None,
            waiting=None,
        )
        if self._started is not None:
            values["started_at"] = self._started
        return JobRecord.from_fields(values)


def _statement(d: Decision, now: float, slim: bool = False) -> tuple[str, list[Any]]:
    """The guarded UPDATE that applies `d`, with its values (built before the write
    lock is taken: the lock is held for the statements alone). `slim`: a job ended
    whose claimed record the store holds returns `_SLIM_RETURNING` only."""
    queued = d.state is State.QUEUED
    values: list[Any] = [_VALUES[d.state], len(d.events)]
    if d.attempt is not None:
        values.append(d.attempt)
    if d.cancel_requested is not None:
        values.append(int(d.cancel_requested))
    if d.moves:
        values.append(d.result_text())
        if d.error is not None:
            values.append(dumps(d.error.to_dict()))
        if queued:
            values.append(d.run_at if d.run_at is not None else now)
        else:
            values += [d.finished_at, d.expires_at]
    if d.started_at is not None:
        values.append(d.started_at)
    if d.progress is not None:
        values.append(d.progress)
    values.append(d.job_id)
    values += [_VALUES[s] for s in d.expect]
    if d.fence is not None:
        values += [d.fence.worker, d.fence.attempt]
    if d.lease_before is not None:
        values.append(d.lease_before)
    sql = _update_sql(
        len(d.expect),
        d.fence is not None,
        d.lease_before is not None,
        d.attempt is not None,
        d.cancel_requested is not None,
        d.moves,
        queued,
        d.started_at is not None,
        d.state in TERMINAL,
        d.moves and d.error is not None,
        slim,
        d.progress is not None,
    )
    return sql, values


_BULK_JOBS = 200  # jobs per grouped statement (well under SQLite's limit of values)


def _same_shape(
    decisions: Sequence[Decision], statements: Sequence[tuple[str, list[Any]]]
) -> list[list[int]]:
    """Indexes of `decisions` grouped by statement shape, first seen first; a job met
    twice makes every decision its own group (one statement may change a row once)."""
    if len({d.job_id for d in decisions}) != len(decisions):
        return [[k] for k in range(len(decisions))]
    groups: dict[str, list[int]] = {}
    for k, (sql, _) in enumerate(statements):
        groups.setdefault(sql, []).append(k)
    step = _BULK_JOBS
    return [g[i : i + step] for g in groups.values() for i in range(0, len(g), step)]


@functools.lru_cache(maxsize=256)
def _bulk_sql(single: str, count: int) -> tuple[str, int]:
    """`single` (an `_update_sql` statement) for `count` jobs at once: its values come
    from a VALUES list, one row per job, and it returns each changed job's id first.
    Returns the statement and the number of values per job."""
    head, _, returning = single.partition(" RETURNING ")
    width = head.count("?")
    parts = head.split("?")
    body = "".join(part + (f"v.c{i}" if i < width else "") for i, part in enumerate(parts))
    update, _, where = body.partition(" WHERE ")
    columns = ", ".join(f"c{i}" for i in range(width))
    row = "(" + ",".join("?" * width) + ")"
    sql = (
        f"WITH v({columns}) AS (VALUES {','.join([row] * count)}) "
        f"{update} FROM v WHERE {where} RETURNING id, {returning}"
    )
    return sql, width


@functools.lru_cache(maxsize=256)
def _update_sql(
    n_expect: int,
    fenced: bool,
    lease_guard: bool,
    sets_attempt: bool,
    sets_cancel: bool,
    moves: bool,
    queued: bool,
    sets_started: bool,
    terminal: bool,
    sets_error: bool,
    slim: bool = False,
    sets_progress: bool = False,
) -> str:
    """The guarded UPDATE of `_apply_one` for one shape of decision (few shapes exist).
    An error it clears is written as NULL (see `_nulls_written`)."""
    sets = ["state = ?", "event_seq = event_seq + ?"]
    if sets_attempt:
        sets.append("attempt = ?")
    if sets_cancel:
        sets.append("cancel_requested = ?")
    if moves:
        sets += ["result = ?", "error = ?" if sets_error else "error = NULL"]
        sets += ["worker = NULL", "lease_until = NULL"]
        sets += ["run_at = ?"] if queued else ["finished_at = ?", "expires_at = ?"]
    if sets_started:
        sets.append("started_at = ?")
    if sets_progress:
        sets.append("progress = ?")
    where = [f"id = ? AND state IN ({','.join('?' * n_expect)})"]
    if fenced:
        where.append("worker = ? AND attempt = ?")
    if lease_guard:
        where.append("lease_until < ?")
    returning = "event_seq, attempt"
    if terminal:
        returning = _SLIM_RETURNING if slim else f"{returning}, {_COLUMNS}"
    return f"UPDATE jobs SET {', '.join(sets)} WHERE {' AND '.join(where)} RETURNING {returning}"


def _any_ready(db: sqlite3.Connection, marks: str, tasks: Collection[str], now: float) -> bool:
    """Is a job of `tasks` (`marks` placeholders for them) queued and due at `now`?"""
    row = db.execute(
        "SELECT 1 FROM jobs INDEXED BY jobs_queued WHERE state = 'queued' "
        f"AND run_at <= ? AND task IN ({marks}) LIMIT 1",
        (now, *tasks),
    ).fetchone()
    return row is not None


def _count_capped(db: sqlite3.Connection, where: str, args: tuple[Any, ...], cap: int) -> int:
    """How many queued jobs match `where`, counting no further than `cap`."""
    row = db.execute(
        "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY jobs_queued "
        f"WHERE state = 'queued' AND {where} LIMIT ?)",
        (*args, cap),
    ).fetchone()
    return int(row[0])


def _position(db: sqlite3.Connection, row: tuple[Any, ...]) -> int | None:
    """A queued job's place in its queue (priority, then age); None past POSITION_LIMIT."""
    queue, priority, job_id = row[2], row[_PRIORITY], row[_ID]
    ahead = _count_capped(db, "queue = ? AND priority < ?", (queue, priority), POSITION_LIMIT)
    if ahead < POSITION_LIMIT:
        ahead += _count_capped(
            db,
            "queue = ? AND priority = ? AND id < ?",
            (queue, priority, job_id),
            POSITION_LIMIT - ahead,
        )
    return ahead if ahead < POSITION_LIMIT else None


def _positions(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> dict[str, int | None]:
    """The places of a page's queued jobs: the first of each (queue, priority) counted
    from the front, each next one from the one before (a short count between them)."""
    found: dict[str, int | None] = {}
    groups: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[2], row[_PRIORITY]), []).append(row)
    for (queue, priority), members in groups.items():
        members.sort(key=lambda r: r[_ID])
        place = _position(db, members[0])
        found[members[0][_ID]] = place
        for before, row in itertools.pairwise(members):
            if place is not None:
                place += _count_capped(
                    db,
                    "queue = ? AND priority = ? AND id >= ? AND id < ?",
                    (queue, priority, before[_ID], row[_ID]),
                    POSITION_LIMIT,
                )
                place = place if place < POSITION_LIMIT else None
            found[row[_ID]] = place
    return found


def _running_json(attempt: int) -> str:
    """The claim's `state` event (as `dumps({"state": "running", "attempt": N})`)."""
    return f'{{"state":"running","attempt":{int(attempt)}}}'
