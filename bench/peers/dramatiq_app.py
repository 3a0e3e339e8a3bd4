"""The Dramatiq side of `bench/bench_peers.py`: one no-op actor that counts its runs."""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

URL = os.environ["PEERS_REDIS_URL"]
dramatiq.set_broker(RedisBroker(url=URL))
counter = redis.Redis.from_url(URL)


@dramatiq.actor(max_retries=0)
def noop() -> None:
    counter.incr("peers:done")
