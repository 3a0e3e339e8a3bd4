"""The change feed: one per process, owned by the engine, many watchers.

Stores feed it with their own wake-up means (in-process writes, a watcher of the
SQLite file for other processes, Redis pub/sub); every waiter (`wait()`, long polls,
event streams, callbacks, webhooks) sleeps on it, keyed by job id. An idle watcher
costs no CPU and no store reads.
"""

from __future__ import annotations

import threading
import time
from _thread import allocate_lock
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .records import TERMINAL, JobRecord, State

Listener = Callable[[], None]
WORK = "\x00work"  # feed key for "a job may be ready to claim"


class Signal:
    """A one-time wake-up for one waiting thread: `set` from any thread, any number of
    times; `wait` once. One lock, held until set: `threading.Event` makes a Condition
    and its lock for each, and takes both ways through Python code to wait and to set,
    on the path of every job's wait."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # set already (and not waited on since)
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it was set (within `timeout` seconds)."""
        if timeout is None:
            return self._lock.acquire()
        return self._lock.acquire(timeout=max(0.0, timeout))


@dataclass(slots=True)  # not frozen: a frozen class's __init__ costs 3x, on every job
class Known:
    """What a store learned of a job with a change it announces (its own write, or a
    notification that carried it): the job's state, and its whole record when the
    store has it at hand (`record`), or can make it without a read (`load`). A waiter
    that finds it current need not read the job back (see `ChangeFeed.known`).

    `until` (a `time.monotonic()` deadline) is for a store that hears of other
    processes' changes only while someone waits on the job: what it said at a write of
    its own stays current only until then (a waiter that comes later reads)."""

    state: State
    record: JobRecord | None = None
    load: Callable[[], JobRecord] | None = None
    until: float | None = None

    def full(self) -> JobRecord | None:
        if self.record is not None:
            return self.record
        return None if self.load is None else self.load()


