"""The Redis store: one Redis server shared by any number of processes and machines.

Every change of a job is one call of a Lua function (see `redis_scripts`: the
functions of one library, or the same code as scripts where Redis has no functions),
so claiming is atomic and a job costs a handful of round trips: enqueue, claim
(batched, with the ends of the previous jobs), plus batched progress and output.
The store applies the lifecycle's decisions (`Decision`) and fences writes; it
decides nothing itself. Key names live in `redis_keys`. Scripts run on connections
the store keeps on a free list of its own, used directly (`_call`), not through the
client's pool and command layers.

Waiting does not poll Redis: a background subscriber thread (`redis_listener`)
turns pub/sub messages into `ChangeFeed` wake-ups. A claim's and an end's message
brings the job's record, which the woken waiter's `get` takes instead of reading
the job again. Idle workers are woken by the
scripts: a claim that comes up short registers its thread as idle, and the next
enqueue (or a decision that requeues a job, or ends one and so frees room under a
concurrency limit) wakes one such thread through its process's own channel. Busy
workers cost no messages at all. A submission that finds an idle slot whose worker
runs its task (no concurrency limit, due now, nothing of its task queued ahead)
claims the job for that worker there and then, and the wake-up carries the job's
record: the worker's next claim takes it without a round trip. Jobs so claimed for
a worker that stopped before taking them go back to the queue.

While Redis cannot be reached, or refuses writes (out of memory, unable to save its
snapshot, a replica), every call that needs it raises `StoreUnavailable`; the
subscriber reconnects by itself. One exception: the writes of a lease holder
(`append`, `save_progress`, and `apply` without a claim, about jobs this store
instance claimed) are retried while its lease lasts, since nobody else may take the
job meanwhile; giving up at once would lose output or let a finished job run again
after recovery. A retried decision whose first try did land finds its guard no
longer holds and reports False.

Redis Cluster is not supported (scripts touch keys they compute).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._util import dumps, loads, new_id, rfc3339
from ..errors import ConfigurationError, StoreUnavailable
from ..feed import WORK, Known
from ..records import (
    EMPTY_PROGRESS,
    Decision,
    ErrorInfo,
    Event,
    EventKind,
    Fence,
    JobRecord,
    Page,
    Progress,
    State,
)
from . import redis_scripts as scripts
from .base import Store, merged_meta
from .redis_keys import Keys
from .redis_listener import RedisListener, RedisNotifier
from .redis_slots import SlotChannel, open_slot_channel

# redis-py's own packing checks every argument in Python first: hiredis alone is
# several times cheaper for a script call's few dozen arguments.
_pack_hiredis: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_hiredis
except ImportError:  # pragma: no cover - the `redis` extra brings hiredis
    _pack_hiredis = None

log = logging.getLogger("underway.stores.redis")

RETRY_AFTER = 2.0  # seconds callers are told to wait while Redis is unreachable
MAX_IDLE_WAIT = 5.0  # an idle worker looks again at least this often, in case a wake-up got lost
HELD_RETRY_STEP = 0.2  # seconds between attempts of a lease holder's write during an outage
FRESH_SUBMISSION = 0.02  # seconds what a submission says of its job stands for a read
FLUSH_WAIT = 2.0  # seconds a stopping worker waits for jobs claimed for it on their way
CHANNEL_WAIT = 2.0  # seconds a slot waits for Redis to confirm its channel's subscription
CHANNEL_RETRY = 5.0  # seconds a slot whose channel could not be opened goes without one
BATCH = 200  # jobs per script call in purge, so no call blocks Redis for long

_STATES = {s.value: s for s in State}
_KINDS = {k.value: k for k in EventKind}


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


# Error replies of a Redis that cannot take writes for now: out of memory under
# `maxmemory`, unable to save its snapshot (a full disk: MISCONF), a replica (READONLY,
# after a failover), busy with a script, or a replica without its primary. The command
# (or the script, which stops at its first write) changed nothing: callers may retry.
_REFUSALS = ("OOM", "MISCONF", "READONLY", "BUSY", "MASTERDOWN")
# redis-py takes the code off the message for some of them, raising a class of its own.
_REFUSAL_TYPES = tuple(
    kind
    for kind in (getattr(redis.exceptions, n, None) for n in ("OutOfMemoryError", "ReadOnlyError"))
    if isinstance(kind, type)
)


# What a call raises that `RedisStore._unavailable` may turn into StoreUnavailable.
_CALL_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError, redis.ResponseError)


def _code(exc: redis.ResponseError) -> str:
    """The error reply's code and a space, where redis-py took it off the message."""
    code = getattr(exc, "status_code", None)
    return f"{code} " if isinstance(code, str) and not str(exc).startswith(code) else ""


def _refused(exc: redis.ResponseError) -> bool:
    if isinstance(exc, _REFUSAL_TYPES):
        return True
    code = getattr(exc, "status_code", None) or str(exc).partition(" ")[0]
    return code in _REFUSALS


def _sleeper_key(thread: str) -> str:
    return f"{WORK}/{thread}"


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


def _fields_of(flat: Sequence[str]) -> dict[str, str]:
    """A hash as a script returns it (a flat field/value list), as a mapping."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _record(flat: Sequence[str], position: int | None = None) -> JobRecord:
    """A record from a hash as a script returns it (a flat field/value list)."""
    return _record_from(_fields_of(flat), position)


def _record_from(h: Mapping[str, str], position: int | None = None) -> JobRecord:
    get = h.get
    state = h["state"]
    params = h["params"]
    progress = get("progress")
    result = get("result")
    error = get("error")
    meta = get("meta")
    return JobRecord.from_fields(
        {
            "id": h["id"],
            "task": h["task"],
            "params": {} if params == "{}" else loads(params),
            "state": _STATES[state],
            "progress": EMPTY_PROGRESS if progress is None else Progress.from_dict(loads(progress)),
            "result": None if result is None else loads(result),
            "error": None if error is None else ErrorInfo.from_dict(loads(error)),
            "cancel_requested": get("cancel_requested") == "1",
            "attempt": int(get("attempt", 0)),
            "max_attempts": int(get("max_attempts", 1)),
            "created_at": float(h["created_at"]),
            "started_at": _float(get("started_at")),
            "finished_at": _float(get("finished_at")),
            "expires_at": _float(get("expires_at")),
            "output_count": int(get("output_count", 0)),
            "position": position if state == "queued" else None,
            "owner": get("owner"),
            "queue": get("queue", "default"),
            "priority": int(get("priority", 0)),
            "run_at": float(get("run_at", 0.0)),
            "timeout": _float(get("timeout")),
            "keep_for": float(h["keep_for"]),
            "idempotency_key": get("idempotency_key"),
            "supersede_key": get("supersede_key"),
            "worker": get("worker"),
            "lease_until": _float(get("lease_until")),
            "meta": {} if meta is None else (loads(meta) or {}),
            "waiting": None,
        }
    )


def _claimed(record: JobRecord, worker: str, lease_until: str) -> JobRecord:
    """A new job's record once its submission claimed it for an idle worker."""
    return JobRecord.from_fields(
        {
            **record.__dict__,
            "state": State.RUNNING,
            "attempt": 1,
            "worker": worker,
            "lease_until": float(lease_until),
            "started_at": record.created_at,
            "position": None,
        }
    )


