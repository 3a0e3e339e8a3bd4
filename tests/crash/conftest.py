"""Stores for the crash tests: a SQLite file, or a private redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.services import missing


def redis_url() -> Iterator[str]:
    try:
        server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with server:
        yield server.url


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes it runs on a SQLite file and on a private redis-server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        yield from redis_url()


@pytest.fixture
def redis_store_url() -> Iterator[str]:
    yield from redis_url()
