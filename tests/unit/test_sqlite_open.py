"""Opening a SQLite store while another process is opening the same new file."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from underway.stores.sqlite import _switch_to_wal


def _busy() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    return exc


class FirstOpen:
    """A connection to a new file that another process is switching to WAL: SQLite
    answers the switch with "database is locked" at once (not after its busy timeout)
    until the other one is done; then the file is in WAL mode."""

    def __init__(self, busy_times: int) -> None:
        self.busy_times = busy_times
        self.asked: list[str] = []

    def execute(self, sql: str) -> Any:
        self.asked.append(sql)
        if self.busy_times:
            self.busy_times -= 1
            raise _busy()
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_a_file_busy_with_another_opener_is_put_in_wal_mode_once_it_is_free() -> None:
    # A worker started beside a submitting CLI on a new file used to exit with
    # "cannot open job store ...: database is locked".
    db = FirstOpen(busy_times=3)
    assert _switch_to_wal(db, patience=10) == "wal"  # type: ignore[arg-type]
    assert len(db.asked) == 4


def test_a_file_that_stays_busy_is_an_error_in_the_end() -> None:
    db = FirstOpen(busy_times=10**9)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _switch_to_wal(db, patience=0.05)  # type: ignore[arg-type]


def test_a_file_already_in_wal_mode_is_left_alone(tmp_path: Any) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path, isolation_level=None) as first:
        first.execute("PRAGMA journal_mode = WAL")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        assert _switch_to_wal(db) == "wal"
    finally:
        db.close()
