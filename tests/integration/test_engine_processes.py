"""The engine across real processes: SIGKILL recovery, many processes on one file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_for
from underway import ConfigurationError, JobFailed, State, Underway
from underway.stores.sqlite_schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Worker processes running tests/integration/engine_app.py on one store."""

    def __init__(self, store: str, log: Path, lease: float = 30.0) -> None:
        self.env = {
            **os.environ,
            "UNDERWAY_TEST_STORE": store,
            "UNDERWAY_TEST_LOG": str(log),
            "UNDERWAY_TEST_LEASE": str(lease),
            "PYTHONPATH": str(ROOT),
        }
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, workers: int = 2) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.engine_app"],
            env={**self.env, "UNDERWAY_TEST_WORKERS": str(workers)},
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def workers(tmp_path: Path, db_path: Path) -> Iterator[Workers]:
    group = Workers(f"sqlite:///{db_path}", tmp_path / "runs.log", lease=1.0)
    yield group
    group.close()


@pytest.fixture
def client(db_path: Path) -> Iterator[Underway]:
    """The submitting side: the same tasks, no workers of its own."""
    from tests.integration import engine_app

    app = Underway(f"sqlite:///{db_path}")
    app.tasks.update(engine_app.uw.tasks)
    yield app
    app.close()


def test_sigkill_mid_job_requeues_and_another_process_finishes(
    workers: Workers, client: Underway, tmp_path: Path
) -> None:
    first = workers.spawn()
    marker = tmp_path / "started"
    handle = client.submit("hang_once", marker=str(marker))
    wait_for(marker.exists, what="the job to start in the first worker")
    assert handle.refresh().state is State.RUNNING
    first.send_signal(signal.SIGKILL)
    first.wait()
    queued = [client.submit("record_run", n=i) for i in range(5)]

    workers.spawn()  # a restart on the same file
    assert handle.wait(30) == "attempt 2"
    record = handle.refresh()
    assert record.attempt == 2
    for job in queued:
        assert job.wait(30) is not None


def test_sigkill_with_no_attempts_left_fails_with_worker_lost(
    workers: Workers, client: Underway, tmp_path: Path
) -> None:
    first = workers.spawn()
    marker = tmp_path / "started"
    handle = client.submit("hang_always", marker=str(marker))
    wait_for(marker.exists, what="the job to start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.spawn()
    with pytest.raises(JobFailed) as info:
        handle.wait(30)
    assert info.value.record.error is not None
    assert info.value.record.error.type == "WorkerLost"


def test_four_processes_share_one_file_and_run_each_job_once(
    workers: Workers, client: Underway, tmp_path: Path
) -> None:
    handles = [client.submit("record_run", n=i) for i in range(1000)]
    for _ in range(4):
        workers.spawn(workers=2)
    handles += [client.submit("record_run", n=i) for i in range(1000, 2000)]
    for handle in handles:
        assert handle.wait(120) is not None
    lines = (tmp_path / "runs.log").read_text().split()
    runs = Counter(int(n) for n in lines[0::2])
    pids = set(lines[1::2])
    assert sorted(runs) == list(range(2000))
    assert set(runs.values()) == {1}, "some job ran more than once"
    assert len(pids) >= 2, "the work was not shared between processes"
    assert all(h.refresh().attempt == 1 for h in handles)


def test_sigterm_lets_a_worker_hand_back_its_job(
    workers: Workers, client: Underway, tmp_path: Path
) -> None:
    first = workers.spawn()
    marker = tmp_path / "started"
    handle = client.submit("hang_once", marker=str(marker))
    wait_for(marker.exists, what="the job to start")
    first.terminate()
    assert first.wait(30) == 0
    assert handle.refresh().state is State.QUEUED
    workers.spawn()
    assert handle.wait(30).startswith("attempt")


def test_jobs_survive_a_restart(db_path: Path) -> None:
    uw = Underway(f"sqlite:///{db_path}")

    @uw.task
    def later(n: int) -> int:
        return n * 2

    job_id = uw.submit("later", n=21).id
    uw.close()

    again = Underway(f"sqlite:///{db_path}")
    again.tasks.update(uw.tasks)
    try:
        again.start(1)
        assert again.job(job_id).wait(10) == 42
    finally:
        again.close()


def test_unusable_database_paths_give_one_line_errors(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigurationError) as info:
        Underway(f"sqlite:///{corrupt}").store.count()
    assert str(corrupt) in str(info.value) and "\n" not in str(info.value)

    missing = tmp_path / "no" / "such" / "folder" / "jobs.db"
    with pytest.raises(ConfigurationError) as info:
        Underway(f"sqlite:///{missing}").store.count()
    assert str(missing) in str(info.value)

    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigurationError):
            Underway(f"sqlite:///{locked / 'jobs.db'}").store.count()


