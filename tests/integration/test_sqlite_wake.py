"""Wake-ups between processes on one SQLite file: datagrams after COMMIT, a slow poll
as the fallback (`underway/stores/sqlite_wake.py`)."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from underway import Underway
from underway.feed import WORK
from underway.stores.sqlite import SQLiteStore
from underway.stores.sqlite_wake import WakeChannel, wake_folder

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600.0


def noop() -> None:
    return None


class IdleWorker:
    """tests/integration/wake_worker.py in a process of its own; counts its "idle" lines."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.wake_worker", str(db)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.idle = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_idle(self, count: int) -> None:
        """Until its slots have gone to sleep waiting for work `count` times in all."""
        while self.idle < count:
            try:
                line = self.lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError(f"{self.idle} idle, waiting for {count}") from None
            if line == "idle":
                self.idle += 1

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(15)  # the pipe ends with the process
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def quiet_app(db_path: Path) -> Iterator[Underway]:
    """A submitting app whose store never polls (in the test's time): only the channel
    can tell it about another process's changes."""
    from tests.integration import wake_worker

    app = Underway(SQLiteStore(str(db_path), fallback_interval=HOUR))
    app.task(wake_worker.pid)
    app.task(noop)
    yield app
    app.close()


def test_a_job_submitted_here_is_started_by_an_idle_worker_in_another_process(
    quiet_app: Underway, db_path: Path
) -> None:
    # The worker's idle slots and both fallback polls sleep for an hour: the job starts,
    # and the waiter here wakes, only through the datagrams.
    worker = IdleWorker(db_path)
    try:
        worker.wait_idle(2)  # both slots asleep
        first = quiet_app.submit("pid")
        assert first.wait(60) == worker.proc.pid
        worker.wait_idle(3)  # the slot that ran it is asleep again
        second = quiet_app.submit("pid")
        assert second.wait(60) == worker.proc.pid
    finally:
        worker.close()


def test_a_change_wakes_the_watchers_of_that_job_only(db_path: Path) -> None:
    writer = Underway(SQLiteStore(str(db_path), fallback_interval=HOUR))
    writer.task(noop)
    watcher = SQLiteStore(str(db_path), fallback_interval=HOUR)
    assert watcher.settled.wait(5)  # its one look at everything after opening is done
    try:
        feed = watcher.notifier
        work_seen = feed.version(WORK)
        other = writer.submit("noop")
        assert feed.wait(WORK, work_seen, 60) != work_seen  # its datagram came
        other_seen = feed.version(other.id)
        work_seen = feed.version(WORK)
        unknown = feed.version("a job nobody changed")
        job = writer.submit("noop")
        assert feed.wait(WORK, work_seen, 60) != work_seen  # the datagram named the work...
        assert feed.version(job.id) != unknown  # ...and the job
        assert feed.version(other.id) == other_seen  # not the other job
    finally:
        watcher.close()
        writer.close()


def test_a_newcomer_sees_a_commit_whose_writer_had_not_listed_it_yet(db_path: Path) -> None:
    # A writer uses its listing of the folder for a moment without looking again, so a
    # process that has just bound may get no datagram for a commit made in that moment:
    # the newcomer's one look at everything, shortly after it binds, covers it.
    writer = Underway(SQLiteStore(str(db_path), fallback_interval=HOUR))
    writer.task(noop)
    writer.submit("noop")  # the writer has listed the folder
    newcomer = SQLiteStore(str(db_path), fallback_interval=HOUR)
    try:
        seen = newcomer.notifier.version(WORK)
        channel = writer.store._wake  # type: ignore[attr-defined]
        assert channel is not None
        channel._peers, channel._listing_trusted = [], True  # a listing from before it bound
        channel._listed_at = time.monotonic_ns()
        writer.submit("noop")
        assert newcomer.notifier.wait(WORK, seen, 30) != seen
    finally:
        newcomer.close()
        writer.close()


