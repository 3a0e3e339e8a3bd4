"""Checkpoints of the SQLite store's write-ahead log, on a thread of their own.

In WAL mode every commit appends the pages it changed to the log, and a checkpoint
copies them back into the database file, with an fsync of each file when
`synchronous = NORMAL`. SQLite runs one in the committing connection once the log
holds `wal_autocheckpoint` pages (1,000 by default): every hundred or so jobs, one
submission or one worker's end waited milliseconds for the disk, which made most of
an embedded round trip's p99.

`Checkpointer` does that work beside the writers instead: after every `every`
commits of its store it wakes its thread, which runs a PASSIVE checkpoint on a
connection of its own (a PASSIVE checkpoint takes no lock a writer waits for, and
the GIL is let go while SQLite works). The log starts over at the next write after a
checkpoint that copied it whole. Under a write load that never pauses that moment
may not come, so the committing connection keeps its own automatic checkpoint as a
backstop, at `BACKSTOP_PAGES`: by then the thread has copied nearly all of it.

A checkpoint that fails (a full disk, a file made read-only) is logged and tried
again after the next `every` commits; the writers see their own errors themselves.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

log = logging.getLogger("underway.stores.sqlite")

# The committing connection's own automatic checkpoint, as a backstop (pages of 4 KiB).
BACKSTOP_PAGES = 4000
# Commits between checkpoints on the thread. A job's transaction changes a handful of
# pages, so the log holds about the 1,000 pages at which SQLite would have checkpointed
# in the committing connection. Checkpoints every 64 commits cost the writers more
# than they saved them: the thread's copying and syncing shares the two cores.
EVERY = 256


class Checkpointer:
    """Checkpoints the log of the database `connect()` opens, every `every` commits."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], every: int = EVERY) -> None:
        self.every = every
        self.runs = 0  # checkpoints done, for tests and curious operators
        self.copied = 0  # frames of the log in the file after the last one (ditto)
        self._connect = connect
        self._commits = 0
        self._due = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def committed(self) -> None:
        """Count one commit of the store (called under its write lock)."""
        self._commits += 1
        if self._commits >= self.every:
            self._commits = 0
            if self._thread is None:
                self._start()
            self._due.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name="underway-sqlite-checkpoint", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                self._due.clear()
                if self._closed:
                    return
                try:
                    if db is None:
                        db = self._connect()
                    row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.copied = int(row[2]) if row is not None else 0
                    self.runs += 1
                except sqlite3.Error as exc:
                    log.warning("checkpoint of the SQLite job store's log failed: %s", exc)
        finally:
            if db is not None:
                db.close()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running)."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        self._due.set()
        if thread is not None:
            thread.join(timeout=10)