def _times(record: JobRecord) -> tuple[str, str]:
    """A new job's creation time and due time, as its hash holds them."""
    created = repr(record.created_at)
    return created, created if record.run_at == record.created_at else repr(record.run_at)


def _fields(record: JobRecord, times: tuple[str, str]) -> list[str]:
    """The hash of a new queued job, as field/value pairs, its `times` as `_times` gives
    them. Fields at their defaults (attempt 0, no output, no cancel request, absent =
    None) are left out."""
    created, run_at = times
    params = record.params
    flat = [
        "id", record.id,
        "task", record.task,
        "queue", record.queue,
        "priority", str(record.priority),
        "state", "queued",
        "params", dumps(params) if params else "{}",
        "max_attempts", str(record.max_attempts),
        "created_at", created,
        "run_at", run_at,
        "keep_for", repr(record.keep_for),
    ]  # fmt: skip
    if record.timeout is not None:
        flat += ("timeout", repr(record.timeout))
    return flat + _own_fields(record)


def _own_fields(record: JobRecord) -> list[str]:
    """The optional fields a new job has of its own (owner, keys, meta) that are set,
    as field/value pairs."""
    flat: list[str] = []
    if record.owner is not None:
        flat += ("owner", record.owner)
    if record.idempotency_key is not None:
        flat += ("idempotency_key", record.idempotency_key)
    if record.supersede_key is not None:
        flat += ("supersede_key", record.supersede_key)
    if record.meta:
        flat += ("meta", dumps(record.meta))
    return flat


def _flat_events(events: Sequence[tuple[EventKind, str]]) -> list[str]:
    # An EventKind is a str (its value, for the client's encoder as for Lua).
    return [x for event in events for x in event]


