"""Real worker processes on a real redis-server: exactly-once, SIGKILL, SIGTERM, outages."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.redis_worker_app import LOG_NAME, build_app
from tests.support.http_server import serve_asgi
from tests.support.redis_server import RedisServer
from tests.support.services import missing
from tests.support.wait import wait_for
from underway import State, Underway
from underway.errors import StoreUnavailable
from underway.http import asgi

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A private redis-server: these tests stop it and start it again."""
    try:
        private = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with private:
        yield private


class Workers:
    """Worker processes running `tests.integration.redis_worker_app`."""

    def __init__(self, url: str, log_dir: Path, **options: float) -> None:
        self.url = url
        self.log_dir = log_dir
        self.options = options
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, n: int = 1) -> list[subprocess.Popen[str]]:
        argv = [sys.executable, "-m", "tests.integration.redis_worker_app", self.url,
                "--log", str(self.log_dir)]  # fmt: skip
        for name, value in self.options.items():
            argv += [f"--{name}", str(value)]
        started = [
            subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(n)
        ]
        for proc in started:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        self.procs += started
        return started

    def by_pid(self, pid: int) -> subprocess.Popen[str]:
        return next(p for p in self.procs if p.pid == pid)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def workers(server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(server.url, tmp_path)
    yield group
    group.stop_all()


@pytest.fixture
def app(server: RedisServer) -> Iterator[Underway]:
    """The submitting side: same tasks, no workers of its own."""
    uw = build_app(server.url)
    yield uw
    uw.close()


def runs(log_dir: Path) -> list[tuple[str, int, int]]:
    path = log_dir / LOG_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        event, token, pid = line.split()
        out.append((event, int(token), int(pid)))
    return out


def worker_pid(worker_id: str | None) -> int:
    assert worker_id is not None
    return int(worker_id.split(":")[1])


def test_four_workers_run_each_of_2000_jobs_exactly_once(
    app: Underway, workers: Workers, tmp_path: Path
) -> None:
    workers.spawn(4)
    total = 2000
    ids = [app.enqueue("record", {"token": i}).id for i in range(total)]
    wait_for(lambda: app.store.count(state=State.SUCCEEDED) == total, timeout=60, interval=0.1,
             what="all jobs succeeded")  # fmt: skip
    done = Counter(token for event, token, _ in runs(tmp_path) if event == "done")
    assert set(done) == set(range(total)) and set(done.values()) == {1}
    assert {app.get(i).attempt for i in ids[:: total // 50]} == {1}
    # The work was shared: every process ran some of it.
    assert len({pid for _, _, pid in runs(tmp_path)}) == 4


def test_sigkill_mid_job_is_requeued_and_finished_by_another(
    app: Underway, server: RedisServer, tmp_path: Path
) -> None:
    group = Workers(server.url, tmp_path, lease=2, workers=1)
    try:
        group.spawn(2)
        job = app.submit("slow", token=1, seconds=1.0)
        started = wait_for(lambda: [pid for e, _, pid in runs(tmp_path) if e == "start"],
                           what="the job started")  # fmt: skip
        running = app.get(job.id)
        victim = worker_pid(running.worker)
        assert started == [victim]
        group.by_pid(victim).send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: app.get(job.id).worker not in (None, running.worker) or
                 app.get(job.id).state is not State.RUNNING, timeout=15,
                 what="the job taken from the dead worker")  # fmt: skip
        # Lease (2 s) plus one janitor round (at most 0.75 s) plus slack.
        assert time.monotonic() - killed_at < 4.5
        final = app.wait(job.id, timeout=15)
        assert final.state is State.SUCCEEDED
        assert final.attempt == 2
        assert final.result["pid"] != victim
        lines = runs(tmp_path)
        assert [e for e, _, _ in lines].count("start") == 2
        assert [(e, pid) for e, _, pid in lines if e == "done"] == [("done", final.result["pid"])]
    finally:
        group.stop_all()


def test_sigterm_hands_back_the_running_job_before_exiting(
    app: Underway, server: RedisServer, tmp_path: Path
) -> None:
    group = Workers(server.url, tmp_path, drain=0.2, workers=1)
    try:
        group.spawn(2)
        job = app.submit("slow", token=7, seconds=3.0)
        wait_for(lambda: runs(tmp_path), what="the job started")
        leaving = group.by_pid(worker_pid(app.get(job.id).worker))
        leaving.send_signal(signal.SIGTERM)
        assert leaving.wait(timeout=15) == 0
        final = app.wait(job.id, timeout=20)
        assert final.state is State.SUCCEEDED
        assert final.result["pid"] != leaving.pid  # handed back, then run by the other
        lines = runs(tmp_path)
        assert ("stopped", 7, leaving.pid) in lines
        assert [e for e, _, _ in lines].count("done") == 1
    finally:
        group.stop_all()


def test_sigterm_lets_a_short_job_finish(
    app: Underway, server: RedisServer, tmp_path: Path
) -> None:
    group = Workers(server.url, tmp_path, drain=10, workers=1)
    try:
        [only] = group.spawn(1)
        job = app.submit("slow", token=3, seconds=0.5)
        wait_for(lambda: runs(tmp_path), what="the job started")
        only.send_signal(signal.SIGTERM)
        assert only.wait(timeout=15) == 0
        final = app.get(job.id)
        assert final.state is State.SUCCEEDED and final.result["pid"] == only.pid
    finally:
        group.stop_all()


def test_redis_outage_is_survived_without_loss_or_double_runs(
    app: Underway, server: RedisServer, tmp_path: Path
) -> None:
    # The default lease (30 s) outlasts the 10 s outage, so no job is taken for lost.
    group = Workers(server.url, tmp_path, lease=30, workers=4)
    try:
        procs = group.spawn(2)
        total = 60
        ids = [app.submit("slow", token=i, seconds=0.2).id for i in range(total)]
        wait_for(lambda: app.store.count(state=State.SUCCEEDED) >= 8, timeout=20,
                 what="some jobs done")  # fmt: skip
        with serve_asgi(asgi(app)) as api, httpx.Client(base_url=api, timeout=10) as http:
            assert http.get(f"/v1/jobs/{ids[-1]}").status_code == 200
            server.stop()
            outage_end = time.monotonic() + 10.0  # Redis stays away for 10 s
            failures = 0
            while time.monotonic() < outage_end:
                with pytest.raises(StoreUnavailable):
                    app.get(ids[-1])
                answer = http.get(f"/v1/jobs/{ids[-1]}")
                assert answer.status_code == 503
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["code"] == "store-unavailable"
                assert int(answer.headers["retry-after"]) >= 1
                submit = http.post("/v1/tasks/slow/jobs", json={"token": 999, "seconds": 0})
                assert submit.status_code == 503
                failures += 1
                time.sleep(0.5)  # pacing the probes of a timed outage, not synchronisation
            assert failures > 0
            assert all(p.poll() is None for p in procs), "a worker died during the outage"
            server.start()
            wait_for(lambda: app.store.count(state=State.SUCCEEDED) == total, timeout=40,
                     interval=0.1, what="every job done after the outage")  # fmt: skip
            # The API answers again by itself.
            assert http.get(f"/v1/jobs/{ids[-1]}").json()["state"] == "succeeded"
        done = Counter(token for event, token, _ in runs(tmp_path) if event == "done")
        assert set(done) == set(range(total))
        assert set(done.values()) == {1}, {t: n for t, n in done.items() if n > 1}
        assert all(p.poll() is None for p in procs)
        # New work still flows to the same processes.
        assert app.submit("slow", token=total, seconds=0).wait(timeout=10)["token"] == total
    finally:
        group.stop_all()
    assert [p.returncode for p in group.procs] == [0, 0]


def test_cancel_reaches_a_worker_in_another_process_promptly(
    app: Underway, workers: Workers, tmp_path: Path
) -> None:
    workers.spawn(1)
    job = app.submit("slow", token=5, seconds=30.0)
    wait_for(lambda: runs(tmp_path), what="the job started")
    asked = time.monotonic()
    app.cancel(job.id)
    final = app.wait(job.id, timeout=10)
    # The worker hears of it at its next lease renewal (at most 1 s apart by default).
    assert time.monotonic() - asked < 2.0
    assert final.state is State.CANCELLED
    assert ("stopped", 5, workers.procs[0].pid) in runs(tmp_path)