def _stale_socket(folder: str, name: str) -> str:
    """A socket file whose process is gone: bound, then closed without unlinking."""
    path = os.path.join(folder, name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.close()
    return path


def test_sockets_of_dead_processes_are_removed(db_path: Path) -> None:
    first = SQLiteStore(str(db_path), fallback_interval=HOUR)
    folder = first._wake.folder if first._wake else ""
    assert folder
    stale = _stale_socket(folder, "999999999-deadbeef.s")
    second = SQLiteStore(str(db_path), fallback_interval=HOUR)  # cleans up on opening
    assert not os.path.exists(stale)
    assert os.path.exists(first._wake.path if first._wake else "")

    later = _stale_socket(folder, "999999999-0badf00d.s")
    app = Underway(second)
    app.task(noop)
    # A write sends to every socket it listed: the stale one refuses and goes. (A
    # listing made a moment ago serves the writes of the next `LIST_FOR_NS` without
    # looking at the folder, so the first write may not know the socket yet.)
    deadline = time.monotonic() + 10
    app.submit("noop")
    while os.path.exists(later) and time.monotonic() < deadline:
        app.submit("noop")
    assert not os.path.exists(later)
    app.close()
    closed = first._wake.path if first._wake else ""
    assert os.path.isdir(folder)
    first.close()
    assert not os.path.exists(closed)  # a store that closes removes its own socket...
    assert not os.path.exists(folder)  # ...and the folder, when it was the last one


def test_a_peer_whose_buffer_was_full_is_told_to_wake_everything(tmp_path: Path) -> None:
    folder = str(tmp_path / "wake")
    os.mkdir(folder)
    sender, receiver = WakeChannel(folder), WakeChannel(folder)
    try:
        while not sender.owes:  # the receiver does not read: its buffer fills up
            sender.send(["x" * 1000])
        taken = receiver.receive(1.0)
        assert taken is not None and taken[0] == {"x" * 1000} and not taken[2]
        assert receiver.receive(0.0) is None  # all taken
        sender.send(["job"])  # owed: the next datagram says "everything"
        assert not sender.owes
        assert receiver.receive(1.0) == (set(), 0, True)
    finally:
        sender.close()
        receiver.close()


def test_the_fallback_wakes_waiters_for_a_writer_without_the_channel(db_path: Path) -> None:
    watcher = SQLiteStore(str(db_path), fallback_interval=0.05)
    writer = Underway(SQLiteStore(str(db_path), wake=False))
    writer.task(noop)
    try:
        seen = watcher.notifier.version("some job")
        writer.submit("noop")
        assert watcher.notifier.wait("some job", seen, 60) != seen
    finally:
        writer.close()
        watcher.close()


def test_a_path_too_long_for_a_socket_uses_a_folder_keyed_by_the_file(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    db = deep / "jobs.db"
    first = SQLiteStore(str(db), fallback_interval=HOUR)
    second = SQLiteStore(str(db), fallback_interval=HOUR)
    try:
        st = os.stat(db)
        keyed = os.path.join(tempfile.gettempdir(), f"underway-{st.st_dev}-{st.st_ino}.wake")
        assert wake_folder(str(db)) == keyed
        assert first._wake is not None and first._wake.folder == keyed
        seen = second.notifier.version(WORK)
        app = Underway(first)
        app.task(noop)
        app.submit("noop")
        assert second.notifier.wait(WORK, seen, 60) != seen
    finally:
        second.close()
        first.close()


def test_a_channel_makes_its_folder_again_when_the_last_one_out_removed_it(
    tmp_path: Path,
) -> None:
    folder = str(tmp_path / "wake")
    os.mkdir(folder)
    first = WakeChannel(folder)
    first.close()  # the last one out removes the folder...
    assert not os.path.exists(folder)
    second = WakeChannel(folder)  # ...and a newcomer that had looked before binds anyway
    try:
        assert os.path.exists(second.path)
    finally:
        second.close()


def test_a_writer_lists_a_folder_just_changed_once_a_moment_not_at_every_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Right after a process binds, the folder's mtime is too recent to tell a later
    # bind by: the listing is not trusted, and it is made again, but once in a while
    # (`LIST_FOR_NS`), not at every commit's send (which cost every write of a store
    # that had just opened two system calls and a directory read).
    from underway.stores import sqlite_wake

    channel = WakeChannel(wake_folder(str(tmp_path / "jobs.db")) or "")
    listings = 0
    scandir = os.scandir

    def counting(path: str) -> Iterator[os.DirEntry[str]]:
        nonlocal listings
        listings += 1
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    try:
        start = time.monotonic_ns()
        for _ in range(200):
            channel.send(["job"])
        elapsed = time.monotonic_ns() - start
        assert listings <= 2 + elapsed // sqlite_wake.LIST_FOR_NS
    finally:
        channel.close()