_stores: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: its stores keep none of the parent's connections free for
    use (a child must not share the parent's sockets; it opens its own)."""
    for store in list(_stores):
        store._free = []


os.register_at_fork(after_in_child=_after_fork)

_TIMEVAL = struct.Struct("@ll")  # the kernel's `struct timeval`: seconds, microseconds


def _kernel_timeouts(conn: Any) -> None:
    """Make the connection's socket blocking, with its timeout kept by the kernel
    (SO_RCVTIMEO, SO_SNDTIMEO) rather than by Python, which waits for the socket in a
    `poll` before each send and each read: two system calls a script call fewer. A
    read or send out of time then fails with EAGAIN (a ConnectionError, as a lost
    connection is). TLS sockets keep Python's timeout."""
    sock, timeout = conn._sock, conn.socket_timeout
    if sock is None or not timeout or isinstance(sock, ssl.SSLSocket):
        return
    value = _TIMEVAL.pack(int(timeout), int(timeout % 1 * 1_000_000))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except OSError:
        return  # where the kernel will not: Python's timeout, as the client set it
    sock.settimeout(None)


def _bulk(text: str) -> bytes:
    """One argument of a command, as Redis's protocol sends it."""
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


_EMPTY = _bulk("")
_EMPTY_PARAMS = _bulk("{}")
_NO_OPTIONS = _bulk("0")


class Packed:
    """A script call's arguments (`count` of them) already in Redis's protocol: what a
    submission sends, most of it packed once for all the jobs of its task."""

    __slots__ = ("count", "data")

    def __init__(self, count: int, data: bytes) -> None:
        self.count = count
        self.data = data


_heads: dict[tuple[str, str], bytes] = {}  # a script call's command, name and no keys


def _head(command: str, name: str) -> bytes:
    found = _heads.get((command, name))
    if found is None:
        found = _heads[(command, name)] = _bulk(command) + _bulk(name) + _bulk("0")
    return found


_expected: dict[frozenset[State], str] = {}  # a decision's `expect`, as the script reads it


def _expect(states: frozenset[State]) -> str:
    found = _expected.get(states)
    if found is None:
        found = _expected[states] = ",".join(sorted(s.value for s in states))
    return found


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


_NO_PREDICTION = ("", "", "", "", "")
MAX_CLAIMED = 10_000  # jobs whose hash at their claim this instance keeps (`_claimed`)


def _decision_args(d: Decision, claimed: Mapping[str, str] | None = None) -> list[Any]:
    """A decision as the arguments `APPLY_AND_CLAIM` reads (see `DECISION_FIELDS`);
    with `claimed`, the job's hash as this instance claimed it, the record its end
    will be announced with (see `_predicted`)."""
    if any(kind is EventKind.OUTPUT for kind, _ in d.events):
        raise ValueError("a decision carries no output: append it under the job's fence")
    args: list[Any] = [
        d.job_id,
        _expect(d.expect),
        "" if d.fence is None else d.fence.worker,
        "" if d.fence is None else str(d.fence.attempt),
        _opt(d.lease_before),
        d.state.value,
        "" if d.attempt is None else str(d.attempt),
        "" if d.cancel_requested is None else str(int(d.cancel_requested)),
        _opt(d.run_at),
        d.result_text() or "",  # as the lifecycle encoded it
        "" if d.error is None else dumps(d.error.to_dict()),
        _opt(d.started_at),
        _opt(d.finished_at),
        _opt(d.expires_at),
        len(d.events),
    ]
    args += _NO_PREDICTION if claimed is None else _predicted(claimed, d, args)
    args.append(d.progress or "")
    assert len(args) == scripts.DECISION_FIELDS
    return args + _flat_events(d.events)


def _predicted(h: Mapping[str, str], d: Decision, args: Sequence[Any]) -> tuple[str, ...]:
    """The record a job's end will be announced with, made here rather than read back
    and encoded by Redis (the largest part of an end's work there): the hash `h` the
    job had at its claim with the decision `d` (as `args`) applied as `APPLY_AND_CLAIM`
    applies it, and the fields of `h` that may have changed since (a cancel request,
    the meta, the progress and output its worker wrote), which the script checks
    before it uses the record. None for a decision that does not end a job this
    worker holds as claimed."""
    if d.state in (State.QUEUED, State.RUNNING) or d.fence is None:
        return _NO_PREDICTION
    if h.get("worker") != d.fence.worker or h.get("attempt") != str(d.fence.attempt):
        return _NO_PREDICTION
    after = dict(h)
    after["state"] = args[5]
    for field, value in (("attempt", args[6]), ("cancel_requested", args[7])):
        if value:
            after[field] = value
    for field, value in (
        ("result", args[9]),
        ("error", args[10]),
        ("worker", ""),
        ("lease_until", ""),
        ("finished_at", args[12]),
        ("expires_at", args[13]),
    ):
        if value:
            after[field] = value
        else:
            after.pop(field, None)
    if args[11]:
        after["started_at"] = args[11]
    if d.progress is not None:
        after["progress"] = d.progress
    doc = dumps([x for pair in after.items() for x in pair])
    if len(doc) > scripts.REPLY_MAX:
        return _NO_PREDICTION  # not sent to the submitter: see `replied`
    get = h.get
    return (
        doc,
        get("cancel_requested", ""),
        get("meta", ""),
        get("progress", ""),
        get("output_count", ""),
    )


def _event(seq: int, entry: str) -> Event:
    """An event from its stored entry (`kind|at|attempt|idx|data`; `EVENTS` puts an
    output event's item in place of its empty data)."""
    kind, at, attempt, idx, data = entry.split("|", 4)
    n = int(attempt)
    value = {"attempt": n, "index": int(idx), "item": loads(data)} if idx else loads(data)
    return Event(seq=seq, kind=_KINDS[kind], data=value, at=float(at), attempt=n)


class RedisStore(Store):
    """`redis://[:password@]host:port/db`, `rediss://…` (TLS) or `unix:///path?db=N`."""

    batch_after_linger = True  # a claim is a script call: Redis's time, which all share

    def __init__(self, url: str, *, prefix: str = "underway") -> None:
        self.url = url
        self.keys = Keys(prefix)
        self._prefix = self.keys.prefix
        self.poll_interval = 2.0  # a safety net only: waiters are woken by pub/sub
        self._next_due: float | None = None  # earliest run_at among delayed jobs
        self._process = new_id()  # names this store instance in wake-ups
        self._prefix_arg = _bulk(self._prefix)
        self._tails: dict[tuple[Any, ...], Packed] = {}  # see `_submission`
        self._local = threading.local()  # per thread: the wake-up version seen at claim
        self._held: dict[str, float] = {}  # job id -> monotonic end of the lease we hold
        # job id -> its hash as this instance claimed it, while it runs here unchanged
        # by its worker since (no progress, no output): see `_predicted`
        self._claimed: dict[str, dict[str, str]] = {}
        self._closing = threading.Event()
        # Jobs submissions claimed for this instance's idle workers, not taken yet; the
        # workers that stopped (what comes for them goes back); the idle members each
        # worker left in Redis (taken back when it stops).
        self._pushed: list[JobRecord] = []
        self._stopped: set[str] = set()
        self._idlers: dict[tuple[Any, ...], str] = {}
        # Worker slot threads' own wake channels (see `redis_slots`), by thread.
        self._channels: dict[str, SlotChannel] = {}
        self._push_lock = threading.Lock()
        self._flushed = threading.Condition(self._push_lock)
        self._flush_seen = 0
        self._flush_sent = 0
        # Scripts run on connections of a free list of this store's own, used directly:
        # the client's pool and command layers cost about as much CPU as the call itself.
        # (list.pop and list.append are atomic: a call takes one, then puts it back.)
        self._free: list[Any] = []
        _stores.add(self)  # (see `_after_fork`)
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()  # for close()
        self._connections_lock = threading.Lock()
        try:
            self._redis = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=2.0,
                socket_timeout=10.0,
                # No silent retries: a script that ran but whose reply was lost
                # must not run twice. Callers see StoreUnavailable and decide.
                retry=Retry(NoBackoff(), 0),
            )
            self._redis.ping()
        except redis.AuthenticationError as exc:
            raise ConfigurationError(f"cannot use Redis at {safe_url(url)}: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            # Down or still loading its data: start anyway. Calls raise StoreUnavailable
            # (workers retry with backoff) and the subscriber reconnects when it is back.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "Redis at %s is unavailable (%s); going on, and retrying in the background",
                safe_url(url),
                reason,
            )
        except (redis.RedisError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(f"cannot reach Redis at {safe_url(url)}: {reason}") from None
        self._evicting: str | None = None  # the eviction policy last warned about
        self._epoch: float | None = None  # when the data this process has seen began
        self._lost_at: float | None = None  # when it found that data gone
        with contextlib.suppress(StoreUnavailable):
            self._check_epoch()
        # Scripts run as functions of the store's library (FCALL; Redis 7 and later),
        # else, where Redis or the user's permissions lack those, as scripts (EVALSHA).
        self._functions = os.environ.get("UNDERWAY_REDIS_FUNCTIONS", "1") != "0"
        self.notifier: RedisNotifier = RedisNotifier()
        self._listener = RedisListener(
            self._redis,
            self.notifier,
            wake_channel=self.keys.wake_channel(self._process),
            on_wake=self._on_wake,
            job_channel_prefix=self.keys.job_channel_prefix,
            on_connect=self._on_connect,
        )
        self.notifier.listener = self._listener
        self._listener.start()

    # -- plumbing --------------------------------------------------------------------
    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except _CALL_ERRORS as exc:
            failure = self._unavailable(exc)
            if failure is exc:
                raise
            raise failure from None

    def _unavailable(self, exc: Exception) -> Exception:
        """What a call that failed with `exc` raises: StoreUnavailable where Redis is
        away or refuses writes for now, else `exc` itself."""
        if isinstance(exc, redis.ResponseError):
            if not _refused(exc):
                return exc
            return StoreUnavailable(
                f"Redis at {safe_url(self.url)} refuses writes for now: {_code(exc)}{exc}",
                retry_after=RETRY_AFTER,
            )
        return StoreUnavailable(
            f"Redis at {safe_url(self.url)} is unavailable: {exc}", retry_after=RETRY_AFTER
        )

    def _run(self, script: scripts.Script, now: float, *args: Any) -> Any:
        return self._run_args(script, (self._prefix, repr(now), *args))

    def _run_args(self, script: scripts.Script, args: tuple[Any, ...] | Packed) -> Any:
        """`_run` with the script's whole argument list (the key prefix, the time, the
        rest), as a submission builds it. Not `_guard`: a call on every job's path."""
        try:
            return self._call(script, args)
        except _CALL_ERRORS as exc:
            failure = self._unavailable(exc)
            if failure is exc:
                raise
            raise failure from None

    def _acquire(self) -> Any:
        """A connection of the free list (a new one when it is empty)."""
        try:
            return self._free.pop()
        except IndexError:
            pass
        if self._closing.is_set():
            raise redis.ConnectionError("the store is closed")
        pool = self._redis.connection_pool
        conn = pool.connection_class(**pool.connection_kwargs)
        with self._connections_lock:
            self._connections.add(conn)
        return conn

    def _call(self, script: scripts.Script, args: Sequence[Any] | Packed) -> Any:
        """The script's call on a connection of the free list; loads the library or the
        script when Redis lacks it (a restart, FUNCTION FLUSH, SCRIPT FLUSH: it did not
        run, so running it then is safe)."""
        conn = self._acquire()
        try:
            return self._call_on(conn, script, args)
        finally:
            self._free.append(conn)

    def _call_on(self, conn: Any, script: scripts.Script, args: Sequence[Any] | Packed) -> Any:
        sock = conn._sock
        # Like the client's pool at checkout: a connection with something to read while
        # idle was closed by the server (a restart): connect again. One poll of a plain
        # socket; TLS asks its own layer (the raw socket may hold TLS records only).
        if sock is not None:
            try:
                if isinstance(sock, ssl.SSLSocket):
                    stale = conn.can_read(timeout=0)
                else:
                    stale = bool(select.select((sock,), (), (), 0)[0])
            except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError):
                stale = True
            if stale:
                conn.disconnect()
        try:
            if self._functions:
                try:
                    return self._script_call(conn, "FCALL", script.function, args)
                except redis.ResponseError as exc:
                    if not self._load_library(conn, exc):
                        raise
                if self._functions:
                    return self._script_call(conn, "FCALL", script.function, args)
            try:
                return self._script_call(conn, "EVALSHA", script.sha, args)
            except redis.exceptions.NoScriptError:
                self._command(conn, ("SCRIPT", "LOAD", script.text))
                return self._script_call(conn, "EVALSHA", script.sha, args)
        except redis.ResponseError:
            raise
        except BaseException:
            # A reply may be left unread (a timeout, an interrupt): start afresh.
            conn.disconnect()
            raise

    def _load_library(self, conn: Any, exc: redis.ResponseError) -> bool:
        """After a function call's error `exc`: whether the call may be made again,
        having loaded the library that Redis lacked, or turned to EVALSHA for good,
        where Redis has no functions or the user may not call or load them. Neither
        ran the function, so running it then is safe."""
        message = str(exc)
        if isinstance(exc, redis.exceptions.NoPermissionError) or "unknown command" in message:
            self._to_scripts(message)
            return True
        if not message.startswith("Function not found"):
            return False  # the function's own error
        try:
            self._command(conn, ("FUNCTION", "LOAD", scripts.LIBRARY))
        except redis.ResponseError as failed:
            text = str(failed)
            if "already exists" in text:
                return True  # another process loaded it meanwhile
            if isinstance(failed, redis.exceptions.NoPermissionError) or "unknown" in text:
                self._to_scripts(text)
                return True
            raise
        log.info("loaded the function library %s into Redis", scripts.LIBRARY_NAME)
        return True

    def _to_scripts(self, reason: str) -> None:
        if self._functions:
            self._functions = False
            log.info("Redis functions are not available (%s); using scripts", reason)

    @staticmethod
    def _script_call(conn: Any, command: str, name: str, args: Sequence[Any] | Packed) -> Any:
        """`command` (FCALL or EVALSHA) of the script `name` with no keys and `args`."""
        if not isinstance(args, Packed):
            return RedisStore._command(conn, (command, name, 0, *args))
        return RedisStore._send(
            conn, b"*%d\r\n%b%b" % (args.count + 3, _head(command, name), args.data)
        )

    @staticmethod
    def _command(conn: Any, command: tuple[Any, ...]) -> Any:
        """One command on the connection, and its reply (an error reply raised)."""
        if _pack_hiredis is None:
            conn.send_command(*command)
            return conn.read_response()
        return RedisStore._send(conn, _pack_hiredis(command))

    @staticmethod
    def _send(conn: Any, data: bytes) -> Any:
        """A command already packed, and its reply (an error reply raised)."""
        if _pack_hiredis is None:
            conn.send_packed_command([data])
            return conn.read_response()
        # The connection's own socket and reply parser, without the client's layers
        # around each (a health check, a message naming the host, made at every
        # call): 8% of a script call's instructions in this process.
        if conn._sock is None:
            conn.connect()
            _kernel_timeouts(conn)
        conn._sock.sendall(data)
        reply = conn._parser.read_response()
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply

    # -- jobs claimed at their submission ----------------------------------------------
    def _on_wake(self, message: str, *, read_by_slot: bool = False) -> None:
        """A message on this instance's wake channel: the thread to wake, and the record
        of a job the submission claimed for its worker, if it did (see `ENQUEUE`); or
        a marker this instance sent itself (see `_stop_pushing`). `read_by_slot`: the
        slot read it on its own channel (see `redis_slots`), and is awake."""
        if message.startswith("\x00"):
            with self._flushed:
                self._flush_seen = max(self._flush_seen, int(message[1:]))
                self._flushed.notify_all()
            return
        thread, _, doc = message.partition("\n")
        if doc:
            fields = _fields_of(loads(doc))
            record = _record_from(fields)
            self._claimed_now(record.id, fields)
            with self._push_lock:
                stopped = record.worker in self._stopped
                if not stopped:
                    self._pushed.append(record)
            if stopped:
                self.hand_back([record])
                return
        # WORK too, for a job handed over as for one to claim: a slot that has ends to
        # write claims (and so takes it) only when work was announced since its worker
        # last found none; else it would write the ends alone, and wait, no longer
        # known as idle (the wake-up used its word up), while the job stays queued.
        if read_by_slot:
            self.notifier.notify(WORK)
        else:
            self.notifier.notify(_sleeper_key(thread), WORK)

    def _claimed_now(self, job_id: str, fields: dict[str, str]) -> None:
        """Keep the hash of a job claimed for this instance's worker (see `_predicted`),
        unless its parameters alone are too large for its record to be sent with its
        end anyway."""
        if len(fields.get("params", "")) > scripts.REPLY_MAX:
            return
        claimed = self._claimed
        claimed[job_id] = fields
        if len(claimed) > MAX_CLAIMED:  # jobs lost to a lease that ran out, say
            with contextlib.suppress(RuntimeError, StopIteration, KeyError):
                del claimed[next(iter(claimed))]  # another thread's change meanwhile

    def _take_pushed(self, worker: str, max_jobs: int) -> list[JobRecord]:
        """Up to `max_jobs` of the jobs claimed for `worker` at their submission."""
        with self._push_lock:
            taken = [r for r in self._pushed if r.worker == worker][: max(max_jobs, 0)]
            if taken:
                ids = {r.id for r in taken}
                self._pushed = [r for r in self._pushed if r.id not in ids]
        return taken

    def _idler(
        self,
        worker: str,
        thread: str,
        lease: float,
        names: list[str],
        limits: Mapping[str, int],
        own: bool,
    ) -> str:
        """The member of the idle set that stands for this claiming thread (see
        `redis_keys`): a submission may claim jobs of its unlimited tasks for it;
        `own`: the thread is woken on a channel of its own."""
        key = (worker, thread, lease, tuple(names), tuple(sorted(limits)), own)
        member = self._idlers.get(key)
        if member is None:
            push = sorted(name for name in set(names) if name not in limits)
            fields: list[Any] = [self._process, thread, worker, lease, push]
            if own:
                fields.append(self._slot_suffix(thread))
            member = dumps(fields)
            with self._push_lock:
                self._idlers[key] = member
        return member

    def _stop_pushing(self, worker: str) -> None:
        """`worker` stopped: no more jobs are claimed for it at submission, and those
        that were and it did not take go back to the queue, those still on their way
        to this instance too."""
        with self._push_lock:
            self._stopped.add(worker)
            members = [m for key, m in self._idlers.items() if key[0] == worker]
            self._idlers = {k: m for k, m in self._idlers.items() if k[0] != worker}
            channels = [c for c in self._channels.values() if c.worker == worker]
        try:
            with self._guard():
                if members:
                    self._redis.zrem(self.keys.idle, *members)
                # A claim made before that is on its way: a marker sent now comes after it.
                self._catch_up()
        except StoreUnavailable as exc:  # their leases run out, and they are recovered
            log.warning("could not take back the idle slots of worker %s: %s", worker, exc)
        for channel in channels:  # slots that did not stop by themselves
            self._close_channel(channel, drain=True)
        with self._push_lock:
            records = [r for r in self._pushed if r.worker == worker]
            self._pushed = [r for r in self._pushed if r.worker != worker]
        self.hand_back(records)

    # -- worker slots' own wake channels (see `redis_slots`) ------------------------------
    def _slot_suffix(self, thread: str) -> str:
        return f"{self._process}:{thread}"

    def _channel(self, worker: str, thread: str) -> SlotChannel | None:
        """The calling slot thread's own wake channel, opened at its first claim; None
        while it cannot be (the slot is then woken through this instance's channel)."""
        channel: SlotChannel | None = getattr(self._local, "channel", None)
        if channel is not None and not channel.closed:
            return channel
        if self._closing.is_set() or time.monotonic() < getattr(self._local, "retry", 0.0):
            return None
        name = self.keys.wake_channel(self._slot_suffix(thread))
        try:
            channel = open_slot_channel(self._redis, name, worker, thread, CHANNEL_WAIT)
        except (redis.RedisError, OSError) as exc:
            log.debug("no wake channel of its own for slot %s: %s", thread, exc)
            self._local.retry = time.monotonic() + CHANNEL_RETRY
            return None
        # What wakes the slot in this process (its worker stopping, a reconnection, a
        # message on the instance's channel) pokes it while it reads its channel.
        channel.unlisten = self.notifier.listen(_sleeper_key(thread), channel.poke)
        with self._push_lock:
            stale = self._channels.get(thread)
            self._channels[thread] = channel
        if stale is not None:  # a thread of the same number that is gone
            self._close_channel(stale)
        self._local.channel = channel
        return channel

    def _read_channel(self, channel: SlotChannel, messages: Callable[[], list[str]]) -> None:
        """Handle what came on a slot's channel; a lost connection closes it (the
        slot's next claim opens another)."""
        try:
            got = messages()
        except (redis.RedisError, OSError, ValueError) as exc:
            log.debug("lost the wake channel of slot %s: %s", channel.thread, exc)
            self._close_channel(channel)
            return
        for message in got:
            self._on_wake(message, read_by_slot=True)

    def _close_channel(self, channel: SlotChannel, *, drain: bool = False) -> None:
        """Close a slot's channel; with `drain`, once its idle word is gone, after
        taking what was sent to it (jobs claimed for its worker go where any of its
        slots takes them, or back to the queue if the worker stopped)."""
        with self._push_lock:
            if self._channels.get(channel.thread) is channel:
                del self._channels[channel.thread]
        channel.poke()  # the slot, if it waits on it, lets go
        got: list[str] = []
        with channel.lock:
            if channel.closed:
                return
            if drain:
                try:
                    got = channel.drain(
                        lambda token: self._redis.publish(channel.name, token), FLUSH_WAIT
                    )
                except (redis.RedisError, OSError, ValueError) as exc:
                    # Jobs claimed for it and not read run out of lease, and are recovered.
                    log.warning("could not read slot %s's wake channel: %s", channel.thread, exc)
            channel.close()
        for message in got:
            self._on_wake(message, read_by_slot=True)

    def slot_done(self) -> None:
        thread = str(threading.get_ident())
        with self._push_lock:
            members = [m for key, m in self._idlers.items() if key[1] == thread]
            self._idlers = {k: m for k, m in self._idlers.items() if k[1] != thread}
            channel = self._channels.get(thread)
        self._local.channel = None
        if members:
            try:
                with self._guard():
                    self._redis.zrem(self.keys.idle, *members)
            except StoreUnavailable:
                pass  # the words run out (IDLE_TTL); a submission then wakes another slot
        if channel is not None:
            self._close_channel(channel, drain=True)

    def _catch_up(self) -> None:
        """Return once the listener has handled every message sent to this instance
        before now (a marker sent on its own channel comes back after them)."""
        if not self._listener.connected.is_set():
            return
        with self._flushed:
            self._flush_sent += 1
            token = self._flush_sent
        with self._listener.prompt():
            with self._guard():
                self._redis.publish(self.keys.wake_channel(self._process), f"\x00{token}")
            with self._flushed:
                self._flushed.wait_for(lambda: self._flush_seen >= token, FLUSH_WAIT)

    def _hold(self, job_ids: Collection[str], lease: float) -> None:
        until = time.monotonic() + lease
        for job_id in job_ids:
            self._held[job_id] = until

    def _run_held(
        self, job_ids: Collection[str], script: scripts.Script, now: float, *args: Any
    ) -> Any:
        """Run `script`, retrying while Redis is away and we hold all of `job_ids`."""
        while True:
            try:
                return self._run(script, now, *args)
            except StoreUnavailable:
                ends = [self._held.get(job_id) for job_id in job_ids]
                until = None if None in ends else min(e for e in ends if e is not None)
                if until is None or time.monotonic() + HELD_RETRY_STEP >= until:
                    raise
                if self._closing.wait(HELD_RETRY_STEP):
                    raise

    # -- submission ------------------------------------------------------------------
    def enqueue(
        self, record: JobRecord, events: Sequence[tuple[EventKind, str]]
    ) -> tuple[JobRecord, bool, list[str]]:
        # The job's end (or deletion) is sent to this instance's channel too (`reply`):
        # a thread of this process that waits for it need not follow it on its own.
        hears = self._listener.submitted(record.id)
        mark = self.notifier.mark()
        reply = self._run_args(scripts.ENQUEUE, self._submission(record, events))
        if reply[0] == 0:
            return _record(reply[1]), False, []
        # A waiter for the job's end need not read the job before it waits: its end
        # comes here. Without the wake channel subscribed (it hears of the job's changes
        # only while someone follows the job) only a waiter that comes at once need not.
        until = None if hears else time.monotonic() + FRESH_SUBMISSION
        if len(reply) > 2:  # claimed for an idle worker at once
            load = partial(_claimed, record, reply[2], reply[3])
            known = Known(State.RUNNING, load=load, until=until)
        else:
            known = Known(State.QUEUED, record=record, until=until)
        self.notifier.notify(record.id, known={record.id: known}, since=mark)
        return record, True, list(reply[1])

    def _submission(self, record: JobRecord, events: Sequence[tuple[EventKind, str]]) -> Packed:
        """`ENQUEUE`'s arguments for `record`: what is the job's own packed here, the rest
        (its task's settings, where to reply, its events) once for all jobs like it."""
        if type(events) is not tuple:
            events = tuple(events)  # (a key of the cache below)
        key = (record.task, record.queue, record.priority, record.max_attempts,
               record.keep_for, record.timeout, events)  # fmt: skip
        tail = self._tails.get(key)
        if tail is None:
            tail = self._tail(record, events)
            if len(self._tails) >= 1024:
                self._tails.clear()
            self._tails[key] = tail
        created, run_at = _times(record)
        params, owner, idem, sup = (
            record.params,
            record.owner,
            record.idempotency_key,
            record.supersede_key,
        )
        parts = [
            self._prefix_arg,
            _bulk(created),
            _bulk(record.id),
            _EMPTY if run_at is created else _bulk(run_at),
            _bulk(dumps(params)) if params else _EMPTY_PARAMS,
            _EMPTY if owner is None else _bulk(owner),
            _EMPTY if idem is None else _bulk(idem),
            _EMPTY if sup is None else _bulk(sup),
        ]
        if owner is None and idem is None and sup is None and not record.meta:
            parts += (_NO_OPTIONS, tail.data)
            return Packed(9 + tail.count, b"".join(parts))
        options = _own_fields(record)
        parts.append(_bulk(str(len(options) // 2)))
        parts += map(_bulk, options)
        parts.append(tail.data)
        return Packed(9 + len(options) + tail.count, b"".join(parts))

    def _tail(self, record: JobRecord, events: Sequence[tuple[EventKind, str]]) -> Packed:
        """The part of `ENQUEUE`'s arguments that every job like `record` shares."""
        settings = [
            "max_attempts",
            str(record.max_attempts),
            "keep_for",
            repr(record.keep_for),
        ]
        if record.timeout is not None:
            settings += ("timeout", repr(record.timeout))
        settings += ("reply", self._process)
        args = [record.task, record.queue, str(record.priority), str(len(settings) // 2),
                *settings, str(len(events)), *_flat_events(events)]  # fmt: skip
        return Packed(len(args), b"".join(map(_bulk, args)))

    def enqueue_many(
        self, records: Sequence[JobRecord], events: Sequence[tuple[EventKind, str]]
    ) -> None:
        for start in range(0, len(records), self.MANY_CHUNK):
            chunk = records[start : start + self.MANY_CHUNK]
            args: list[Any] = [len(chunk), len(events), *_flat_events(events)]
            for record in chunk:
                created, run_at = times = _times(record)
                fields = _fields(record, times)
                args += (
                    record.id,
                    record.task,
                    record.queue,
                    record.priority,
                    run_at,
                    record.owner or "",
                    created,
                    len(fields),
                    *fields,
                )
            self._run(scripts.ENQUEUE_MANY, max(r.created_at for r in chunk), *args)

    def get(self, job_id: str) -> JobRecord | None:
        # Woken by a claim or an end, a waiter finds the record the message brought.
        brought = self._listener.take(job_id)
        if brought is not None:
            return _record(loads(brought))
        reply = self._run(scripts.GET, 0.0, job_id)
        if not reply:
            return None
        return _record(reply[0], reply[1])

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        state_value = State(state).value if state is not None else None
        if state_value is not None:
            index = self.keys.by_state(state_value)
        elif task is not None:
            index = self.keys.by_task(task)
        elif owner is not None:
            index = self.keys.by_owner(owner)
        else:
            index = self.keys.all
        top = f"({cursor}" if cursor else "+"
        batch = max(limit + 1, 100)
        found: list[JobRecord] = []
        with self._guard():
            while len(found) <= limit:
                ids: list[str] = self._redis.zrevrangebylex(index, top, "-", start=0, num=batch)
                if not ids:
                    break
                pipe = self._redis.pipeline(transaction=False)
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                for flat in pipe.execute():
                    if not flat:
                        continue  # deleted while we read
                    record = _record_from(flat)
                    if (
                        (task is None or record.task == task)
                        and (state_value is None or record.state.value == state_value)
                        and (owner is None or record.owner == owner)
                    ):
                        found.append(record)
                top = f"({ids[-1]}"
                if len(ids) < batch:
                    break
            page = found[:limit]
            queued = [i for i, r in enumerate(page) if r.state is State.QUEUED]
            if queued:
                pipe = self._redis.pipeline(transaction=False)
                for i in queued:
                    pipe.zrank(self.keys.queue(page[i].queue), page[i].id)
                for i, rank in zip(queued, pipe.execute(), strict=True):
                    page[i] = page[i].evolve(position=rank)
        return Page(jobs=page, next_cursor=page[-1].id if len(found) > limit else None)

    def count(self, *, state: State | None = None) -> int:
        key = self.keys.all if state is None else self.keys.by_state(State(state).value)
        with self._guard():
            return int(self._redis.zcard(key))

    def running_of(self, task: str) -> int:
        with self._guard():
            return int(self._redis.scard(self.keys.running(task)))

    def heartbeat(self, worker: str, tasks: Collection[str], until: float) -> None:
        if until <= 0:
            self._stop_pushing(worker)
        with self._guard():
            if until <= 0:
                self._redis.hdel(self.keys.workers, worker)
                return
            self._redis.hset(
                self.keys.workers, worker, dumps({"tasks": sorted(tasks), "until": until})
            )
            stale = [
                name
                for name, value in self._redis.hgetall(self.keys.workers).items()
                if loads(value)["until"] < until - 3600
            ]
            if stale:
                self._redis.hdel(self.keys.workers, *stale)

    def live_workers(self, now: float) -> dict[str, list[str]] | None:
        with self._guard():
            entries = self._redis.hgetall(self.keys.workers)
        live = {}
        for name, value in entries.items():
            data = loads(value)
            if data["until"] >= now:
                live[name] = list(data["tasks"])
        return live

    # -- state changes -----------------------------------------------------------------
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
        thread = str(threading.get_ident())
        channel = self._channel(worker, thread) if max_jobs > 0 else None
        if channel is not None:  # what came while the slot was busy
            self._read_channel(channel, channel.take)
            if channel.closed:
                channel = None
        pushed: list[JobRecord] = []
        if self._pushed and max_jobs > 0:
            # Jobs claimed for this worker at their submission come first, with no round
            # trip: with no decision to write, they are all this call takes.
            pushed = self._take_pushed(worker, max_jobs)
            if pushed:
                self._hold([r.id for r in pushed], lease)
                max_jobs -= len(pushed)
                if not decisions and max_jobs <= 0:
                    self.notifier.notify(*(r.id for r in pushed))
                    return [], pushed
        if not decisions and max_jobs <= 0:
            return [], []
        names = list(tasks)
        claimed = self._claimed
        encoded = [x for d in decisions for x in _decision_args(d, claimed.get(d.job_id))]
        pairs = [x for name, cap in limits.items() for x in (name, cap)]
        args = (
            worker,
            repr(now + lease),
            max(max_jobs, 0),
            self._idler(worker, thread, lease, names, limits, channel is not None),
            len(names),
            len(decisions),
            *names,
            *encoded,
            *pairs,
        )
        if max_jobs > 0:
            # Before the call: a wake-up that comes while it runs must not be missed.
            self._local.seen = self.notifier.version(_sleeper_key(thread))
        held = [d.job_id for d in decisions if d.job_id in self._held]
        try:
            if max_jobs <= 0 and held:
                # Only decisions, some about jobs this instance holds: retried while
                # Redis is away and the lease lasts (a claim is never sent twice).
                reply = self._run_held(held, scripts.APPLY_AND_CLAIM, now, *args)
            else:
                reply = self._run(scripts.APPLY_AND_CLAIM, now, *args)
        finally:
            for d in decisions:
                if d.moves:
                    self._held.pop(d.job_id, None)
                    claimed.pop(d.job_id, None)
        flags, hashes, next_due = reply
        done = [bool(flag) for flag in flags]
        if max_jobs > 0:
            self._next_due = float(next_due) if next_due else None
        records = []
        for flat in hashes:
            fields = _fields_of(flat)
            record = _record_from(fields)
            self._claimed_now(record.id, fields)
            records.append(record)
        self._hold([r.id for r in records], lease)
        if records:
            # Jobs were queued while this process's slots were busy (no submission tells
            # a busy worker): news of work, as a wake-up would be, so that a slot with
            # ends to write lets more gather before its next claim (`Worker.linger`).
            self.notifier.notify(WORK)
        changed = [d.job_id for d, ok in zip(decisions, done, strict=True) if ok]
        records = pushed + records
        if changed or records:
            self._listener.forget(*changed, *(r.id for r in records))
            self.notifier.notify(*changed, *(r.id for r in records))
        return done, records

    def renew(
        self, *, worker: str, fences: Mapping[str, int], lease: float, now: float
    ) -> tuple[set[str], set[str]]:
        if not fences:
            return set(), set()
        pairs = [x for job_id, attempt in fences.items() for x in (job_id, str(attempt))]
        held, cancelled = self._run(scripts.RENEW, now, worker, repr(now + lease), *pairs)
        still = set(held)
        self._listener.forget(*still)
        self._hold([job_id for job_id in still if job_id in self._held], lease)
        for job_id in fences:
            if job_id not in still:
                self._held.pop(job_id, None)
        return still, set(cancelled)

    def save_progress(self, job_id: str, fence: Fence, progress: Progress, now: float) -> bool:
        self._claimed.pop(job_id, None)  # its end's record is read back, not predicted
        done = self._run_held(
            [job_id],
            scripts.PROGRESS,
            now,
            job_id,
            fence.worker,
            str(fence.attempt),
            dumps(progress.to_dict()),
        )
        if done:
            self._listener.forget(job_id)
            self.notifier.notify(job_id)
        return bool(done)

    def append(
        self, job_id: str, fence: Fence, items: Sequence[tuple[EventKind, str]], now: float
    ) -> bool:
        if not items:
            return True
        self._claimed.pop(job_id, None)  # its end's record is read back, not predicted
        flat = [x for kind, data in items for x in (kind.value, data)]
        done = self._run_held(
            [job_id], scripts.APPEND, now, job_id, fence.worker, str(fence.attempt), *flat
        )
        if done:
            self._listener.forget(job_id)
            self.notifier.notify(job_id)
        return bool(done)

    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        return [_record(flat) for flat in self._run(scripts.EXPIRED, now, limit)]

    # -- callers ---------------------------------------------------------------------
    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        self._listener.forget(job_id)
        # Merged here, not in Lua (see UPDATE_META): written if the meta is still the
        # one merged into, else merged again into the one the script found.
        seen = "\x00"  # no job's meta: the first call only says what the meta is
        merged = ""
        while True:
            changed = self._run(scripts.UPDATE_META, 0.0, job_id, seen, merged)
            if not isinstance(changed, list):
                break
            seen = changed[0]
            merged = dumps(merged_meta(seen, changes))
        self._listener.forget(job_id)  # what came meanwhile came before this write
        if changed:
            self.notifier.notify(job_id)
        return bool(changed)

    def delete(self, job_id: str) -> bool:
        self._listener.forget(job_id)
        gone = self._run(scripts.DELETE, 0.0, job_id)
        self._listener.forget(job_id)  # what came meanwhile came before this write
        if gone:
            self.notifier.notify(job_id)
            self.notifier.forget(job_id)
        return bool(gone)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        after = max(after, 0)
        entries = self._run(scripts.EVENTS, 0.0, job_id, after, limit)
        return [_event(after + n + 1, entry) for n, entry in enumerate(entries)]

    def output(
        self, job_id: str, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]:
        if limit <= 0:
            return []
        which = "" if attempt is None else str(attempt)
        items = self._run(scripts.OUTPUT, 0.0, job_id, which, max(after, 0), limit)
        return [loads(item) for item in items]

    # -- housekeeping ----------------------------------------------------------------
    def purge(self, now: float, *, finished_before: float | None = None) -> int:
        index, bound = ("expiry", now) if finished_before is None else ("finished", finished_before)
        total = 0
        while True:
            erased = self._run(scripts.PURGE, now, index, repr(bound), BATCH)
            # Their final records may have come here with their ends: read own writes.
            self._listener.forget(*erased)
            total += len(erased)
            if len(erased) < BATCH:
                return total

    def wait_for_work(self, seen: int, timeout: float) -> int:
        """Block until this thread is woken after a claim that came up short.

        While the subscriber is connected, `timeout` is stretched to when the next
        delayed job is due (at most MAX_IDLE_WAIT): every other kind of new work
        wakes an idle thread, so idle workers cost no round trips."""
        if self.notifier.version(WORK) != seen:
            return self.notifier.version(WORK)
        if self._listener.connected.is_set():
            timeout = MAX_IDLE_WAIT
            if self._next_due is not None:
                timeout = min(timeout, max(0.001, self._next_due - time.time()))
        key = _sleeper_key(str(threading.get_ident()))
        mine = getattr(self._local, "seen", None)
        seen_key = self.notifier.version(key) if mine is None else mine
        self._local.seen = None
        channel: SlotChannel | None = getattr(self._local, "channel", None)
        if channel is None or channel.closed:
            self.notifier.wait_local(key, seen_key, timeout)
        else:  # the slot reads its own channel: woken by the message itself
            awake = partial(self._woken, key, seen_key)
            self._read_channel(channel, partial(channel.wait, timeout, awake))
        return self.notifier.version(WORK)

    def _woken(self, key: str, seen: int) -> bool:
        return self.notifier.version(key) != seen

    def ping(self) -> None:
        with self._guard():
            self._redis.ping()
        self._check_epoch()

    # -- lost data -------------------------------------------------------------------
    def _check_epoch(self) -> None:
        """Redis restarted without its data (no persistence, a flush) looks like an empty
        store. The first user writes an epoch key; when it is gone, or another, the jobs
        this process knew are gone with it: say so instead of "no such job"."""
        now = time.time()
        with self._guard():
            self._redis.set(self.keys.epoch, repr(now), nx=True)
            stored = self._redis.get(self.keys.epoch)
        epoch = float(stored) if stored else now
        if self._epoch is not None and epoch != self._epoch and self._lost_at is None:
            self._lost_at = epoch
            log.error(
                "Redis at %s lost its data at %s (restarted without persistence, or "
                "flushed): every job submitted before then is gone",
                safe_url(self.url),
                rfc3339(epoch),
            )
        if self._epoch is None or self._lost_at is not None:
            self._epoch = epoch

    def _on_connect(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self._check_epoch()
            self._check_eviction()

    def _check_eviction(self) -> None:
        """Warn, once for each policy, when Redis may evict this store's keys: a policy
        `allkeys-*` under a `maxmemory` lets Redis drop jobs, their events and results
        to make room, without a word (the store sets no expiry on its keys, so the
        `volatile-*` policies never pick them)."""
        try:
            with self._guard():
                memory = self._redis.info("memory")
        except redis.ResponseError:
            return  # INFO not allowed here (an ACL): nothing to tell
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if not policy.startswith("allkeys") or not int(memory.get("maxmemory", 0) or 0):
            return
        if policy != self._evicting:
            self._evicting = policy
            log.warning(
                "Redis at %s evicts keys when it reaches maxmemory (maxmemory-policy %s): "
                "jobs, their events and their results can vanish; use noeviction, and "
                "the store will say when Redis is full instead",
                safe_url(self.url),
                policy,
            )

    def lost_data_at(self) -> float | None:
        return self._lost_at

    def close(self) -> None:
        # Workers stop before the store closes; any left behind take no more jobs here.
        for worker in {key[0] for key in list(self._idlers)}:
            self._stop_pushing(worker)
        self._closing.set()
        with self._push_lock:
            channels = list(self._channels.values())
        for channel in channels:
            self._close_channel(channel)
        self._listener.close()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.disconnect()
        self._redis.close()
