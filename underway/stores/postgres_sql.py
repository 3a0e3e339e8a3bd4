"""The PostgreSQL store's statements and row conversions (`postgres.PostgresStore`).

Each change of a job is one statement: a CTE that updates the job under its guard,
writes the events it carries and announces it with `pg_notify`, so the store's
round trips stay few. Table names come from `postgres_schema`.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import weakref
import zlib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Protocol, cast

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

from .._util import dumps
from ..records import POSITION_LIMIT, TERMINAL, Decision, EventKind, Fence, JobRecord, State
from . import postgres_schema as schema
from .base import ROW_COLUMNS, row_record

NOTIFY_IDS = 200  # job ids per notification (a payload holds at most 8000 bytes)
DOC_BYTES = 7800  # a final row larger than this is not sent with its notification
PUSH_BYTES = 4000  # a job whose parameters and names take more is not claimed at submission
STATS_MIN_PAGES = 4  # a table this small is read whole as fast as through an index
IDLE_FRESH = 2.0  # seconds an idle worker's word holds (idle slots claim every 0.5 s)

COLUMN_NAMES = ROW_COLUMNS
COLUMNS = ", ".join(COLUMN_NAMES)


# The caller's names, which may hold any character: the owner, and the idempotency
# and supersede keys (the engine's keys always hold a NUL, between the owner and the
# caller's key). PostgreSQL's text holds no NUL, and libpq cuts a string at one, so
# the jobs table keeps them, and every lookup by them is made, with NUL written `\0`
# and a backslash `\\` (`stored_name`); `_read_name` reads them back.
# A name with neither is stored as it is, so a row written before names were escaped
# reads back unchanged, unless its name holds a backslash: `a\b` then reads `ab`
# (`a\0b` as a NUL between `a` and `b`), and a lookup by `a\b` (an owner's listing,
# a taken key) misses the row. Such names are rare and old rows go with their
# `keep_for`; rewriting them would take a scan of the whole table, and could not
# tell them from keys escaped since.
_NAMES = tuple(COLUMN_NAMES.index(c) for c in ("owner", "idempotency_key", "supersede_key"))
_ESCAPED = re.compile(r"\\(.)", re.S)


def stored_name(name: str | None) -> str | None:
    """An owner, idempotency or supersede key as the jobs table keeps it (see
    `_NAMES`): NUL is written `\\0`, and a backslash `\\\\`."""
    if name is None:
        return None
    return name.replace("\\", "\\\\").replace("\x00", "\\0")


def _read_name(text: str | None) -> str | None:
    """The name `stored_name` wrote as `text`."""
    if text is None or "\\" not in text:
        return text
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), text)


def place(ahead: int | None) -> int | None:
    """A place from a count of the jobs ahead, which stops at POSITION_LIMIT: None
    past it (the job says "more than POSITION_LIMIT jobs ahead")."""
    return None if ahead is None or ahead >= POSITION_LIMIT else ahead


def row_to_record(row: Sequence[Any], position: int | None = None) -> JobRecord:
    """The record of a row that starts with `COLUMN_NAMES` (claims add columns after)."""
    cells = row[: len(COLUMN_NAMES)]
    for i in _NAMES:
        if cells[i] is not None and "\\" in cells[i]:
            names = list(cells)
            for j in _NAMES:
                names[j] = _read_name(cells[j])
            return row_record(names, position)
    return row_record(cells, position)


def doc_to_record(doc: str) -> JobRecord:
    """The record of a final row sent as JSON (see `Statements.apply`)."""
    return row_to_record(json.loads(doc))


def job_values(record: JobRecord) -> dict[str, Any]:
    """The new job's columns, by the names `Statements.submit` binds."""
    return {
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "priority": record.priority,
        "params": dumps(record.params),
        "max_attempts": record.max_attempts,
        "created_at": record.created_at,
        "run_at": record.run_at,
        "timeout": record.timeout,
        "keep_for": record.keep_for,
        "owner": stored_name(record.owner),
        "idempotency_key": stored_name(record.idempotency_key),
        "supersede_key": stored_name(record.supersede_key),
        "meta": dumps(record.meta) if record.meta else None,
    }


def push_doc(values: dict[str, Any]) -> tuple[str, str]:
    """The row of a job that a submission claims for an idle worker (see
    `Statements.submit`), as a JSON array of `COLUMN_NAMES` (JSON columns as text),
    from `job_values`: all of it but its `worker` and `lease_until`, which the
    statement puts between the two parts."""
    created = values["created_at"]
    head = [
        values["id"], values["task"], values["queue"], values["priority"], "running",
        values["params"], None, None, None, False, 1, values["max_attempts"], created,
        created, None, None, values["run_at"], values["timeout"], values["keep_for"], 0,
        values["owner"], values["idempotency_key"], values["supersede_key"],
    ]  # fmt: skip
    return _compact(head)[:-1] + ",", "," + _compact(values["meta"]) + "]"


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def text_array(values: Iterable[str]) -> str:
    """A `text[]` literal of `values`: a plain string is far cheaper to send than a
    list the driver adapts item by item (the statements cast it with `::text[]`)."""
    return "{" + ",".join(_quoted(v) for v in values) + "}"


