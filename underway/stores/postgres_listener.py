"""Turning PostgreSQL notifications into in-process wake-ups.

One background thread per store holds one connection that LISTENs on the store's
two channels: job changes (the payload names the store instance that made them,
then the job ids) and new work. A notification from another store instance (in
this process or any other, on any machine) becomes a `ChangeFeed` wake-up; the
store's own writes wake its waiters directly, so its echoes are skipped.

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

import psycopg

from ..feed import WORK, ChangeFeed
from .postgres_schema import quote

log = logging.getLogger("underway.stores.postgres")

RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)  # also the pace of the fallback poll
CONNECT_TIMEOUT = 5  # seconds


class PostgresListener:
    """The LISTEN thread of one store."""

    def __init__(
        self,
        conninfo: str,
        notifier: ChangeFeed,
        *,
        jobs_channel: str,
        work_channel: str,
        own_channel: str,
        origin: str,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._conninfo = conninfo
        self._notifier = notifier
        self._jobs = jobs_channel
        self._work = work_channel
        self.own_channel = own_channel  # only this store's close() notifies it
        self._origin = origin
        self._on_reconnect = on_reconnect  # e.g. drop pooled connections the server lost
        self.connected = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="underway-pg-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, wake: Callable[[], None]) -> None:
        """Stop the thread; `wake` notifies `own_channel`, to end its wait at once."""
        self._closed.set()
        if self.connected.is_set():
            wake()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                ) as conn:
                    for channel in (self._jobs, self._work, self.own_channel):
                        conn.execute(f"LISTEN {quote(channel)}")
                    self.connected.set()
                    if failures:
                        log.info("PostgreSQL notifications are back")
                        self._on_reconnect()
                    failures = 0
                    # Changes made before LISTEN took effect were not announced to us.
                    self._notifier.notify_everything()
                    while not self._closed.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._handle(note.channel, note.payload)
                            if self._closed.is_set():
                                break
            except psycopg.Error as exc:
                if self._closed.is_set():
                    break
                if self.connected.is_set():
                    log.warning("lost the PostgreSQL notification connection: %s", exc)
            self.connected.clear()
            if self._closed.is_set():
                break
            # Waiters read again (and see StoreUnavailable while the server is away).
            self._notifier.notify_everything()
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            self._closed.wait(delay)

    def _handle(self, channel: str, payload: str) -> None:
        origin, _, rest = payload.partition("|")
        if origin == self._origin:
            return  # our own write: its waiters were woken already
        if channel == self._jobs:
            ids = [job_id for job_id in rest.split(",") if job_id]
            if ids:
                self._notifier.notify(*ids)
        elif channel == self._work:
            self._notifier.notify(WORK)
