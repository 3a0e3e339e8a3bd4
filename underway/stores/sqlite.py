"""The embedded store: one SQLite file in WAL mode, shared safely by many processes.

Writes go through one connection per process, serialised by a lock and wrapped in
`BEGIN IMMEDIATE`, so claims are atomic across processes too. Waiters are woken
in-process by the `ChangeFeed`; changes made by other processes are noticed by
watching `PRAGMA data_version` on the writer connection a few times a second.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .._util import dumps, loads
from ..errors import ConfigurationError
from ..feed import WORK, ChangeFeed
from ..records import ErrorInfo, Event, EventKind, JobRecord, Page, Progress, State
from .base import Finish, Store
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION, statements

_COLUMNS = (
    "id, task, queue, priority, state, params, progress, result, error, cancel_requested, "
    "attempt, max_attempts, created_at, started_at, finished_at, expires_at, run_at, timeout, "
    "keep_for, output_count, owner, idempotency_key, supersede_key, worker, lease_until, meta"
)
_CLAIM_SET = (
    "state = 'running', attempt = attempt + 1, started_at = ?, worker = ?, lease_until = ?, "
    "cancel_requested = 0, event_seq = event_seq + 1"
)
_REQUEUE_SET = (
    "state = 'queued', run_at = ?, error = ?, worker = NULL, lease_until = NULL, "
    "event_seq = event_seq + 1"
)
_STATES = {s.value: s for s in State}
_ID, _PRIORITY, _STARTED = 0, 3, 13  # positions in _COLUMNS


_KINDS = {k.value: k for k in EventKind}


def _row_to_record(row: sqlite3.Row | tuple[Any, ...], position: int | None = None) -> JobRecord:
    (
        id_, task, queue, priority, state, params, progress, result, error, cancel_requested,
        attempt, max_attempts, created_at, started_at, finished_at, expires_at, run_at, timeout,
        keep_for, output_count, owner, idem, supersede, worker, lease_until, meta,
    ) = row  # fmt: skip
    return JobRecord(
        id=id_,
        task=task,
        params=loads(params),
        state=_STATES[state],
        progress=Progress.from_dict(loads(progress)),
        result=loads(result),
        error=ErrorInfo.from_dict(loads(error)),
        cancel_requested=bool(cancel_requested),
        attempt=attempt,
        max_attempts=max_attempts,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        expires_at=expires_at,
        output_count=output_count,
        position=position,
        owner=owner,
        queue=queue,
        priority=priority,
        run_at=run_at,
        timeout=timeout,
        keep_for=keep_for,
        idempotency_key=idem,
        supersede_key=supersede,
        worker=worker,
        lease_until=lease_until,
        meta=loads(meta) or {},
    )


_INSERT = (
    "INSERT INTO jobs (id, task, queue, priority, state, params, max_attempts, "
    "created_at, run_at, timeout, keep_for, owner, idempotency_key, supersede_key, meta, "
    "event_seq) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
)


def _insert_values(record: JobRecord) -> tuple[Any, ...]:
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
    )


class SQLiteStore(Store):
    """`sqlite:///path/to/file.db` (default `./underway.db`); `memory://` uses `:memory:`."""

    def __init__(self, path: str = "underway.db", *, url: str | None = None) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.notifier = ChangeFeed()
        self._memory = path == ":memory:"
        self.poll_interval = 0.05 if not self._memory else 1.0
        self._lock = threading.RLock()
        self._local = threading.local()
        self._closed = threading.Event()
        self._db = self._connect()
        self._migrate()
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._watcher: threading.Thread | None = None
        if not self._memory:
            self._watcher = threading.Thread(
                target=self._watch_other_processes, name="underway-sqlite-watch", daemon=True
            )
            self._watcher.start()

    # -- connections -----------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if not self._memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(parent):
                raise ConfigurationError(f"cannot open job store {self.path}: no folder {parent}")
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            db.execute("PRAGMA busy_timeout = 30000")
            if not self._memory:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
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
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            db.execute("PRAGMA busy_timeout = 30000")
            self._local.db = db
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._lock:
                yield self._db
        else:
            yield self._reader()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

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

    def _watch_other_processes(self) -> None:
        while not self._closed.wait(self.poll_interval):
            try:
                with self._lock:
                    version = self._db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                continue
            if version != self._data_version:
                self._data_version = version
                self.notifier.notify_everything()

    # -- helpers ---------------------------------------------------------------------
    def _events_insert(
        self,
        db: sqlite3.Connection,
        job_id: str,
        items: Sequence[tuple[EventKind, str]],
        now: float,
    ) -> None:
        n_out = sum(1 for kind, _ in items if kind is EventKind.OUTPUT)
        row = db.execute(
            "UPDATE jobs SET event_seq = event_seq + ?, output_count = output_count + ? "
            "WHERE id = ? RETURNING event_seq, output_count",
            (len(items), n_out, job_id),
        ).fetchone()
        if row is None:
            return
        seq = row[0] - len(items)
        idx = row[1] - n_out
        rows = []
        for kind, data in items:
            seq += 1
            if kind is EventKind.OUTPUT:
                rows.append((job_id, seq, kind.value, idx, data, now))
                idx += 1
            else:
                rows.append((job_id, seq, kind.value, None, data, now))
        db.executemany(
            "INSERT INTO events (job_id, seq, kind, idx, data, at) VALUES (?, ?, ?, ?, ?, ?)", rows
        )

    def _terminate(
        self,
        db: sqlite3.Connection,
        job_id: str,
        state: State,
        result: Any,
        error: ErrorInfo | None,
        now: float,
        keep_for: float | None,
        where: str,
        args: tuple[Any, ...],
        returning: str = "",
        started_at: float | None = None,
    ) -> sqlite3.Cursor:
        """Move a job to a terminal state (the triggers add the state and done events)."""
        return db.execute(
            "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, "
            "expires_at = ? + coalesce(?, keep_for), worker = NULL, lease_until = NULL, "
            "started_at = coalesce(started_at, ?), "
            f"event_seq = event_seq + 2 WHERE id = ? AND {where}{returning}",
            (
                state.value,
                dumps(result) if result is not None else None,
                dumps(error.to_dict()) if error else None,
                now,
                now,
                keep_for,
                started_at,
                job_id,
                *args,
            ),
        )

    def _finish_locked(
        self,
        db: sqlite3.Connection,
        job_id: str,
        state: State,
        result: Any,
        error: ErrorInfo | None,
        now: float,
        keep_for: float | None,
        where: str,
        args: tuple[Any, ...],
    ) -> JobRecord | None:
        """`_terminate`, reading the final record back."""
        rows = self._terminate(
            db, job_id, state, result, error, now, keep_for, where, args, f" RETURNING {_COLUMNS}"
        ).fetchall()  # fetch to the end: that completes (commits) the statement
        return _row_to_record(rows[0]) if rows else None

    # -- submission ------------------------------------------------------------------
    def enqueue(self, record: JobRecord) -> tuple[JobRecord, bool]:
        values = _insert_values(record)
        superseded: list[str] = []
        if record.idempotency_key is None and record.supersede_key is None:
            with self._lock:  # one statement: its own transaction
                self._db.execute(_INSERT, values)
        else:
            with self._write() as db:
                if record.idempotency_key is not None:
                    row = db.execute(
                        f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?",
                        (record.idempotency_key,),
                    ).fetchone()
                    if row is not None:
                        return _row_to_record(row), False
                if record.supersede_key is not None:
                    superseded = self._supersede(db, record.supersede_key, record.created_at)
                db.execute(_INSERT, values)
        self.notifier.notify(WORK, *superseded)
        return record, True

    def enqueue_many(self, records: Sequence[JobRecord]) -> None:
        if not records:
            return
        with self._write() as db:
            db.executemany(_INSERT, [_insert_values(r) for r in records])
        self.notifier.notify(WORK)

    def _supersede(self, db: sqlite3.Connection, key: str, now: float) -> list[str]:
        ids = [
            r[0]
            for r in db.execute(
                "SELECT id FROM jobs WHERE supersede_key = ? AND state IN ('queued', 'running')",
                (key,),
            )
        ]
        for job_id in ids:
            self._cancel_locked(db, job_id, now)
        return ids

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            position = None
            if row[4] == "queued":
                position = db.execute(
                    "SELECT count(*) FROM jobs WHERE state = 'queued' AND queue = ? AND "
                    "(priority < ? OR (priority = ? AND id < ?))",
                    (row[2], row[3], row[3], row[0]),
                ).fetchone()[0]
        return _row_to_record(row, position)

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("task", task), ("owner", owner)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if state is not None:
            where.append("state = ?")
            args.append(State(state).value)
        if cursor:
            where.append("id < ?")
            args.append(cursor)
        sql = f"SELECT {_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit + 1)
        with self._read() as db:
            rows = db.execute(sql, args).fetchall()
        records = [_row_to_record(r) for r in rows[:limit]]
        records = [self.get(r.id) or r if r.state is State.QUEUED else r for r in records]
        return Page(jobs=records, next_cursor=records[-1].id if len(rows) > limit else None)

    def count(self, *, state: State | None = None) -> int:
        with self._read() as db:
            if state is None:
                return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])
            return int(
                db.execute("SELECT count(*) FROM jobs WHERE state = ?", (state.value,)).fetchone()[
                    0
                ]
            )

    # -- workers ---------------------------------------------------------------------
    def claim(
        self,
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> list[JobRecord]:
        if not tasks or max_jobs <= 0:
            return []
        if not limits and max_jobs == 1:
            with self._lock:  # one statement, so one atomic transaction
                claimed = self._claim_in(self._db, worker, tasks, lease, now, max_jobs)
        else:
            with self._write() as db:
                claimed = self._claim_any(db, worker, tasks, limits, lease, now, max_jobs)
        if claimed:
            self.notifier.notify(*(r.id for r in claimed))
        return claimed

    def finish_and_claim(
        self,
        finishes: Sequence[Finish],
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> list[JobRecord]:
        if not finishes:
            return self.claim(
                worker=worker, tasks=tasks, limits=limits, lease=lease, now=now, max_jobs=max_jobs
            )
        finished: list[str] = []
        claimed: list[JobRecord] = []
        with self._write() as db:  # one transaction: one commit for the whole batch
            for item in finishes:
                cursor = self._terminate(
                    db,
                    item.job_id,
                    item.state,
                    item.result,
                    item.error,
                    now,
                    item.keep_for,
                    "state = 'running' AND worker = ?",
                    (worker,),
                    started_at=item.started_at,
                )
                if cursor.rowcount:
                    finished.append(item.job_id)
            if tasks and max_jobs > 0:
                claimed = self._claim_any(db, worker, tasks, limits, lease, now, max_jobs)
        if finished or claimed:
            self.notifier.notify(*finished, *(r.id for r in claimed))
        return claimed

    def _claim_any(
        self,
        db: sqlite3.Connection,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
    ) -> list[JobRecord]:
        if limits:
            return self._claim_limited_in(db, worker, tasks, limits, lease, now, max_jobs)
        return self._claim_in(db, worker, tasks, lease, now, max_jobs)

    def _claim_in(
        self,
        db: sqlite3.Connection,
        worker: str,
        tasks: Collection[str],
        lease: float,
        now: float,
        max_jobs: int,
    ) -> list[JobRecord]:
        marks = ",".join("?" * len(tasks))
        rows = db.execute(
            f"UPDATE jobs SET {_CLAIM_SET} WHERE id IN (SELECT id FROM jobs "
            f"INDEXED BY jobs_ready WHERE state = 'queued' AND run_at <= ? "
            f"AND task IN ({marks}) "
            f"ORDER BY priority, id LIMIT ?) RETURNING {_COLUMNS}",
            (now, worker, now + lease, now, *tasks, max_jobs),
        ).fetchall()
        if len(rows) == 1:
            return [_row_to_record(rows[0])]
        rows.sort(key=lambda r: (r[_PRIORITY], r[_ID]))
        return [_row_to_record(r) for r in self._not_started(db, rows)]

    def _not_started(
        self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """All but the first of a batch wait in the worker: they have not started yet."""
        if len(rows) < 2:
            return rows
        waiting = [r[_ID] for r in rows[1:]]
        db.execute(
            f"UPDATE jobs SET started_at = NULL WHERE id IN ({','.join('?' * len(waiting))})",
            waiting,
        )
        return [rows[0], *((*r[:_STARTED], None, *r[_STARTED + 1 :]) for r in rows[1:])]

    def _claim_limited_in(
        self,
        db: sqlite3.Connection,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int,
    ) -> list[JobRecord]:
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
            "SELECT id, task FROM jobs INDEXED BY jobs_ready "
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
                    f"UPDATE jobs SET {_CLAIM_SET} WHERE id = ? RETURNING {_COLUMNS}",
                    (now, worker, now + lease, job_id),
                ).fetchone()
            )
        return [_row_to_record(r) for r in self._not_started(db, claimed)]

    def renew(self, *, worker: str, job_ids: Collection[str], lease: float, now: float) -> set[str]:
        if not job_ids:
            return set()
        ids = list(job_ids)
        marks = ",".join("?" * len(ids))
        with self._write() as db:
            rows = db.execute(
                f"UPDATE jobs SET lease_until = ? WHERE worker = ? AND state = 'running' AND id IN "
                f"({marks}) RETURNING id, cancel_requested",
                (now + lease, worker, *ids),
            ).fetchall()
        return {r[0] for r in rows if r[1]}

    def save_progress(self, job_id: str, progress: Progress, now: float) -> None:
        data = dumps(progress.to_dict())
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND state = 'running'", (data, job_id)
            ).rowcount
            if changed:
                self._events_insert(db, job_id, [(EventKind.PROGRESS, data)], now)
        self.notifier.notify(job_id)

    def append(self, job_id: str, items: Sequence[tuple[EventKind, str]], now: float) -> None:
        if not items:
            return
        with self._write() as db:
            self._events_insert(db, job_id, items, now)
        self.notifier.notify(job_id)

    def finish(
        self,
        job_id: str,
        *,
        worker: str | None,
        state: State,
        result: Any,
        error: ErrorInfo | None,
        now: float,
        keep_for: float,
        started_at: float | None = None,
    ) -> bool:
        where = "state = 'running'" if worker is None else "state = 'running' AND worker = ?"
        args = () if worker is None else (worker,)
        with self._lock:  # one statement: its own transaction
            changed = self._terminate(
                self._db,
                job_id,
                state,
                result,
                error,
                now,
                keep_for,
                where,
                args,
                started_at=started_at,
            ).rowcount
        if changed:
            # Not WORK: the finishing worker claims again by itself; a job of a task with
            # a concurrency limit wakes the others through the worker (see Worker).
            self.notifier.notify(job_id)
        return bool(changed)

    def retry(
        self, job_id: str, *, worker: str, run_at: float, error: ErrorInfo, now: float
    ) -> bool:
        with self._lock:
            changed = self._db.execute(
                f"UPDATE jobs SET {_REQUEUE_SET} WHERE id = ? AND state = 'running' AND worker = ?",
                (run_at, dumps(error.to_dict()), job_id, worker),
            ).rowcount
        if changed:
            self.notifier.notify(job_id, WORK)
        return bool(changed)

    def release(self, job_ids: Collection[str], *, worker: str, now: float) -> None:
        ids = list(job_ids)
        if not ids:
            return
        with self._lock:  # one statement: its own transaction
            self._db.execute(
                "UPDATE jobs SET state = 'queued', run_at = ?, worker = NULL, "
                "lease_until = NULL, started_at = NULL, attempt = max(attempt - 1, 0), "
                "event_seq = event_seq + 1 WHERE state = 'running' AND worker = ? "
                f"AND id IN ({','.join('?' * len(ids))})",
                (now, worker, *ids),
            )
        self.notifier.notify(WORK, *ids)

    # -- callers ---------------------------------------------------------------------
    def _cancel_locked(self, db: sqlite3.Connection, job_id: str, now: float) -> JobRecord | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        record = _row_to_record(row)
        if record.state is State.QUEUED:
            error = ErrorInfo(type="Cancelled", message="cancelled before it started")
            return self._finish_locked(
                db, job_id, State.CANCELLED, None, error, now, None, "state = 'queued'", ()
            )
        if record.state is State.RUNNING and not record.cancel_requested:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            self._events_insert(db, job_id, [(EventKind.LOG, dumps("cancel requested"))], now)
            return record.evolve(cancel_requested=True)
        return record

    def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        with self._write() as db:
            record = self._cancel_locked(db, job_id, now)
        if record is not None:
            self.notifier.notify(job_id, WORK)
        return record

    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        with self._lock:  # one statement: its own transaction
            changed = self._db.execute(
                "UPDATE jobs SET meta = json_patch(coalesce(meta, '{}'), ?) WHERE id = ?",
                (dumps(dict(changes)), job_id),
            ).rowcount
        if changed:
            self.notifier.notify(job_id)
        return bool(changed)

    def delete(self, job_id: str) -> bool:
        with self._write() as db:
            gone = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            db.execute("DELETE FROM events WHERE job_id = ?", (job_id,))
        if gone:
            self.notifier.notify(job_id)
            self.notifier.forget(job_id)
        return bool(gone)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as db:
            rows = db.execute(
                "SELECT seq, kind, idx, data, at FROM events WHERE job_id = ? AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
        out = []
        for seq, kind, idx, data, at in rows:
            value = loads(data)
            if idx is not None:
                value = {"index": idx, "item": value}
            out.append(Event(seq=seq, kind=_KINDS[kind], data=value, at=at))
        return out

    def output(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Any]:
        with self._read() as db:
            rows = db.execute(
                "SELECT data FROM events WHERE job_id = ? AND idx >= ? ORDER BY idx LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
        return [loads(r[0]) for r in rows]

    # -- housekeeping ----------------------------------------------------------------
    def recover_lost(self, now: float) -> list[JobRecord]:
        recovered: list[JobRecord] = []
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state = 'running' AND lease_until < ?", (now,)
            ).fetchall()
            for row in rows:
                record = _row_to_record(row)
                lost = ErrorInfo(
                    type="WorkerLost",
                    message=f"worker {record.worker} stopped renewing its lease",
                )
                if record.cancel_requested:
                    done = self._finish_locked(
                        db, record.id, State.CANCELLED, None, lost, now, None,
                        "state = 'running'", (),
                    )  # fmt: skip
                elif record.started_at is None:  # claimed, never started: not an attempt
                    db.execute(
                        f"UPDATE jobs SET {_REQUEUE_SET}, attempt = max(attempt - 1, 0) "
                        "WHERE id = ?",
                        (now, dumps(lost.to_dict()), record.id),
                    )
                    done = record.evolve(
                        state=State.QUEUED,
                        worker=None,
                        error=lost,
                        attempt=max(0, record.attempt - 1),
                    )
                elif record.attempt < record.max_attempts:
                    db.execute(
                        f"UPDATE jobs SET {_REQUEUE_SET} WHERE id = ?",
                        (now, dumps(lost.to_dict()), record.id),
                    )
                    done = record.evolve(state=State.QUEUED, worker=None, error=lost)
                else:
                    done = self._finish_locked(
                        db, record.id, State.FAILED, None, lost, now, None, "state = 'running'", ()
                    )
                if done is not None:
                    recovered.append(done)
        if recovered:
            self.notifier.notify(WORK, *(r.id for r in recovered))
        return recovered

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
        return self.notifier.wait(WORK, seen, timeout)

    def subscribe(self, job_id: str, fn: Callable[[], None]) -> Callable[[], None]:
        return self.notifier.subscribe(job_id, fn)

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        with self._lock:
            self._db.close()