def _quoted(value: str) -> str:
    """`value` as an element of an array literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def array_literal(values: Iterable[str | float | None]) -> str:
    """An array literal of strings, numbers and NULLs (see `text_array`)."""
    return (
        "{"
        + ",".join(
            "NULL" if v is None else _quoted(v) if isinstance(v, str) else repr(v) for v in values
        )
        + "}"
    )


@lru_cache(maxsize=64)
def event_arrays(events: tuple[tuple[EventKind, str], ...]) -> tuple[int, str, str]:
    """A new job's events as the submission binds them: how many, their kinds and
    their data (`text[]` literals); the same few recur (`lifecycle.submitted`)."""
    return (
        len(events),
        text_array(kind.value for kind, _ in events),
        text_array(data for _, data in events),
    )


@lru_cache(maxsize=256)
def cached_text_array(values: tuple[str, ...]) -> str:
    """`text_array` of a few names that recur (states, tasks)."""
    return text_array(values)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@lru_cache(maxsize=256)
def native(query: str) -> tuple[str, tuple[str, ...]]:
    """`query` with its `%(name)s` placeholders turned into PostgreSQL's own `$n`, and
    the names in the order of their numbers (the query holds no other `%`)."""
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${numbers.setdefault(match.group(1), len(numbers) + 1)}"

    return _PLACEHOLDER.sub(number, query), tuple(numbers)


class Result(Protocol):
    """What a statement run gives: a cursor, or rows fetched already (`Rows`)."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Rows:
    """Rows fetched already (`fetch`), read as a cursor's would be."""

    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


def run(
    conn: psycopg.Connection[Any], query: str, values: dict[str, Any], *, direct: bool = False
) -> Result:
    """Execute `query` with named `values`, its placeholders converted once per query
    (`native`): psycopg converts them at every call for a statement longer than 4,096
    characters (it keeps only shorter ones), as a claim that applies a decision is.
    `direct`: the statement runs alone, outside any pipeline, and its rows are read at
    once (`fetch`)."""
    if direct:
        return Rows(fetch(conn, query, values))
    text, names = native(query)
    cursor: psycopg.RawCursor[Any] = psycopg.RawCursor(conn)
    return cursor.execute(text, [values[name] for name in names])


# By connection: the name under which each (statement, parameter types) is prepared
# on it, and a loader of its results. A new connection (after a lost one) prepares
# its statements again.
class _Prepared:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.names: dict[tuple[str, tuple[int, ...]], bytes] = {}
        # None: not in UTF-8, so its statements take `run`'s way.
        self.loader = Transformer(conn) if conn.info.encoding == "utf-8" else None


_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], _Prepared]
_prepared = weakref.WeakKeyDictionary()
_names = itertools.count()


_Bound = tuple[tuple[str, tuple[int, ...]], str, list[bytes | None]]


def _bind(query: str, values: dict[str, Any]) -> _Bound | None:
    """`query`'s key among a connection's prepared statements (the query and its
    parameter types), its text with `$n` placeholders and its parameters as text;
    None when a value is of a type not sent directly.

    Parameters are sent as text, their type by the value's: an int as bigint, a float
    as double precision, a string or None as `unknown` (for the server to infer from
    the statement, as psycopg sends them). Each set of types is a statement of its
    own, as psycopg prepares them. A string with a NUL is not sent: libpq would cut
    it there (text holds none), where psycopg raises DataError."""
    text, names = native(query)
    oids: list[int] = []
    encoded: list[bytes | None] = []
    for param in names:
        value = values[param]
        kind = type(value)
        if kind is str:
            text_value = value.encode()
            if b"\x00" in text_value:
                return None
            oids.append(0)
            encoded.append(text_value)
        elif value is None:
            oids.append(0)
            encoded.append(None)
        elif kind is bool:
            oids.append(16)
            encoded.append(b"t" if value else b"f")
        elif kind is float or kind is int:
            oids.append(701 if kind is float else 20)
            encoded.append(repr(value).encode())  # 'inf' and 'nan' are understood
        else:
            return None
    return (query, tuple(oids)), text, encoded


def _session(conn: psycopg.Connection[Any]) -> _Prepared:
    prepared = _prepared.get(conn)
    if prepared is None:
        prepared = _prepared[conn] = _Prepared(conn)
    return prepared


def _forgotten(result: pq.abc.PGresult) -> bool:
    """The server does not know a prepared statement (after DISCARD ALL)."""
    return (
        result.status == pq.ExecStatus.FATAL_ERROR
        and result.error_field(pq.DiagnosticField.SQLSTATE) == b"26000"
    )


def _rows(loader: Any, result: pq.abc.PGresult) -> list[Any]:
    """The rows of `result`, loaded as a cursor loads them (`loader`: a Transformer)."""
    loader.set_pgresult(result)
    rows: list[Any] = loader.load_rows(0, result.ntuples, tuple)
    loader.set_pgresult(None)
    return rows


def fetch(conn: psycopg.Connection[Any], query: str, values: dict[str, Any]) -> list[Any]:
    """The rows of `query` run at once with named `values`, outside any pipeline: as
    `run(...).fetchall()`, through libpq directly. The statement is prepared on the
    connection at its first use there and then only executed: psycopg's cursor
    machinery around an execution costs as much CPU as the store's own work for a
    submission (~90 us a statement on a slow machine). Values of other types than
    `_bind` sends, or a connection not in UTF-8, take `run`'s way."""
    bound = _bind(query, values)
    prepared = _session(conn)
    loader, known = prepared.loader, prepared.names
    if bound is None or loader is None:
        return run(conn, query, values).fetchall()
    key, text, encoded = bound
    pgconn = conn.pgconn
    with conn.lock:
        for attempt in (0, 1):
            name = known.get(key)
            if name is None:
                name = f"_uw{next(_names)}".encode()
                result = pgconn.prepare(name, text.encode(), key[1])
                _check(pgconn, result)
                known[key] = name
            # None is NULL, as in psycopg's own calls (the stub leaves it out).
            result = pgconn.exec_prepared(name, cast("list[bytes]", encoded))
            if attempt == 0 and _forgotten(result):
                known.clear()  # prepare them again
                continue
            break
        _check(pgconn, result)
        return _rows(loader, result)


