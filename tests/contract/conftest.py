"""Fixtures of the store contract suite: one `store` per kind, and the servers.

`UNDERWAY_TEST_REDIS_URL` points the Redis runs at a server of your own (its
database is flushed before each test; test processes side by side use the next
ones); otherwise a private `redis-server` is started on a free port for the session.
Likewise `UNDERWAY_TEST_POSTGRES_URL` names a PostgreSQL database of your own (each
test gets a schema of its own in it, dropped afterwards); otherwise a private cluster
is made for the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.postgres_server import PostgresServer, drop_schema, fresh_schema, with_schema
from tests.support.redis_server import RedisServer
from tests.support.services import missing
from underway.stores import Store, open_store


@contextmanager
def _started_redis() -> Iterator[RedisServer]:
    """A redis-server started on a free port, stopped after (a missing binary fails
    or skips, as `missing` says)."""
    try:
        server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the session (stop/start it for fault tests)."""
    with _started_redis() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop it, kill its clients or
    change its settings."""
    with _started_redis() as server:
        yield server


@pytest.fixture(scope="session")
def redis_session_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("UNDERWAY_TEST_REDIS_URL")
    if url:
        # Test processes side by side (pytest-xdist's gw0, gw1, ...) flush databases
        # of their own: the URL's, and the ones after it.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if worker.startswith("gw"):
            parts = urlsplit(url)
            first = int(parts.path.strip("/") or 0)
            url = urlunsplit(parts._replace(path=f"/{first + int(worker[2:])}"))
        return url
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def redis_url(redis_session_url: str) -> str:
    """The URL of an empty Redis database."""
    import redis

    client = redis.Redis.from_url(redis_session_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_session_url


@pytest.fixture(scope="session")
def postgres_session_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("UNDERWAY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        missing(f"PostgreSQL ({exc})")
    with server:
        yield server.url


@pytest.fixture
def postgres_url(postgres_session_url: str) -> Iterator[str]:
    """The URL of an empty schema of its own, dropped after the test."""
    name = fresh_schema()
    yield with_schema(postgres_session_url, name)
    drop_schema(postgres_session_url, name)


# `redis-scripts`: the same Redis store with its scripts run by EVALSHA, as it runs them
# where Redis has no functions (before 7.0) or the user may not call them.
STORE_KINDS = ["memory", "sqlite", "redis", "redis-scripts", "postgres"]


@pytest.fixture(params=STORE_KINDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    kind = request.param
    if kind == "redis-scripts":
        monkeypatch.setenv("UNDERWAY_REDIS_FUNCTIONS", "0")
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    if kind == "postgres":
        pg: str = request.getfixturevalue("postgres_url")
        return pg
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def other_store(store: Store, store_url: str) -> Iterator[Store]:
    """A second handle on the same jobs, as another process would open it
    (the same object for memory://, which cannot be shared)."""
    if store_url == "memory://":
        yield store
        return
    opened = open_store(store_url)
    yield opened
    opened.close()
