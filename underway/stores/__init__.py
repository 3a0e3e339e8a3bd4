"""Stores, chosen by URL: `sqlite:///path`, `memory://`, `redis://host:port/db`,
`postgresql://user@host/db?schema=NAME`."""

from __future__ import annotations

from ..errors import ConfigurationError
from ..feed import ChangeFeed
from ..records import Page
from .base import Store

__all__ = ["ChangeFeed", "Page", "Store", "open_store"]


def open_store(url: str | Store | None = None) -> Store:
    """Open the store a URL names; a bare path is a SQLite file. Default: ./underway.db."""
    if isinstance(url, Store):
        return url
    if url is None or url == "":
        url = "sqlite:///underway.db"
    if url.startswith("memory:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(":memory:", url="memory://")
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        path = url[len("sqlite:") :]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            path = path[2:]
        if not path:
            raise ConfigurationError(f"no file in store URL {url!r} (e.g. sqlite:///underway.db)")
        return SQLiteStore(path, url=url)
    if url.startswith(("redis:", "rediss:", "unix:")):
        try:
            from .redis import RedisStore
        except ImportError as exc:  # redis-py is an extra
            raise ConfigurationError(
                f"the Redis store needs redis-py: pip install 'underway[redis]' ({exc})"
            ) from None
        return RedisStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # psycopg is an extra
            raise ConfigurationError(
                f"the PostgreSQL store needs psycopg: pip install 'underway[postgres]' ({exc})"
            ) from None
        return PostgresStore(url)
    if "://" not in url:
        from .sqlite import SQLiteStore

        return SQLiteStore(url, url=f"sqlite:///{url}")
    scheme = url.split("://", 1)[0]
    raise ConfigurationError(
        f"unknown store URL scheme {scheme!r} in {url!r} (use sqlite:///path, redis://host, "
        "postgresql://host/db or memory://)"
    )