def fetch_many(
    conn: psycopg.Connection[Any], statements: Sequence[tuple[str, dict[str, Any]]]
) -> list[list[Any]]:
    """The rows of each of `statements` (query, named values), sent together in
    libpq's pipeline mode with one sync at the end: one round trip, and one implicit
    transaction (a failure in any of them undoes them all and raises its error).
    What `fetch` is to `run`, for a psycopg pipeline of `run`s, whose machinery costs
    ~100 us of client CPU a statement on a slow machine; the statements are prepared
    as `fetch` prepares them (with the others, in the same round trip)."""
    prepared = _session(conn)
    loader, known = prepared.loader, prepared.names
    bound = [_bind(query, values) for query, values in statements]
    if loader is None or any(b is None for b in bound):
        with conn.pipeline():
            cursors = [run(conn, query, values) for query, values in statements]
        return [cursor.fetchall() for cursor in cursors]
    pgconn = conn.pgconn
    with conn.lock:
        for attempt in (0, 1):
            results = _pipeline(conn, known, cast("list[_Bound]", bound))
            failed = next((r for r in results if r.status == pq.ExecStatus.FATAL_ERROR), None)
            if failed is not None and attempt == 0 and _forgotten(failed):
                known.clear()  # nothing ran: prepare them again
                continue
            break
        if failed is not None:
            _check(pgconn, failed)
        return [_rows(loader, r) for r in results]


def _pipeline(
    conn: psycopg.Connection[Any],
    known: dict[tuple[str, tuple[int, ...]], bytes],
    bound: list[_Bound],
) -> list[pq.abc.PGresult]:
    """Send `bound` statements (each prepared first where the connection lacks it)
    in pipeline mode with a sync; their results in order, or the first failure's
    first (a preparation's, or a statement's). The connection is closed when this
    fails midway: its state is not known then."""
    pgconn = conn.pgconn
    new: dict[tuple[str, tuple[int, ...]], bytes] = {}
    preparations: list[bool] = []  # whether each command sent is a preparation
    done = False
    try:
        pgconn.enter_pipeline_mode()
        for key, text, encoded in bound:
            name = known.get(key) or new.get(key)
            if name is None:
                name = new[key] = f"_uw{next(_names)}".encode()
                pgconn.send_prepare(name, text.encode(), key[1])
                preparations.append(True)
            pgconn.send_query_prepared(name, cast("list[bytes]", encoded))
            preparations.append(False)
        pgconn.pipeline_sync()
        results = _exchange(pgconn)
        pgconn.exit_pipeline_mode()
        done = True
    except OSError as exc:
        raise psycopg.OperationalError(f"the connection to the server failed: {exc}") from None
    finally:
        if not done:
            conn.close()
    failed = [r for r in results if r.status == pq.ExecStatus.FATAL_ERROR]
    if failed:
        return failed[:1]
    known.update(new)
    return [r for r, prep in zip(results, preparations, strict=True) if not prep]


