"""Stores for the crash tests: a SQLite file, a private redis-server, or a schema of
its own on a private PostgreSQL server (one cluster for the session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres_server import PostgresServer, drop_schema, fresh_schema, with_schema
from tests.support.redis_server import RedisServer
from tests.support.services import missing


def redis_url() -> Iterator[str]:
    try:
        server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """`UNDERWAY_TEST_POSTGRES_URL`, or a private cluster for the session."""
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


def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    base: str = request.getfixturevalue("postgres_server_url")
    name = fresh_schema()
    yield with_schema(base, name)
    drop_schema(base, name)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes it runs on a SQLite file, on a private redis-server and on
    a private PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    elif request.param == "redis":
        yield from redis_url()
    else:
        yield from postgres_url(request)


@pytest.fixture
def redis_store_url() -> Iterator[str]:
    yield from redis_url()


@pytest.fixture
def postgres_store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from postgres_url(request)
