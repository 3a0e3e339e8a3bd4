"""The claim baton: which of a worker's slots may claim the next job.

On CPython, threads that take turns at the store cost far more than the store's own
work (each hand-over between threads is a context switch, tens of microseconds
here). So one slot at a time holds the baton: it claims a job, runs it, and claims
the next, with no hand-over while jobs are short. When the holder has been busy with
one job for longer than `hand_over` seconds, a waiting slot takes the baton and
claims in its turn, so long jobs still run side by side.
"""

from __future__ import annotations

import threading
import time


class ClaimBaton:
    def __init__(self, hand_over: float = 0.005) -> None:
        self.hand_over = hand_over
        # Taken directly on the way of every job (`with self._lock`: no Python frames),
        # and through the condition only to wait or to wake a waiter.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # slots waiting in `take`
        self._holder: object | None = None
        # When the holder started its latest job; None while it waits for work. Kept
        # across the holder's back-to-back jobs, so that waiting slots sleep on a
        # deadline instead of being woken for every job.
        self._busy_since: float | None = None
        self._sleepers = 0  # waiting slots without a deadline, to be told of a busy holder
        self._closed = False

    def take(self, slot: object) -> bool:
        """Block until `slot` holds the baton; False once the baton is closed."""
        with self._lock:
            while not self._closed:
                if self._holder is None or self._holder is slot:
                    self._holder = slot
                    return True
                busy_since = self._busy_since
                self._waiting += 1
                try:
                    if busy_since is None:
                        self._sleepers += 1
                        try:
                            self._cond.wait()  # the holder waits for work: it claims next
                        finally:
                            self._sleepers -= 1
                        continue
                    left = busy_since + self.hand_over - time.monotonic()
                    if left <= 0:
                        self._holder = slot  # the holder is in a long job: take over
                        self._busy_since = None
                        return True
                    self._cond.wait(left)
                finally:
                    self._waiting -= 1
            return False

    def running(self, slot: object) -> None:
        """`slot` starts a job; another slot takes over if it runs past `hand_over`."""
        with self._lock:
            if self._holder is slot:
                self._busy_since = time.monotonic()
                if self._sleepers:
                    self._cond.notify()

    def idle(self, slot: object) -> None:
        """`slot` found no work; it keeps the baton and waits for work itself."""
        with self._lock:
            if self._holder is slot:
                self._busy_since = None

    def release(self, slot: object) -> None:
        with self._lock:
            if self._holder is slot:
                self._holder = None
                self._busy_since = None
                if self._waiting:
                    self._cond.notify()

    def holds(self, slot: object) -> bool:
        return self._holder is slot

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cond.notify_all()
