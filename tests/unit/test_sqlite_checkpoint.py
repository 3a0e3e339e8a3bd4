"""The SQLite store's WAL is copied back into the file as it goes (on a thread of its
own), so it stays small however many jobs are written."""

from __future__ import annotations

import os
from pathlib import Path

from underway import Underway


def test_the_wal_stays_small_while_thousands_of_jobs_are_written(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    uw = Underway(f"sqlite:///{db}")

    @uw.task
    def noop() -> None:
        return None

    try:
        for _ in range(3000):
            uw.submit("noop")
        wal = os.path.getsize(f"{db}-wal")
        page = 4096
        # 3,000 commits of about 4 pages each would make a WAL of about 48 MB left
        # unchecked; checkpoints every couple of hundred commits keep it a few MB.
        assert wal < 3000 * 4 * page // 2, wal
        assert uw.store.count() == 3000
    finally:
        uw.close()
