"""The SQLite store's WAL is copied back into the file as it goes, on a thread of its
own (not in the connection that commits a submission or a job's end), so it stays
small however many jobs are written."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.support.wait import wait_for
from underway import Underway
from underway.stores import sqlite_checkpoint
from underway.stores.sqlite import SQLiteStore
from underway.stores.sqlite_checkpoint import Checkpointer


def _app(db: Path) -> Underway:
    uw = Underway(f"sqlite:///{db}")

    @uw.task
    def noop() -> None:
        return None

    return uw


def test_the_wal_stays_small_while_thousands_of_jobs_are_written(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    uw = _app(db)
    try:
        for _ in range(3000):
            uw.submit("noop")
        wal = os.path.getsize(f"{db}-wal")
        page = 4096
        # 3,000 commits of about 4 pages each would make a WAL of about 48 MB left
        # unchecked; checkpoints keep it within the writer's backstop (16 MB).
        assert wal < 3000 * 4 * page // 2, wal
        assert uw.store.count() == 3000
    finally:
        uw.close()


def test_the_log_is_copied_into_the_file_by_the_store_s_own_thread(tmp_path: Path) -> None:
    """A few dozen commits are far from the committing connection's own automatic
    checkpoint (thousands of pages); the thread copies them after `every` commits."""
    db = tmp_path / "jobs.db"
    uw = _app(db)
    store = uw.store
    assert isinstance(store, SQLiteStore)
    try:
        writer_backstop = store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert writer_backstop == sqlite_checkpoint.BACKSTOP_PAGES
        size_before = os.path.getsize(db)
        for _ in range(sqlite_checkpoint.EVERY + 10):
            uw.submit("noop")
        checkpointer = store._checkpointer
        assert checkpointer is not None
        wait_for(lambda: checkpointer.runs >= 1, what="a checkpoint on the thread")
        # What SQLite says the thread's checkpoint wrote back into the file: at least
        # a page (a frame of the log) for each of the commits that made it due. (The
        # file itself is not read here: a reader that ignores the log and its locks
        # may find it half written by SQLite, and report it malformed.)
        assert checkpointer.copied >= sqlite_checkpoint.EVERY
        assert os.path.getsize(db) > size_before  # the file grew by the pages copied
        thread = checkpointer._thread
        assert thread is not None and thread.is_alive()
    finally:
        uw.close()
    assert not thread.is_alive()  # close() stopped it


def test_a_checkpoint_that_fails_is_logged_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts: list[int] = []
    done = threading.Event()

    def connect() -> sqlite3.Connection:
        attempts.append(1)
        if len(attempts) == 2:
            done.set()
        raise sqlite3.OperationalError("database or disk is full")

    caplog.set_level(logging.WARNING, logger="underway")
    checkpointer = Checkpointer(connect, every=3)
    try:
        for _ in range(3):
            checkpointer.committed()
        wait_for(lambda: attempts, what="the first checkpoint")
        for _ in range(3):  # the next `every` commits: the thread tries again
            checkpointer.committed()
        assert done.wait(10)
    finally:
        checkpointer.close()
    logged = [r.getMessage() for r in caplog.records]
    assert any("checkpoint" in m and "disk is full" in m for m in logged), logged
