"""Honest store health on Redis: start while it is down, say when it lost its data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.redis_worker_app import build_app
from tests.support.http_server import serve_asgi
from tests.support.redis_server import RedisServer
from tests.support.services import missing
from tests.support.wait import wait_for
from underway import JobNotFound, State
from underway.http import asgi

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def down() -> Iterator[RedisServer]:
    """A private redis-server, not started yet."""
    try:
        server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    try:
        yield server
    finally:
        server.close()


def test_a_worker_starts_while_redis_is_down_and_works_once_it_is_up(
    down: RedisServer, tmp_path: Path
) -> None:
    err = tmp_path / "worker.err"
    with err.open("w") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "underway", "worker", "tests.integration.redis_app:uw",
             "--store", down.url, "--workers", "1"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stderr=sink,
            text=True,
        )  # fmt: skip
    try:
        # The claims' own warning: the store's at its opening comes first, and a worker
        # slow to start (a busy machine) might not have tried to claim before Redis is up.
        wait_for(
            lambda: "the store is unavailable; retrying" in err.read_text(),
            timeout=15,
            what="the worker's claims to fail",
        )
        assert worker.poll() is None, err.read_text()  # still there, waiting for Redis
        down.start()
        uw = build_app(down.url)
        try:
            job = uw.submit("noop")
            assert uw.wait(job.id, timeout=20).state is State.SUCCEEDED
        finally:
            uw.close()
        wait_for(lambda: "available again" in err.read_text(), timeout=10, what="the recovery")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert "Traceback" not in err.read_text()


def test_healthz_is_503_while_redis_is_down(down: RedisServer) -> None:
    uw = build_app(down.url)  # opens although Redis is down
    try:
        with serve_asgi(asgi(uw)) as url, httpx.Client(base_url=url, timeout=10) as http:
            r = http.get("/healthz")
            assert r.status_code == 503
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["code"] == "store-unavailable" and "Retry-After" in r.headers
            down.start()
            assert http.get("/healthz").json() == {"status": "ok"}
    finally:
        uw.close()


def test_a_redis_that_lost_its_data_is_told_apart_from_an_unknown_job(down: RedisServer) -> None:
    down.start()
    uw = build_app(down.url)
    uw.start(1)
    try:
        job = uw.submit("noop")
        uw.wait(job.id, timeout=20)
        down.kill()  # no persistence: a restart comes back empty
        down.start()
        wait_for(lambda: uw.lost_data_at() is not None, timeout=15, what="the reset seen")
        with pytest.raises(JobNotFound, match="lost its data") as caught:
            uw.get(job.id)
        assert caught.value.lost_at is not None
        with serve_asgi(asgi(uw)) as url, httpx.Client(base_url=url, timeout=10) as http:
            health = http.get("/healthz").json()
            assert health["status"] == "degraded" and "lost its data" in health["detail"]
            missing_job = http.get(f"/v1/jobs/{job.id}")
            assert missing_job.status_code == 404
            assert "lost its data" in missing_job.json()["detail"]
            # A job that never existed is still plainly unknown.
            never = http.get("/v1/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ").json()
            assert "lost its data" not in never["detail"]
            fresh = uw.submit("noop")  # and the store works again
            assert uw.wait(fresh.id, timeout=20).state is State.SUCCEEDED
    finally:
        uw.close()
