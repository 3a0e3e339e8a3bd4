"""Callbacks in the caller's process: `on_progress` every few seconds, `on_done` once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import JobNotFound
from .records import TERMINAL, JobRecord, State

if TYPE_CHECKING:
    from .app import Underway

log = logging.getLogger("underway.callbacks")
Callback = Callable[[JobRecord], None]


@dataclass(kw_only=True)
class _Watch:
    job_id: str
    on_progress: Callback | None
    every: float
    on_done: Callback | None
    next_progress: float
    unsubscribe: Callable[[], None]


class CallbackDispatcher:
    """One thread per app: woken by the store when a watched job changes, and by the
    clock when an `on_progress` call is due. Callbacks run on this thread, one at a
    time; an exception in one is logged and does not stop the others."""

    def __init__(self, app: Underway) -> None:
        self.app = app
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="underway-callbacks", daemon=True)
        self._thread.start()

    def watch(
        self, job_id: str, on_progress: Callback | None, every: float, on_done: Callback | None
    ) -> None:
        def changed() -> None:
            with self._lock:
                self._dirty.add(job_id)
            self._wake.set()

        unsubscribe = self.app.feed.subscribe(job_id, changed)
        with self._lock:
            self._watches[job_id] = _Watch(
                job_id=job_id,
                on_progress=on_progress,
                every=max(0.01, every),
                on_done=on_done,
                # Without on_progress, nothing is due: it waits for the feed alone.
                next_progress=time.monotonic() + every if on_progress else float("inf"),
                unsubscribe=unsubscribe,
            )
            self._dirty.add(job_id)
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        # A slow poll stays as a safety net for stores that cannot notify every change.
        while not self._stopping.is_set():
            with self._lock:
                due = min((w.next_progress for w in self._watches.values()), default=None)
            timeout = None if due in (None, float("inf")) else max(0.0, due - time.monotonic())
            self._wake.wait(timeout)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                watches = list(self._watches.values())
            for w in watches:
                # Read only when the feed says the job changed, or progress is due: an
                # idle watch costs nothing.
                if w.job_id in dirty or now >= w.next_progress:
                    self._check(w, now)

    def _check(self, w: _Watch, now: float) -> None:
        try:
            record = self.app.get(w.job_id)
        except JobNotFound:
            self._drop(w)
            return
        except Exception:
            log.exception("could not read job %s for its callbacks", w.job_id)
            return
        if record.state in TERMINAL:
            self._drop(w)
            self._call(w.on_done, record)
            return
        if now >= w.next_progress:
            w.next_progress = now + w.every
            if record.state is State.RUNNING:
                self._call(w.on_progress, record)

    def _drop(self, w: _Watch) -> None:
        w.unsubscribe()
        with self._lock:
            self._watches.pop(w.job_id, None)

    def _call(self, fn: Callback | None, record: JobRecord) -> None:
        if fn is None:
            return
        try:
            fn(record)
        except Exception:
            log.exception("callback %r for job %s raised", fn, record.id)