class ChangeFeed:
    """In-process wake-ups keyed by job id (or WORK).

    A waiter sleeps on an event of its own, registered under its key, so a change to
    one job wakes only those waiting for that job. Listeners (e.g. an asyncio loop's
    `call_soon_threadsafe`) are called from the notifying thread and must be quick.
    """

    # Versions are stamps from one counter. A key without an entry reads as `_floor`,
    # the counter's value when the table was last cleared, so clearing (to keep memory
    # flat) only ever makes versions look changed: a waiter may wake for nothing, but
    # never sleeps through a change.
    MAX_KEYS = 10_000
    # What stores said of jobs, kept for this many jobs (the oldest goes first; its
    # waiters then read): enough for a burst of jobs submitted before any is awaited.
    MAX_KNOWN = 4_096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, list[Signal]] = {}
        # Waiters for a job's end (`wait_end`): not woken by a change the store says
        # leaves the job unfinished (its claim, say), which they would only sleep on.
        self._end_waiters: dict[str, list[Signal]] = {}
        self._listeners: dict[str, set[Listener]] = {}
        # by key, oldest first: what the store said with the key's latest change (an
        # entry is dropped or replaced whenever its key's version moves, so it always
        # speaks of the current version; no stamp is kept with it: every job's entry
        # lives on after its end, and each object it takes is one more for the
        # garbage collector to look at)
        self._known: OrderedDict[str, Known] = OrderedDict()
        self._counter = 0
        self._floor = 0
        # How many announcements of work (WORK) this feed has made: a slot that
        # lingers reads from it how fast jobs come (see `Worker._gather`).
        self.work_announced = 0

    def version(self, key: str) -> int:
        return self._versions.get(key, self._floor)

    def known(self, key: str) -> tuple[int, Known | None]:
        """The key's version, and what the store said of the job at that version (None
        when it said nothing: the change must be read from the store)."""
        with self._lock:
            version = self._versions.get(key, self._floor)
            known = self._known.get(key)
        if known is None:
            return version, None
        if known.until is not None and time.monotonic() > known.until:
            return version, None
        return version, known

    def mark(self) -> int:
        """A stamp to pass as `notify(since=...)`: taken before a write, it lets the
        write's news be dropped when a later change was announced first."""
        return self._counter

    def notify(
        self, *keys: str, known: Mapping[str, Known] | None = None, since: int | None = None
    ) -> None:
        """Wake the waiters of `keys`; `known` says what the store knows of some of
        them after this change (stores that say nothing leave waiters to read). With
        `since` (a `mark()` taken before the change was written), what is `known` of a
        key announced again since then (e.g. by another thread that heard of a later
        change first) is left out: its waiters read instead."""
        woken: list[Signal] = []
        called: list[Listener] = []
        with self._lock:
            if len(self._versions) >= self.MAX_KEYS:
                self._clear_versions()
            hints, versions = self._known, self._versions
            waiting, end_waiting, listening = self._waiters, self._end_waiters, self._listeners
            counter = self._counter
            for key in keys:
                counter += 1
                unfinished = False  # known to be queued or running after this change
                said = None if known is None else known.get(key)
                if said is not None and (
                    since is None or (self._floor <= since and versions.get(key, 0) <= since)
                ):
                    if hints:
                        hints.pop(key, None)
                    hints[key] = said
                    if len(hints) > self.MAX_KNOWN:
                        hints.popitem(last=False)
                    unfinished = said.state not in TERMINAL
                elif hints:
                    hints.pop(key, None)
                versions[key] = counter
                if key == WORK:
                    self.work_announced += 1
                    # One new job needs one idle slot: waking them all would have
                    # every idle thread race for it (a herd, with many slots).
                    waiters = waiting.get(key)
                    if waiters:
                        woken.append(waiters.pop(0))
                    continue
                if waiting:
                    waiters = waiting.pop(key, None)
                    if waiters:
                        woken.extend(waiters)
                if not unfinished and end_waiting:
                    waiters = end_waiting.pop(key, None)
                    if waiters:
                        woken.extend(waiters)
                if listening:
                    listeners = listening.get(key)
                    if listeners:
                        called.extend(listeners)
            self._counter = counter
        for event in woken:
            event.set()
        for fn in called:
            fn()

    def notify_everything(self) -> None:
        """Something changed that another process wrote: wake every waiter."""
        with self._lock:
            self._clear_versions()
            woken = [e for events in self._waiters.values() for e in events]
            woken += [e for events in self._end_waiters.values() for e in events]
            self._waiters.clear()
            self._end_waiters.clear()
            called = [fn for fns in self._listeners.values() for fn in fns]
        for event in woken:
            event.set()
        for fn in called:
            fn()

    def _clear_versions(self) -> None:
        self._counter += 1
        self._floor = self._counter
        self._versions.clear()
        self._known.clear()

    def wait_end(self, key: str, seen: int, timeout: float | None) -> int:
        """`wait`, for a caller that waits for the job to end (or go): changes that
        the store says leave the job unfinished change its version but wake nobody
        here (a store may also spare the process their news)."""
        return self._wait(self._end_waiters, key, seen, timeout)

    def wait(self, key: str, seen: int, timeout: float | None) -> int:
        """Block until `key`'s version differs from `seen` or `timeout` passes."""
        return self._wait(self._waiters, key, seen, timeout)

    def _wait(
        self,
        table: dict[str, list[Signal]],
        key: str,
        seen: int,
        timeout: float | None,
    ) -> int:
        event = Signal()
        with self._lock:
            current = self._versions.get(key, self._floor)
            if current != seen:
                return current
            table.setdefault(key, []).append(event)
        if not event.wait(timeout):
            with self._lock:
                waiters = table.get(key)
                if waiters is not None and event in waiters:
                    waiters.remove(event)
                    if not waiters:
                        del table[key]
        return self._versions.get(key, self._floor)

    def subscribe(self, key: str, fn: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.setdefault(key, set()).add(fn)

        def unsubscribe() -> None:
            with self._lock:
                fns = self._listeners.get(key)
                if fns is not None:
                    fns.discard(fn)
                    if not fns:
                        del self._listeners[key]

        return unsubscribe

    def forget(self, key: str) -> None:
        with self._lock:
            self._versions.pop(key, None)
            self._known.pop(key, None)
