"""Turning Redis pub/sub messages into in-process wake-ups.

One background thread per store holds one pub/sub connection. It is always
subscribed to the store's own `wake` channel (work for one of its idle worker
slots, named in the message) and, while some thread of this
process waits on a job (`notifier.wait`, `notifier.subscribe`), to that job's
channel, so a busy system does not ship every job's changes to every process.

A subscription only counts once Redis confirms it; the confirmation itself wakes
the job's waiters, who then read again, so a change made between their read and
the subscription is never missed. When the connection drops the thread reconnects
by itself and then wakes everyone, since messages may have been lost meanwhile.

A job's end (and its deletion, or a change of its metadata) also goes to the wake
channel of the store instance that submitted it, which listens there always: a
thread of the submitting process waiting for that end subscribes to nothing and
reads nothing (`hears`), for as long as the wake channel stays subscribed since the
submission (else it follows the job on the job's channel, as any other waiter).

A claim and a job's end publish the job's record with the message. The listener
keeps the latest one per watched job, briefly, and hands it out once (`take`): the
waiter woken by that message reads it instead of the job (one round trip fewer on
the way to a result). Any later message about the job replaces or drops it, and so
does a write of this process (`forget`), which then reads its own write.

While no thread of the process waits, and nothing follows a job, the news can wait:
the thread then reads what came every LAZY seconds, in one go, rather than wake for
each message (a process that submits a stream of jobs would otherwise be interrupted
by the end of each, and each interruption costs it more than its submission). A
thread that starts to wait, or a listener that starts to follow a job, wakes it
first (`prompt`), and it reads at once while any does.

A thread that waits for the end of a job this instance submitted (which comes to
the instance's own channel) reads the subscription itself while no other thread
does (`lead`), handling every message as the listener's thread would: the end
then wakes the thread that waits for it, not the listener's thread, which would
then wake it.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from ..feed import WORK, ChangeFeed, Listener
from .redis_pubsub import open_subscription
from .redis_slots import WakePipe

log = logging.getLogger("underway.stores.redis")

LINGER = 30.0  # seconds a job channel stays subscribed after its last waiter left
MAX_RECORDS = 5000  # records kept at most (the oldest goes first)
MAX_RECORD_BYTES = 16 << 20  # ... and characters of them in all
FRESH = 1.0  # seconds a record that came with a message may stand in for a read
# The same for a job's final record sent to the instance that submitted it: every
# later change of an ended job (its deletion, its metadata) is sent there too.
FRESH_FINAL = 60.0
MAX_OWN = 10_000  # jobs this instance submitted that it remembers hearing the end of
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)
LAZY = 0.25  # seconds between reads while nobody waits (see the module's docstring)


class RedisNotifier(ChangeFeed):
    """A ChangeFeed that asks the listener to follow the jobs someone waits on."""

    def __init__(self) -> None:
        super().__init__()
        self.listener: RedisListener | None = None

    def wait(self, key: str, seen: int, timeout: float | None) -> int:
        return self._following(key, super().wait, seen, timeout)

    def wait_end(self, key: str, seen: int, timeout: float | None) -> int:
        return self._following(key, super().wait_end, seen, timeout, end=True)

    def _following(
        self,
        key: str,
        wait: Callable[[str, int, float | None], int],
        seen: int,
        timeout: float | None,
        *,
        end: bool = False,
    ) -> int:
        """`wait`, with the listener following the job meanwhile; for the job's `end`,
        not when that comes to this instance anyway (see `RedisListener.hears`)."""
        listener = self.listener
        if listener is None:
            return wait(key, seen, timeout)
        if end and listener.hears(key):
            # Its end comes to this instance's channel: this thread reads that itself
            # while nobody else does, so the news wakes the thread that waits for it.
            stop = super().subscribe(key, listener.poke)  # other news of it, from here
            try:
                led = listener.lead(lambda: self.version(key) != seen, timeout)
            finally:
                stop()
            if led:
                return self.version(key)
        with listener.prompt():
            if key == WORK or (end and listener.hears(key)):
                return wait(key, seen, timeout)
            listener.watch(key)
            try:
                return wait(key, seen, timeout)
            finally:
                listener.unwatch(key)

    def listen(self, key: str, fn: Listener) -> Callable[[], None]:
        """`subscribe` to a key of this process's own (no job's: nothing to follow)."""
        return super().subscribe(key, fn)

    def wait_local(self, key: str, seen: int, timeout: float | None) -> int:
        """`wait` on a key of this process's own (no job's: nothing to follow)."""
        listener = self.listener
        if listener is None:
            return super().wait(key, seen, timeout)
        with listener.prompt():
            return super().wait(key, seen, timeout)

    def subscribe(self, key: str, fn: Listener) -> Callable[[], None]:
        unsubscribe = super().subscribe(key, fn)
        listener = self.listener
        if listener is None:
            return unsubscribe
        listener.hurry()
        if key != WORK:
            listener.watch(key)
        done = threading.Event()

        def stop() -> None:
            if not done.is_set():
                done.set()
                if key != WORK:
                    listener.unwatch(key)
                listener.relax()
            unsubscribe()

        return stop


class RedisListener:
    """The subscriber thread of one store."""

    def __init__(
        self,
        client: redis.Redis[str],
        notifier: ChangeFeed,
        *,
        wake_channel: str,
        on_wake: Callable[[str], None],
        job_channel_prefix: str,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._notifier = notifier
        self._wake = wake_channel
        self._on_wake = on_wake
        self._job_prefix = job_channel_prefix
        self._on_connect = on_connect
        self._lock = threading.Lock()
        self._waiters: dict[str, int] = {}  # job id -> threads/listeners waiting on it
        self._left: dict[str, float] = {}  # job id -> when its last waiter left
        # job id -> (monotonic time it stops standing for a read, the record's JSON)
        # from the latest message, oldest first. Ordered so that dropping the oldest
        # costs the same however many came and went before it (a plain dict walks past
        # the slots of the entries taken out ahead of it, until it is rebuilt).
        self._records: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._record_chars = 0  # their records' length in all
        self._next_drop = 0.0
        # Jobs this instance submitted, each with the `_heard` count when it was: while
        # the wake channel stays subscribed, their ends come there (see `hears`).
        self._own: OrderedDict[str, int] = OrderedDict()
        self._heard = 0  # confirmed subscriptions to the wake channel so far
        self._hearing = False  # the latest one stands
        self._pubsub: Any = None  # redis.client.PubSub, owned by the thread
        self.connected = threading.Event()
        self._closed = threading.Event()
        self._read_lock = threading.Lock()  # held by the thread that reads `_pubsub`
        self._leader: int | None = None  # the thread that reads it instead (`lead`)
        self._prompt = 0  # threads and listeners that want news at once (see `prompt`)
        self._lazy = False  # the thread sleeps up to LAZY seconds without reading
        self._pipe = WakePipe()  # wakes the thread (and a thread that reads instead)
        self._thread = threading.Thread(target=self._run, name="underway-redis-sub", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._pipe.poke()
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            return  # still reading them: the pipe's descriptors stay open
        self._pipe.close()

    # -- promptness ------------------------------------------------------------------
    @contextmanager
    def prompt(self) -> Iterator[None]:
        """While inside: the thread reads each message as it comes."""
        self.hurry()
        try:
            yield
        finally:
            self.relax()

    def hurry(self) -> None:
        with self._lock:
            self._prompt += 1
            lazy, self._lazy = self._lazy, False
        if lazy:
            self._pipe.poke()

    def relax(self) -> None:
        with self._lock:
            self._prompt -= 1

    def lead(self, done: Callable[[], bool], timeout: float | None) -> bool:
        """Read the subscription in the calling thread, handling every message as the
        listener's thread would, until `done()` or `timeout`. False at once when
        another thread reads it, and when the connection fails (the listener's thread
        then finds out, and reconnects): the caller waits as usual."""
        if not self.connected.is_set() or not self._read_lock.acquire(blocking=False):
            return False
        self._leader = threading.get_ident()
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return True
                pubsub = self._pubsub
                sock = None if pubsub is None else pubsub.connection._sock
                if sock is None or self._closed.is_set():
                    return False
                select.select((sock, self._pipe.fd), (), (), min(1.0, left or 1.0))
                self._pipe.clear()
                self._read_all(pubsub)
                self._drop_unwatched()  # as the listener's thread would, between reads
            return True
        except (redis.RedisError, OSError, ValueError):
            return False
        finally:
            self._leader = None
            self._read_lock.release()
            if self._prompt > 0:  # their news was read here meanwhile: not any more
                self.poke()

    def poke(self) -> None:
        """Wake a thread that reads the subscription (`lead`), unless it is the caller:
        news it handles itself needs no wake-up."""
        if threading.get_ident() != self._leader:
            self._pipe.poke()

    # -- the ends of this instance's own jobs --------------------------------------------
    def submitted(self, job_id: str) -> bool:
        """This instance submitted the job (its record names this instance's channel):
        whether its end will come to this listener (see `hears`)."""
        with self._lock:
            if not self._hearing:
                return False
            self._own[job_id] = self._heard
            if len(self._own) > MAX_OWN:
                self._own.popitem(last=False)
        return True

    def hears(self, job_id: str) -> bool:
        """Whether the job's end (and its deletion) comes to this listener without a
        subscription: it was submitted here while the wake channel was subscribed, and
        that subscription still stands (what came while it was down is lost; waiters
        then follow the job on its channel, after reading it again)."""
        with self._lock:
            return self._hearing and self._own.get(job_id) == self._heard

    # -- interest --------------------------------------------------------------------
    def watch(self, job_id: str) -> None:
        with self._lock:
            count = self._waiters.get(job_id, 0)
            self._waiters[job_id] = count + 1
            known = count > 0 or self._left.pop(job_id, None) is not None
            pubsub = self._pubsub
        if not known and pubsub is not None and self.connected.is_set():
            try:
                pubsub.subscribe(self._job_prefix + job_id)
            except (redis.RedisError, OSError):
                pass  # the thread resubscribes every watched job when it reconnects

    def unwatch(self, job_id: str) -> None:
        with self._lock:
            count = self._waiters.get(job_id, 0) - 1
            if count > 0:
                self._waiters[job_id] = count
            else:
                self._waiters.pop(job_id, None)
                self._left.pop(job_id, None)
                self._left[job_id] = time.monotonic()

    def take(self, job_id: str) -> str | None:
        """The record that came with the latest message about `job_id` (JSON), once,
        while it is fresh; None when that message carried none."""
        if not self._records:
            return None
        with self._lock:
            found = self._unkeep(job_id)
        if found is None or time.monotonic() > found[0]:
            return None
        return found[1]

    def forget(self, *job_ids: str) -> None:
        """Drop what came with messages about these jobs: this process changed them, and
        reads its own writes."""
        if not self._records:
            return
        with self._lock:
            for job_id in job_ids:
                self._unkeep(job_id)

    def _unkeep(self, job_id: str) -> tuple[float, str] | None:
        """Drop the record kept for the job (holding `_lock`); it, or None."""
        found = self._records.pop(job_id, None)
        if found is not None:
            self._record_chars -= len(found[1])
        return found

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                self._connect()
                failures = 0
                while not self._closed.is_set():
                    self._read()
                    self._drop_unwatched()
            except (redis.RedisError, OSError) as exc:
                if self._closed.is_set():
                    break
                if self.connected.is_set():
                    log.warning("lost the Redis pub/sub connection: %s", exc)
                self._disconnect()
                # Waiters fall back to polling (and see StoreUnavailable) meanwhile.
                self._notifier.notify_everything()
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                self._closed.wait(delay)
        self._disconnect()

    def _read(self) -> None:
        """Wait for news (at once, or every LAZY seconds; see `prompt`), then handle
        every message that came."""
        sock = self._pubsub.connection._sock
        if sock is None:
            raise redis.ConnectionError("the subscriber is not connected")
        # Until the wake channel's subscription is confirmed, this instance hears no
        # end of its jobs: read at once.
        with self._lock:
            self._lazy = self._prompt == 0 and self._hearing
            lazy = self._lazy
        if lazy:
            ready = select.select((self._pipe.fd,), (), (), LAZY)[0]
        else:
            ready = select.select((sock, self._pipe.fd), (), (), 1.0)[0]
        if self._pipe.fd in ready:
            self._pipe.clear()
        with self._read_lock:  # not while another thread reads it (see `lead`)
            self._read_all(self._pubsub)

    def _read_all(self, pubsub: Any) -> None:
        """Handle every message that came (holding `_read_lock`)."""
        while True:
            message = pubsub.get_message(timeout=0)
            if message is None:
                return
            self._handle(message)

    def _connect(self) -> None:
        pubsub = open_subscription(self._client)
        with self._lock:
            watched = set(self._waiters) | set(self._left)
        pubsub.subscribe(self._wake, *(self._job_prefix + job_id for job_id in watched))
        with self._lock:
            self._pubsub = pubsub
        self.connected.set()
        # A watch() that came after the snapshot above but before `connected` was set
        # did not subscribe by itself: catch those up now.
        with self._lock:
            missed = (set(self._waiters) | set(self._left)) - watched
        if missed:
            pubsub.subscribe(*(self._job_prefix + job_id for job_id in missed))
        if self._on_connect is not None:
            self._on_connect()
        self._notifier.notify_everything()

    def _disconnect(self) -> None:
        self.connected.clear()
        with self._lock:
            self._hearing = False
            pubsub, self._pubsub = self._pubsub, None
            self._records.clear()
            self._record_chars = 0
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                pass

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, str) or kind not in ("message", "subscribe"):
            return
        if channel == self._wake:
            data = message.get("data")
            if kind == "subscribe":
                with self._lock:
                    self._heard += 1
                    self._hearing = True
            elif data and isinstance(data, str):
                if data.startswith("\x01"):
                    self._ended(data)
                else:
                    self._on_wake(data)
        elif channel.startswith(self._job_prefix):
            job_id = channel[len(self._job_prefix) :]
            data = message.get("data") if kind == "message" else None
            self._keep(job_id, data if isinstance(data, str) else None, FRESH)

    def _ended(self, message: str) -> None:
        """`\\x01<id>\\n<record>`: a job this instance submitted ended (with its final
        record) or changed in a way its waiters must hear of (without)."""
        job_id, _, doc = message[1:].partition("\n")
        self._keep(job_id, doc, FRESH_FINAL)

    def _keep(self, job_id: str, doc: str | None, fresh: float) -> None:
        """Keep the record a message brought (or drop the one kept, for a message
        without one) and wake the job's waiters."""
        with self._lock:
            if doc:
                self._unkeep(job_id)
                self._records[job_id] = (time.monotonic() + fresh, doc)
                self._record_chars += len(doc)
                while len(self._records) > MAX_RECORDS or self._record_chars > MAX_RECORD_BYTES:
                    _, (_, dropped) = self._records.popitem(last=False)
                    self._record_chars -= len(dropped)
            else:
                self._unkeep(job_id)
        self._notifier.notify(job_id)

    def _drop_unwatched(self) -> None:
        now = time.monotonic()
        if not self._left or now < self._next_drop:
            return
        self._next_drop = now + 1.0
        cutoff = now - LINGER
        stale: list[str] = []
        with self._lock:
            # In the order their last waiters left (`watch` takes an entry out, `unwatch`
            # puts it back at the end), so the stale ones come first.
            for job_id, left in self._left.items():
                if left >= cutoff:
                    break
                stale.append(job_id)
            for job_id in stale:
                del self._left[job_id]
                self._unkeep(job_id)
        if stale:
            self._pubsub.unsubscribe(*(self._job_prefix + job_id for job_id in stale))
