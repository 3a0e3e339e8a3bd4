"""A deep queue: 100,000 queued jobs, and the reads a dashboard makes stay cheap."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.support.http_server import serve_asgi
from underway import Underway
from underway.http import asgi
from underway.records import POSITION_LIMIT

pytestmark = pytest.mark.slow

DEPTH = 100_000


def test_positions_in_a_queue_of_100000_jobs(uw: Underway) -> None:
    @uw.task
    def noop(n: int) -> None:
        return None

    front = uw.submit_many("noop", [{"n": n} for n in range(10)])
    for start in range(10, DEPTH, 10_000):
        uw.submit_many("noop", [{"n": n} for n in range(start, min(DEPTH, start + 10_000))])
    uw.store.heartbeat("a-worker", ["noop"], time.time() + 60)  # served, all slots busy

    # Near the front, places are exact; deep in, the job says how deep, not a number.
    assert [uw.get(h.id).position for h in front] == list(range(10))
    newest = uw.list_jobs(limit=1).jobs[0]
    assert newest.position is None
    deep = uw.get(newest.id)
    assert deep.waiting is not None and deep.waiting.reason == "queue"
    assert f"more than {POSITION_LIMIT:,} jobs ahead" in deep.waiting.message
    # A page of the newest jobs, and the last page (the front of the queue).
    assert all(r.position is None for r in uw.list_jobs(limit=50).jobs)
    tail = uw.list_jobs(limit=5, cursor=front[5].id).jobs
    assert [r.position for r in tail] == [4, 3, 2, 1, 0]

    with serve_asgi(asgi(uw)) as url, httpx.Client(base_url=url, timeout=10) as http:
        body = http.get(f"/v1/jobs/{newest.id}").json()
        assert body["position"] is None and body["waiting"]["reason"] == "queue"
        assert http.get(f"/v1/jobs/{front[3].id}").json()["position"] == 3
        listed = http.get("/v1/jobs", params={"limit": 50}).json()["jobs"]
        assert len(listed) == 50 and all(j["position"] is None for j in listed)