def _exchange(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Flush what the pipeline sent and read its results up to the sync, reading
    while writing (a server blocked on a full socket stops reading; libpq also reads
    when a send would block)."""
    fd = pgconn.socket
    while pgconn.flush():
        readable, _, _ = select.select([fd], [fd], [])
        if readable:
            pgconn.consume_input()
    results: list[pq.abc.PGresult] = []
    while True:
        if pgconn.is_busy():
            select.select([fd], [], [])
            pgconn.consume_input()
            continue
        result = pgconn.get_result()
        if result is None:
            continue  # between two statements' results
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            return results
        results.append(result)


def _check(pgconn: pq.abc.PGconn, result: pq.abc.PGresult) -> None:
    """Raise what psycopg would for a failed `result`: a lost connection is an
    OperationalError, an error of the statement its own class."""
    if result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        return
    if pgconn.status != pq.ConnStatus.OK:
        message = pgconn.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(message or "the connection to the server was lost")
    raise psycopg.errors.error_from_result(result, encoding="utf-8")


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - (1 << 31)


class Statements:
    """The store's statements, with its schema's names filled in."""

    def __init__(self, schema_name: str) -> None:
        s = schema.quote(schema_name)
        j, e = f"{s}.underway_jobs", f"{s}.underway_events"
        self.jobs, self.events = j, e
        self.workers = f"{s}.underway_workers"
        self.idle = idle = f"{s}.underway_idle"
        returning = ", ".join(f"j.{c}" for c in COLUMN_NAMES)
        # A job's change is announced as `origin|state|ids` (see `postgres_listener`);
        # an unknown state is left empty. Only while some process listens: each holds
        # a shared advisory lock per channel (`jobs_key`, `ends_key`) while it does, so
        # a change that gets the lock for itself is heard by nobody and announced to
        # nobody (PostgreSQL wakes every listening connection for every notification).
        # A process that starts listening waits for such a change to commit, then
        # reads: it misses nothing.
        notify_running = (
            "CASE WHEN NOT pg_try_advisory_xact_lock(%(jobs_key)s) THEN "
            "pg_notify(%(jobs_channel)s, %(origin)s || '|running|' || u.id) END"
        )
        notify_jobs = (
            "CASE WHEN NOT pg_try_advisory_xact_lock(%(jobs_key)s) THEN "
            "pg_notify(%(jobs_channel)s, %(origin)s || '||' || u.id) END"
        )
        # A submission in one statement (its own transaction): the job, its events
        # and the news of work; no row when the idempotency key is taken. Nobody
        # elsewhere can wait on the new job yet, so it needs no announcement of its own.
        # The news goes to one worker process that said it has an idle slot for the
        # task (the one with most idle slots, then idle longest; one slot of its word
        # is used up), on its own channel, or to all when none did: one new job does
        # not wake every idle process. A process whose slots all got busy meanwhile
        # passes it on to all (`PostgresStore`).
        # When the word names its worker (`push`), the statement also claims the job
        # for that worker, as its claim would (attempt 1, its lease, the `running`
        # event), and the news carries the job's row: the worker runs it without a
        # claim of its own. Only while the process's listening connection holds the
        # word's lock (so the news reaches it), for a task it takes without a
        # concurrency limit, and with no due job of its tasks queued ahead. The row
        # is as `json_build_array` would make it, from the caller's parts
        # (`push_doc`) and the worker and lease the word gave: the server builds no
        # JSON and returns no row of its own.
        # Each submission comes in variants (`submission`): its first events as arrays
        # (any number) or, for the one event every new job has, as plain values; and
        # with the idempotency key's ON CONFLICT only when the job has a key (a NULL
        # key conflicts with nothing). The plain forms spare the server ~8 us a submission.
        self._submissions: dict[tuple[bool, bool], tuple[str, str]] = {}
        for keyed in (False, True):
            for one in (False, True):
                self._submissions[keyed, one] = self._submission(j, e, idle, keyed, one)
        self.submit, self.submit_queued = self._submissions[True, False]
        self.insert_many = f"""
            WITH new AS (
                INSERT INTO {j} (id, task, queue, priority, state, params, max_attempts,
                    created_at, run_at, timeout, keep_for, owner, meta, event_seq)
                SELECT id, task, queue, priority, 'queued', params, max_attempts, created_at,
                    run_at, timeout, keep_for, owner, meta, %(n)s
                FROM unnest(%(ids)s::text[], %(tasks)s::text[], %(queues)s::text[],
                    %(priorities)s::int[], %(params)s::text[], %(max_attempts)s::int[],
                    %(created)s::float8[], %(run_at)s::float8[], %(timeouts)s::float8[],
                    %(keep_for)s::float8[], %(owners)s::text[], %(metas)s::text[])
                    AS r(id, task, queue, priority, params, max_attempts, created_at, run_at,
                         timeout, keep_for, owner, meta)
                RETURNING id, created_at
            )
            INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
            SELECT new.id, x.n, x.kind, NULL, x.data, new.created_at, 0
            FROM new, unnest(%(kinds)s::text[], %(datas)s::text[])
                WITH ORDINALITY AS x(kind, data, n)"""
        # A queued job's place: the queued jobs ahead of it in its queue, counted no
        # further than POSITION_LIMIT (see `place`), so that a read of a job deep
        # in a long queue stays cheap.
        self.get = f"""
            SELECT {returning}, CASE WHEN j.state = 'queued' THEN (
                SELECT count(*) FROM (SELECT 1 FROM {j} q WHERE q.state = 'queued'
                AND q.queue = j.queue
                AND (q.priority < j.priority OR (q.priority = j.priority AND q.id < j.id))
                LIMIT {POSITION_LIMIT}) AS ahead
            ) END FROM {j} j WHERE j.id = %(id)s"""
        # The queued jobs of a queue and priority from `after` (included) to `id`: how
        # much further back a job of a page is than the one before it (`list_jobs`).
        self.between = f"""
            SELECT count(*) FROM (SELECT 1 FROM {j} WHERE state = 'queued'
                AND queue = %(queue)s AND priority = %(priority)s
                AND id >= %(after)s AND id < %(id)s LIMIT {POSITION_LIMIT}) AS gap"""
        # One decision (see `Decision`): guarded, fenced, with its events; announced
        # with its new state and, when the job ends, its final row (`doc`, a JSON
        # array of COLUMN_NAMES) if it fits in a notification, so that waiters need
        # not read it back. The row comes back to the caller too.
        self.apply_head = f"""
            u AS (
                UPDATE {j} SET
                    state = %(state)s,
                    attempt = coalesce(%(attempt)s::int, attempt),
                    cancel_requested = coalesce(%(cancel)s::bool, cancel_requested),
                    result = CASE WHEN %(moves)s THEN %(result)s::text ELSE result END,
                    error = CASE WHEN %(moves)s THEN %(error)s::text ELSE error END,
                    worker = CASE WHEN %(moves)s THEN NULL ELSE worker END,
                    lease_until = CASE WHEN %(moves)s THEN NULL ELSE lease_until END,
                    run_at = CASE WHEN %(queued)s THEN %(run_at)s::float8 ELSE run_at END,
                    finished_at = CASE WHEN %(ends)s THEN %(finished_at)s::float8
                                  ELSE finished_at END,
                    expires_at = CASE WHEN %(ends)s THEN %(expires_at)s::float8
                                 ELSE expires_at END,
                    started_at = coalesce(%(started_at)s::float8, started_at),
                    progress = coalesce(%(progress)s::text, progress),
                    event_seq = event_seq + %(n)s::int
                WHERE id = %(id)s AND state = ANY(%(expect)s::text[])
                    AND (%(fence_worker)s::text IS NULL
                         OR (worker = %(fence_worker)s::text AND attempt = %(fence_attempt)s::int))
                    AND (%(lease_before)s::float8 IS NULL OR lease_until < %(lease_before)s::float8)
                RETURNING id, task, event_seq, attempt,
                    CASE WHEN %(ends)s THEN json_build_array({COLUMNS})::text END AS doc
            ), uev AS (
                INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
                SELECT u.id, u.event_seq - %(n)s::int + x.n::int, x.kind, NULL, x.data,
                    %(now)s::float8, u.attempt
                FROM u, unnest(%(kinds)s::text[], %(datas)s::text[])
                    WITH ORDINALITY AS x(kind, data, n)
            )"""
        self.apply_tail = f"""
            SELECT CASE WHEN NOT pg_try_advisory_xact_lock(
                    CASE WHEN %(ends)s THEN %(ends_key)s::bigint ELSE %(jobs_key)s::bigint END)
                THEN pg_notify(CASE WHEN %(ends)s THEN %(ends_channel)s ELSE %(jobs_channel)s END,
                    %(origin)s || '|' || %(state)s || '|' || u.id
                    || CASE WHEN octet_length(u.doc) <= {DOC_BYTES} THEN '|' || u.doc
                       ELSE '' END) END,
                CASE WHEN %(queued)s
                    OR (%(frees)s AND (%(any_room)s OR u.task = ANY(%(limited)s::text[])))
                THEN pg_notify(%(work_channel)s, %(origin)s) END,
                u.doc
            FROM u"""
        self.apply = f"WITH {self.apply_head} {self.apply_tail}"
        # The ends of several jobs in one statement (`end_values`): each a job that
        # ran under its fence and ended (succeeded, failed or cancelled) with its two
        # events, as a worker writes them for a batch of short jobs. Each applies by
        # its own guard, as `apply` would. It first locks, in id order, the rows of
        # every decision of its transaction (`b_lock`: these ends and the decisions
        # whose statements follow it), as a series of `apply` statements sorted by job
        # locks them: two transactions never wait on each other's rows. A row back for
        # each end that applied.
        self.apply_ends = f"""
            WITH b AS (
                SELECT * FROM unnest(%(b_ids)s::text[], %(b_states)s::text[],
                    %(b_results)s::text[], %(b_errors)s::text[], %(b_workers)s::text[],
                    %(b_attempts)s::int[], %(b_finished)s::float8[], %(b_expires)s::float8[],
                    %(b_started)s::float8[], %(b_kinds1)s::text[], %(b_datas1)s::text[],
                    %(b_kinds2)s::text[], %(b_datas2)s::text[])
                    AS b(b_id, b_state, b_result, b_error, b_worker, b_attempt, b_finished,
                         b_expires, b_started, b_kind1, b_data1, b_kind2, b_data2)
            ), held AS (
                SELECT j.id AS h_id FROM {j} j WHERE j.id = ANY(%(b_lock)s::text[])
                ORDER BY j.id FOR UPDATE OF j
            ), u AS (
                UPDATE {j} SET state = b_state, result = b_result, error = b_error,
                    worker = NULL, lease_until = NULL, finished_at = b_finished,
                    expires_at = b_expires, started_at = coalesce(b_started, started_at),
                    event_seq = event_seq + 2
                FROM held JOIN b ON b.b_id = held.h_id
                WHERE id = held.h_id AND state = 'running' AND worker = b_worker
                    AND attempt = b_attempt
                RETURNING id, task, state, event_seq, attempt, b_kind1, b_data1, b_kind2,
                    b_data2, json_build_array({COLUMNS})::text AS doc
            ), uev AS (
                INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
                SELECT id, event_seq - 1, b_kind1, NULL::int, b_data1, %(now)s::float8, attempt
                FROM u
                UNION ALL
                SELECT id, event_seq, b_kind2, NULL, b_data2, %(now)s::float8, attempt FROM u
            )
            SELECT u.id,
                CASE WHEN NOT pg_try_advisory_xact_lock(%(ends_key)s::bigint)
                THEN pg_notify(%(ends_channel)s, %(origin)s || '|' || u.state || '|' || u.id
                    || CASE WHEN octet_length(u.doc) <= {DOC_BYTES} THEN '|' || u.doc
                       ELSE '' END) END,
                CASE WHEN %(any_room)s OR u.task = ANY(%(limited)s::text[])
                THEN pg_notify(%(work_channel)s, %(origin)s) END,
                u.doc
            FROM u"""
        # A claim that also applies one decision (`apply_head`, announced by `un`),
        # in one statement: at least one row, whose last two columns say whether the
        # decision applied and its `doc`; the claimed jobs' columns are NULL when
        # there are none.
        self.claim_select_after_apply = """
            SELECT c.*, (SELECT count(*) FROM note), (SELECT count(*) FROM un),
                (SELECT doc FROM un)
            FROM (SELECT 1) AS one LEFT JOIN c ON true ORDER BY c.priority, c.id"""
        self.claim_set = f"""
            UPDATE {j} SET state = 'running', attempt = attempt + 1,
                started_at = %(now)s, worker = %(worker)s, lease_until = %(lease_until)s,
                output_count = 0, progress = NULL, event_seq = event_seq + 1
            FROM picked WHERE id = pick
            RETURNING {COLUMNS}, event_seq"""
        # The word of a process whose slot found nothing to claim (or claimed
        # nothing: see `apply_idle`), renewed with each such claim.
        idle_word = f"""
            idle AS (
                INSERT INTO {idle} (channel, tasks, at, slots, worker, lease, push_tasks,
                    push_key)
                SELECT %(idle_channel)s, %(idle_tasks)s::text[], extract(epoch FROM now()),
                    %(idle_slots)s::int, %(push_worker)s::text, %(push_lease)s::float8,
                    %(push_tasks)s::text[], %(push_key)s::bigint
                WHERE %(idle_channel)s::text IS NOT NULL AND {{found_nothing}}
                ON CONFLICT (channel) DO UPDATE SET tasks = EXCLUDED.tasks, at = EXCLUDED.at,
                    slots = EXCLUDED.slots, worker = EXCLUDED.worker, lease = EXCLUDED.lease,
                    push_tasks = EXCLUDED.push_tasks, push_key = EXCLUDED.push_key
            )"""
        # A worker's decision written without a claim (its slot found the queue
        # drained and waits for work after it): the decision, and the process's word
        # renewed, as a claim that found nothing renews it; one statement.
        self.apply_idle = (
            f"WITH {self.apply_head}, {idle_word.format(found_nothing='true')} {self.apply_tail}"
        )
        self.claim_tail = f"""
            ev AS (
                INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
                SELECT id, event_seq, 'state', NULL,
                    '{{"state":"running","attempt":' || attempt || '}}', %(now)s, attempt
                FROM c
            ), note AS (
                SELECT pg_notify(%(jobs_channel)s, %(origin)s || '|running|' || string_agg(id, ','))
                FROM (SELECT id, (row_number() OVER ()) / {NOTIFY_IDS} AS g FROM c) s
                WHERE (SELECT NOT pg_try_advisory_xact_lock(%(jobs_key)s)) GROUP BY g
            ), {idle_word.format(found_nothing="NOT EXISTS (SELECT 1 FROM c)")}"""
        self.claim_select = """
            SELECT c.*, (SELECT count(*) FROM note) FROM c ORDER BY c.priority, c.id"""
        self.pick = f"""
            (SELECT id, priority FROM {j} WHERE state = 'queued' AND run_at <= %(now)s
             AND task = ANY(%({{tasks}})s::text[]) ORDER BY priority, id
             LIMIT {{room:d}} FOR UPDATE SKIP LOCKED)"""
        # Idle processes renew their word at each claim that finds nothing (every
        # idle poll at least) and at each end written without a claim; a word older
        # than this is of a process that is gone.
        self.purge_idle = f"""
            DELETE FROM {idle} WHERE at < extract(epoch FROM now()) - {30 * IDLE_FRESH}"""
        # The statements run as prepared statements, each planned once for all its
        # runs (a generic plan, kept until the table's statistics change): a plan
        # made while the table was empty or tiny scans it whole, which costs more
        # with every job it holds. The table is analyzed again (which has every
        # session plan afresh) when it has grown to twice the pages its statistics
        # say, or changed by half since. Never while it is tiny and never analyzed:
        # PostgreSQL then plans for 10 pages at least, the plans it needs later.
        # The count of changes comes from its function, not from the view
        # `pg_stat_user_tables` (built on every table's statistics): planning that
        # view made each look cost 0.8-2.7 ms of the server's time.
        self.stale_stats = f"""
            SELECT pg_relation_size(c.oid) / current_setting('block_size')::int
                    > 2 * greatest(c.relpages, {STATS_MIN_PAGES})
                OR pg_stat_get_mod_since_analyze(c.oid) > 1000 + greatest(c.reltuples, 0) / 2
            FROM pg_class c WHERE c.oid = %s::regclass"""
        self.running_counts = f"""
            SELECT task, count(*) FROM {j} WHERE state = 'running' AND task = ANY(%s::text[])
            GROUP BY task"""
        # Rows are locked in the order of their ids, as a batch's decisions lock them,
        # so that a renewal and a batch of the same worker never deadlock.
        self.renew = f"""
            UPDATE {j} AS j SET lease_until = %(until)s
            FROM (
                SELECT r.id FROM {j} AS r
                JOIN unnest(%(ids)s::text[], %(attempts)s::int[]) AS f(id, attempt)
                    ON r.id = f.id AND r.attempt = f.attempt
                WHERE r.id = ANY(%(ids)s::text[]) AND r.state = 'running'
                    AND r.worker = %(worker)s
                ORDER BY r.id FOR UPDATE OF r
            ) AS held
            WHERE j.id = held.id
            RETURNING j.id, j.cancel_requested"""
        self.progress = f"""
            WITH u AS (
                UPDATE {j} SET progress = %(data)s, event_seq = event_seq + 1
                WHERE id = %(id)s AND state = 'running' AND worker = %(worker)s
                    AND attempt = %(attempt)s
                RETURNING id, event_seq
            ), ev AS (
                INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
                SELECT u.id, u.event_seq, 'progress', NULL, %(data)s, %(now)s, %(attempt)s
                FROM u
            )
            SELECT {notify_running} FROM u"""
        self.append = f"""
            WITH u AS (
                UPDATE {j} SET event_seq = event_seq + %(n)s::int,
                    output_count = output_count + %(n_out)s::int
                WHERE id = %(id)s AND state = 'running' AND worker = %(worker)s
                    AND attempt = %(attempt)s
                RETURNING id, event_seq, output_count
            ), ev AS (
                INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)
                SELECT u.id, u.event_seq - %(n)s::int + x.n::int, x.kind,
                    u.output_count - %(n_out)s::int + x.idx, x.data, %(now)s, %(attempt)s
                FROM u, unnest(%(kinds)s::text[], %(datas)s::text[], %(idx)s::int[])
                    WITH ORDINALITY AS x(kind, data, idx, n)
            )
            SELECT {notify_running} FROM u"""
        # Jobs claimed for `worker` at their submission (their start is their
        # creation: no claim of a worker starts a job at the very time it was made).
        self.pushed_to = f"""
            SELECT {COLUMNS} FROM {j}
            WHERE state = 'running' AND worker = %s AND started_at = created_at"""
        self.expired = f"""
            SELECT {COLUMNS} FROM {j}
            WHERE state = 'running' AND lease_until < %(now)s LIMIT %(limit)s"""
        # A job's meta, merged with the changes by the caller (`PostgresStore.update_meta`)
        # in the same transaction.
        self.meta_for_update = f"SELECT meta FROM {j} WHERE id = %s FOR UPDATE"
        self.update_meta = f"""
            WITH u AS (UPDATE {j} SET meta = %(meta)s WHERE id = %(id)s RETURNING id)
            SELECT {notify_jobs} FROM u"""
        self.delete = f"""
            WITH u AS (DELETE FROM {j} WHERE id = %(id)s RETURNING id),
            ev AS (DELETE FROM {e} WHERE job_id = %(id)s)
            SELECT CASE WHEN NOT pg_try_advisory_xact_lock(%(ends_key)s)
                THEN pg_notify(%(ends_channel)s, %(origin)s || '||' || u.id) END FROM u"""
        # A job's events: its first one from its row when kept there (`first_event`).
        self.events_after = f"""
            SELECT seq, kind, idx, data, at, attempt FROM (
                SELECT 1 AS seq, 'state'::text AS kind, NULL::int AS idx, first_event AS data,
                    created_at AS at, 0 AS attempt
                FROM {j} WHERE id = %(id)s AND first_event IS NOT NULL AND %(after)s < 1
                UNION ALL
                SELECT seq, kind, idx, data, at, attempt FROM {e}
                WHERE job_id = %(id)s AND seq > %(after)s
            ) AS x ORDER BY seq LIMIT %(limit)s"""
        self.output = f"""
            SELECT data FROM {e}
            WHERE job_id = %(id)s AND idx >= %(after)s AND attempt = coalesce(
                %(attempt)s::int, (SELECT attempt FROM {j} WHERE id = %(id)s))
            ORDER BY idx LIMIT %(limit)s"""
        self.purge = f"""
            WITH gone AS (
                DELETE FROM {j} WHERE {{column}} < %s RETURNING id
            ), ev AS (
                DELETE FROM {e} WHERE job_id IN (SELECT id FROM gone)
            )
            SELECT id FROM gone"""
        # Statements go out without their indentation: psycopg parses a statement's
        # placeholders once and keeps the result only for statements of at most 4,096
        # characters (a claim that applies a decision is close to that); a longer one
        # is parsed again at every call.
        for name, value in list(vars(self).items()):
            if isinstance(value, str):
                setattr(self, name, " ".join(value.split()))

    @staticmethod
    def _submission(j: str, e: str, idle: str, keyed: bool, one: bool) -> tuple[str, str]:
        """The two submission statements (`submit`, `submit_queued`) for a job with an
        idempotency key or without (`keyed`), and with the one `state` event every new
        job has (`one`: its data bound as `data`, kept on the job's row as
        `first_event`, read back as event 1) or first events of any number and kind
        (`n`, `kinds`, `datas`: rows of the events table)."""
        on_conflict = (
            "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
            if keyed
            else ""
        )
        # A new job's first events (`ins`: the inserted job), as both submissions write
        # them: on the job's row (a row and its index entry fewer a submission, ~17 us
        # of the server's time), or as rows of their own.
        first_column = ", first_event" if one else ""
        first_value = ", %(data)s" if one else ""
        insert_events = f"INSERT INTO {e} (job_id, seq, kind, idx, data, at, attempt)"
        first_events = (
            None
            if one
            else """
                SELECT ins.id, x.n::int, x.kind, NULL::int, x.data, %(created_at)s::float8, 0
                FROM ins, unnest(%(kinds)s::text[], %(datas)s::text[])
                    WITH ORDINALITY AS x(kind, data, n)"""
        )
        # The event a claim at submission writes (see `submit`).
        running_event = """
                SELECT ins.id, %(n)s::int + 1, 'state', NULL, '{"state":"running","attempt":1}',
                    %(created_at)s::float8, 1
                FROM ins WHERE ins.state = 'running'"""
        submit_events = insert_events + (
            running_event if first_events is None else first_events + " UNION ALL " + running_event
        )
        queued_events = "" if first_events is None else f", ev AS ({insert_events} {first_events})"
        submit = f"""
            WITH idle AS (
                UPDATE {idle} SET slots = coalesce(slots, 1) - 1 WHERE channel = (
                    SELECT channel FROM {idle}
                    WHERE %(task)s = ANY(tasks) AND at > extract(epoch FROM now()) - {IDLE_FRESH}
                        AND coalesce(slots, 1) > 0 AND %(run_at)s <= %(created_at)s
                        AND (%(idempotency_key)s::text IS NULL OR NOT EXISTS (
                            SELECT 1 FROM {j} WHERE idempotency_key = %(idempotency_key)s::text))
                    ORDER BY coalesce(slots, 1) DESC, at LIMIT 1 FOR UPDATE SKIP LOCKED
                ) RETURNING channel, worker, lease, tasks, push_key,
                    %(pushable)s AND worker IS NOT NULL AND %(task)s = ANY(push_tasks) AS push
            ), push AS (
                SELECT worker, lease FROM idle
                WHERE push AND NOT pg_try_advisory_xact_lock(push_key) AND NOT EXISTS (
                    SELECT 1 FROM {j} q WHERE q.state = 'queued' AND q.priority <= %(priority)s
                        AND q.task = ANY(idle.tasks) AND q.run_at <= %(created_at)s)
            ), ins AS (
                INSERT INTO {j} AS j (id, task, queue, priority, state, params, max_attempts,
                    created_at, run_at, timeout, keep_for, owner, idempotency_key,
                    supersede_key, meta, event_seq, attempt, started_at, worker, lease_until
                    {first_column})
                SELECT %(id)s, %(task)s, %(queue)s, %(priority)s,
                    CASE WHEN push.worker IS NULL THEN 'queued' ELSE 'running' END, %(params)s,
                    %(max_attempts)s, %(created_at)s, %(run_at)s, %(timeout)s, %(keep_for)s,
                    %(owner)s, %(idempotency_key)s, %(supersede_key)s, %(meta)s,
                    %(n)s + (push.worker IS NOT NULL)::int, (push.worker IS NOT NULL)::int,
                    CASE WHEN push.worker IS NOT NULL THEN %(created_at)s::float8 END,
                    push.worker, %(created_at)s::float8 + push.lease {first_value}
                FROM (SELECT 1) AS one LEFT JOIN push ON true
                {on_conflict}
                RETURNING j.id, j.state, j.worker, j.lease_until
            ), ev AS (
                {submit_events}
            ), note AS (
                SELECT pg_notify(%(jobs_channel)s, %(origin)s || '|running|' || ins.id)
                FROM ins WHERE ins.state = 'running'
                    AND NOT pg_try_advisory_xact_lock(%(jobs_key)s)
            ), doc AS (
                SELECT CASE WHEN state = 'running' THEN %(doc_head)s || to_json(worker)::text
                    || ',' || to_json(lease_until)::text || %(doc_tail)s END AS doc
                FROM ins
            )
            SELECT pg_notify(coalesce((SELECT channel FROM idle), %(work_channel)s),
                    %(origin)s || coalesce('|' || doc.doc, '')),
                (SELECT count(*) FROM note), doc.doc, EXISTS (SELECT 1 FROM idle)
            FROM doc"""
        # The same, for a job that no idle worker is thought to wait for (a submission
        # of this process found none a moment ago, see `PostgresStore.enqueue`): queued,
        # without news (the store sends one for all such jobs a moment later); the
        # same columns back, the doc always empty.
        submit_queued = f"""
            WITH ins AS (
                INSERT INTO {j} (id, task, queue, priority, state, params, max_attempts,
                    created_at, run_at, timeout, keep_for, owner, idempotency_key,
                    supersede_key, meta, event_seq {first_column})
                VALUES (%(id)s, %(task)s, %(queue)s, %(priority)s, 'queued', %(params)s,
                    %(max_attempts)s, %(created_at)s, %(run_at)s, %(timeout)s, %(keep_for)s,
                    %(owner)s, %(idempotency_key)s, %(supersede_key)s, %(meta)s, %(n)s
                    {first_value})
                {on_conflict}
                RETURNING id
            ){queued_events}
            SELECT NULL, 0, NULL::text, false FROM ins"""
        return " ".join(submit.split()), " ".join(submit_queued.split())

    def submission(self, keyed: bool, one: bool) -> tuple[str, str]:
        """`submit` and `submit_queued` for a job with a key or not, one event or not."""
        return self._submissions[keyed, one]


def end_values(decisions: Sequence[Decision]) -> dict[str, Any]:
    """The ends of `Statements.apply_ends` (each `is_plain_end`), as it binds them."""
    fences = [cast(Fence, d.fence) for d in decisions]
    return {
        "b_ids": text_array(d.job_id for d in decisions),
        "b_states": array_literal(d.state.value for d in decisions),
        "b_results": array_literal(d.result_text() for d in decisions),
        "b_errors": array_literal(dumps(d.error.to_dict()) if d.error else None for d in decisions),
        "b_workers": text_array(f.worker for f in fences),
        "b_attempts": array_literal(f.attempt for f in fences),
        "b_finished": array_literal(d.finished_at for d in decisions),
        "b_expires": array_literal(d.expires_at for d in decisions),
        "b_started": array_literal(d.started_at for d in decisions),
        "b_kinds1": text_array(d.events[0][0].value for d in decisions),
        "b_datas1": text_array(d.events[0][1] for d in decisions),
        "b_kinds2": text_array(d.events[1][0].value for d in decisions),
        "b_datas2": text_array(d.events[1][1] for d in decisions),
    }


def is_plain_end(d: Decision) -> bool:
    """A job that ran under its fence ended, with its two events: what a worker writes
    for most jobs, and what `Statements.apply_ends` writes several of at once."""
    return (
        d.state in TERMINAL
        and d.expect == _RUNNING
        and d.fence is not None
        and d.lease_before is None
        and d.attempt is None
        and d.cancel_requested is None
        and len(d.events) == 2
    )


_RUNNING = frozenset({State.RUNNING})
