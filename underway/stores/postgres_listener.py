"""Turning PostgreSQL notifications into in-process wake-ups.

One background thread per store holds one connection, from the first time it is
needed: a process that only submits and reads keeps none, since every notification
in the database interrupts each session that listens (a worker's first word that it
is idle starts it, as does a first wait). It LISTENs on the store's own channel from
then on, on the channel of new work from the first time a worker slot of this
process waits for work, on its channel of job ends from the first time some thread
waits for a job to end (`wait()`), and on its channel of all other job changes from
the first time some thread watches a job (`PostgresFeed`): a process that only runs
jobs is not woken by every job's every change, one that only submits by every
submission, nor one that only waits for results by every job's start. A job change's
payload is `origin|state|ids`, or `origin|state|id|doc` when a job ends (`doc`: its
final row, see `postgres_sql.Statements.apply`): the store instance that made it,
the jobs' new state (empty when unknown) and the jobs. A notification from another
store instance (in this process or any other, on any machine) becomes a `ChangeFeed`
wake-up that says what it knows (`Known`), so that a waiter need not read the job
back; the store's own writes wake its waiters directly, so its echoes are skipped.
On the store's own channel come the news of work meant for this process alone, and
the rows of jobs that submissions claimed for its idle worker (while the thread
listens for work it holds a lock that says so: `push_ready`). When the thread starts
listening for job changes it wakes every waiter, who read again: a change made
before that was not heard.

When the connection drops, the thread wakes everyone (they read again, and see
`StoreUnavailable` while the server is away), keeps waking them at a slow pace
(the fallback poll) while it reconnects, and wakes them once more when it is back,
since notifications may have been lost meanwhile (and has the store drop the
pooled connections that died with the server, so that its next calls do not fail).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

import psycopg

from ..feed import WORK, ChangeFeed, Known, Listener
from ..records import State
from .postgres_schema import quote
from .postgres_sql import doc_to_record

log = logging.getLogger("underway.stores.postgres")

RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)  # also the pace of the fallback poll
CONNECT_TIMEOUT = 5  # seconds
_STATES = {s.value: s for s in State}


class PostgresFeed(ChangeFeed):
    """A ChangeFeed that has the listener hear job changes once someone waits on one."""

    def __init__(self) -> None:
        super().__init__()
        self.listener: PostgresListener | None = None

    def wait(self, key: str, seen: int, timeout: float | None) -> int:
        if self.listener is not None:
            self.listener.want("work" if key == WORK else "jobs")
        return super().wait(key, seen, timeout)

    def wait_end(self, key: str, seen: int, timeout: float | None) -> int:
        if self.listener is not None:
            self.listener.want("ends")
        return super().wait(key, seen, timeout)

    def idle_slots(self) -> int:
        """How many worker slots of this process wait for work now."""
        with self._lock:
            return len(self._waiters.get(WORK, ()))

    def subscribe(self, key: str, fn: Listener) -> Callable[[], None]:
        if self.listener is not None:
            self.listener.want("work" if key == WORK else "jobs")
        return super().subscribe(key, fn)


class PostgresListener:
    """The LISTEN thread of one store."""

    def __init__(
        self,
        conninfo: str,
        notifier: ChangeFeed,
        *,
        jobs_channel: str,
        ends_channel: str,
        work_channel: str,
        own_channel: str,
        origin: str,
        on_reconnect: Callable[[], None] = lambda: None,
        poke: Callable[[], None] = lambda: None,
        on_work: Callable[[], None] = lambda: None,
        on_pushed: Callable[[str], None] = lambda doc: None,
        listen_keys: dict[str, int] | None = None,
        push_key: int | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._notifier = notifier
        self._jobs = jobs_channel
        self._ends = ends_channel
        self._work = work_channel
        self._channels = {
            "work": {work_channel},
            "ends": {ends_channel},
            "jobs": {jobs_channel, ends_channel},
        }
        # This store's own: wake-ups (empty payload) and work chosen for this process.
        self.own_channel = own_channel
        self._origin = origin
        self._on_reconnect = on_reconnect  # e.g. drop pooled connections the server lost
        self._poke = poke  # notifies `own_channel`, to end the thread's wait at once
        self._on_work = on_work  # a submission chose this process (on `own_channel`)
        self._on_pushed = on_pushed  # ... and claimed a job for it: the job's row
        # Held (exclusive) while listening for work: submissions claim jobs for this
        # process only meanwhile, so that the job's row reaches it (`Statements.submit`).
        self._push_key = push_key
        self.push_ready = threading.Event()
        # Advisory locks held (shared) while listening on a channel, by channel: changes
        # are announced on it only while some process holds its lock (`Statements`).
        self._listen_keys = dict(listen_keys or {})
        self._wanted: set[str] = set()  # the channels to LISTEN on (besides our own)
        self._want_lock = threading.Lock()
        self._more = threading.Event()  # `_wanted` grew: the thread has more to LISTEN on
        self.connected = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="underway-pg-listen", daemon=True)
        self._started = False

    def start(self, wait: float = 0.0) -> None:
        """Connect and listen, if not done yet, waiting up to `wait` seconds for it.
        Not before it is needed: every notification in the database interrupts each
        session that listens, so a process that only submits keeps none."""
        if self._started:  # every claim of a worker asks: no lock once it has started
            return
        with self._want_lock:
            if self._started or self._closed.is_set():
                return
            self._started = True
        self._thread.start()
        if wait:
            self.connected.wait(wait)

    def close(self, wake: Callable[[], None]) -> None:
        """Stop the thread; `wake` notifies `own_channel`, to end its wait at once."""
        with self._want_lock:
            self._closed.set()
            started = self._started
        if not started:
            return
        if self.connected.is_set():
            wake()
        self._thread.join(timeout=5)

    def want(self, what: str) -> None:
        """Listen for new work ("work"), job ends ("ends") or all job changes ("jobs")
        from now on; the thread wakes every waiter once it does, since what happened
        before was not heard."""
        channels = self._channels[what]
        if channels <= self._wanted:
            return
        with self._want_lock:
            self._wanted = self._wanted | channels
        self._more.set()
        self.start()
        if self.connected.is_set():
            try:
                self._poke()
            except psycopg.Error:
                pass  # the thread looks again within a second

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                ) as conn:
                    conn.execute(f"LISTEN {quote(self.own_channel)}")
                    listening: set[str] = set()
                    self._listen(conn, listening)
                    self.connected.set()
                    if failures:
                        log.info("PostgreSQL notifications are back")
                        self._on_reconnect()
                    failures = 0
                    # Changes made before LISTEN took effect were not announced to us.
                    self._notifier.notify_everything()
                    while not self._closed.is_set():
                        if self._more.is_set() and self._listen(conn, listening):
                            self._notifier.notify_everything()
                        for note in conn.notifies(timeout=1.0):
                            self._handle(note.channel, note.payload)
                            if self._closed.is_set() or self._more.is_set():
                                break
            except psycopg.Error as exc:
                if self._closed.is_set():
                    break
                if self.connected.is_set():
                    log.warning("lost the PostgreSQL notification connection: %s", exc)
            self.connected.clear()
            self.push_ready.clear()
            if self._closed.is_set():
                break
            # Waiters read again (and see StoreUnavailable while the server is away).
            self._notifier.notify_everything()
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            self._closed.wait(delay)

    def _listen(self, conn: psycopg.Connection[object], listening: set[str]) -> bool:
        """LISTEN on the channels wanted and not listened to yet; whether there were any."""
        self._more.clear()
        new = sorted(self._wanted - listening)
        for channel in new:
            key = self._listen_keys.get(channel)
            if key is not None:
                # Waits for the changes that found nobody listening to commit: the
                # waiters woken below read after them.
                conn.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
            conn.execute(f"LISTEN {quote(channel)}")
            listening.add(channel)
            if channel == self._work and self._push_key is not None:
                # Another process holding the same key (a checksum) keeps it: this one
                # then hears of work without jobs claimed for it.
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._push_key,))
                if row.fetchone() == (True,):
                    self.push_ready.set()
        return bool(new)

    def _handle(self, channel: str, payload: str) -> None:
        if channel == self.own_channel:
            _, _, doc = payload.partition("|")
            if doc:  # a job a submission claimed for this process: its row
                self._on_pushed(doc)
            elif payload:  # a submission's news of work, for this process alone
                self._on_work()
            return  # else a wake-up only (see `close` and `want`)
        origin, _, rest = payload.partition("|")
        if origin == self._origin:
            return  # our own write: its waiters were woken already
        if channel == self._jobs or channel == self._ends:
            name, _, rest = rest.partition("|")
            listed, _, doc = rest.partition("|")
            ids = [job_id for job_id in listed.split(",") if job_id]
            state = _STATES.get(name)
            if state is None:
                self._notifier.notify(*ids)
            elif doc:
                load = partial(doc_to_record, doc)
                self._notifier.notify(*ids, known={i: Known(state, load=load) for i in ids})
            else:
                self._notifier.notify(*ids, known=dict.fromkeys(ids, Known(state)))
        elif channel == self._work:
            self._notifier.notify(WORK)
