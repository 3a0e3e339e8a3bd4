"""A submission that returned is on disk, whatever kills the process after it.

The SQLite store's log is checkpointed by a thread of the store (see
`underway.stores.sqlite_checkpoint`) every 256 commits, beside the submissions: a
process SIGKILLed in the middle of a stream of them, so at any point of a checkpoint,
leaves a file that opens clean and holds every job it acknowledged.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.crash.procs import ROOT
from underway.stores.sqlite import SQLiteStore
from underway.stores.sqlite_checkpoint import EVERY


def _submit_until_killed(url: str, acknowledged: int) -> list[str]:
    """Run the submitter until it has printed `acknowledged` ids (and a few more
    meanwhile), SIGKILL it, and return every id it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.crash.submitter_app", url],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        ids = [proc.stdout.readline().strip() for _ in range(acknowledged)]
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The last line may be cut by the kill; a whole id is 26 characters.
    ids += [line for line in rest.splitlines() if len(line) == 26]
    return ids


def test_every_job_a_sigkilled_submitter_was_told_of_is_in_the_file(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    url = f"sqlite:///{db}"
    told: list[str] = []
    # Killed after different numbers of jobs: each run crosses several of the thread's
    # checkpoints, and the kill lands wherever the stream and the thread then are.
    for acknowledged in (4 * EVERY + 17, 6 * EVERY + 101, 5 * EVERY + 203):
        told += _submit_until_killed(url, acknowledged)
        check = sqlite3.connect(db)
        try:
            assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            check.close()
    store = SQLiteStore(str(db))
    try:
        missing = [job_id for job_id in told if store.get(job_id) is None]
        assert missing == [], f"{len(missing)} of {len(told)} acknowledged jobs are gone"
        assert store.count() >= len(set(told))
    finally:
        store.close()