def test_schema_version_is_recorded_and_newer_files_are_refused(db_path: Path) -> None:
    Underway(f"sqlite:///{db_path}").store.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigurationError) as info:
        Underway(f"sqlite:///{db_path}").store.count()
    assert "newer" in str(info.value)


def test_an_unversioned_file_is_migrated(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE unrelated (x INTEGER)")  # a file from before versioning
    uw = Underway(f"sqlite:///{db_path}")
    try:
        assert uw.store.count() == 0
    finally:
        uw.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_file_of_the_previous_version_keeps_its_jobs_when_migrated(db_path: Path) -> None:
    # A version-3 file written by the previous release: a finished job with its
    # events and an idempotency key, and a queued one.
    from underway.app import _params_hash
    from underway.stores.sqlite_schema import MIGRATIONS, statements

    with sqlite3.connect(db_path, isolation_level=None) as db:
        for version in (1, 2, 3):
            for statement in statements(MIGRATIONS[version]):
                db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        row = (
            "INSERT INTO jobs (id, task, queue, priority, state, params, result, attempt, "
            "created_at, finished_at, run_at, keep_for, event_seq, idempotency_key, meta, "
            "first_event) VALUES (?, 'add', 'default', 0, ?, '{\"a\":1}', ?, ?, 1.0, ?, "
            '1.0, 3600, 1, ?, ?, \'{"state":"queued"}\')'
        )
        meta = json.dumps({"params_hash": _params_hash("add", {"a": 1})})
        db.execute(row, ("01JOLD0000000000000000DONE", "succeeded", "2", 1, 2.0, "\x00key", meta))
        db.execute(row, ("01JOLD000000000000000QUEUE", "queued", None, 0, None, None, None))
    uw = Underway(f"sqlite:///{db_path}")

    @uw.task
    def add(a: int) -> int:
        return a + 1

    try:
        done = uw.get("01JOLD0000000000000000DONE")
        assert (done.state.value, done.result, done.params) == ("succeeded", 2, {"a": 1})
        assert [e.data for e in uw.events_after(done.id)] == [{"state": "queued"}]
        # Its idempotency key still finds it; a new key makes a new job.
        assert uw.enqueue("add", {"a": 1}, idempotency_key="key").id == done.id
        assert uw.enqueue("add", {"a": 1}, idempotency_key="other").id != done.id
        uw.start()
        assert uw.wait("01JOLD000000000000000QUEUE", timeout=30).result == 2
    finally:
        uw.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_jobs_waiting_behind_a_long_job_are_handed_back_before_a_sigkill(
    workers: Workers, client: Underway, tmp_path: Path
) -> None:
    # A worker with a backlog of short jobs claims them in batches: the jobs after
    # the hanging one wait in it, claimed but not started, until it hands them back
    # (the long job holds its only slot), so the kill does not take them down too.
    marker = tmp_path / "started"
    before = [client.submit("record_run", n=i) for i in range(20)]
    hang = client.submit("hang_always", marker=str(marker))
    after = [client.submit("record_run", n=i) for i in range(20, 40)]
    first = workers.spawn(workers=1)
    wait_for(marker.exists, what="the hanging job to start")
    wait_for(
        lambda: all(client.get(h.id).state is not State.RUNNING for h in after),
        what="the waiting jobs to be handed back",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.spawn()
    for handle in after:  # they never started: no attempt was used up
        assert handle.wait(30) is not None
        assert handle.refresh().attempt == 1
    for handle in before:  # they ran; an end the killed worker had not written is
        record = client.wait(handle.id, timeout=30)  # lost with it, as any would be
        assert record.state is State.SUCCEEDED or (
            record.error is not None and record.error.type == "WorkerLost"
        )
    # The hanging job started once and has no retries: it is not started again.
    record = client.wait(hang.id, timeout=30)
    assert record.state is State.FAILED and record.attempt == 1
    assert record.error is not None and record.error.type == "WorkerLost"
