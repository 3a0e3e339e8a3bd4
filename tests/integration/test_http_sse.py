"""Server-Sent Events: order, ids, resume without loss or duplicates, pings, end."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_server import CuttingProxy, Gates, api_server, register_test_tasks, until
from underway import Job, Underway
from underway.client import Client, parse_sse
from underway.records import Event, JobRecord
from underway.stores.sqlite import SQLiteStore


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def url(uw: Underway, gates: Gates) -> Iterator[str]:
    with api_server(uw, ping_interval=0.2) as base:
        yield base


def read_events(response: httpx.Response) -> Iterator[tuple[int, str, Any]]:
    for event_id, kind, data in parse_sse(response.iter_lines()):
        assert event_id is not None
        yield int(event_id), kind, json.loads(data)


def test_stream_has_every_kind_in_order_and_ends_after_done(url: str, gates: Gates) -> None:
    for i in range(2):
        gates.open(f"all:{i}")
    with httpx.Client(base_url=url, timeout=30) as http:
        job = http.post(
            "/v1/tasks/stepper/jobs",
            json={"steps": 2, "gate": "all"},
            headers={"Prefer": "wait=10"},
        ).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            events = list(read_events(r))
    ids = [e[0] for e in events]
    assert ids == list(range(1, len(ids) + 1))
    kinds = [e[1] for e in events]
    assert kinds[0] == "state" and kinds[-1] == "done"
    assert {"state", "progress", "output", "log", "done"} <= set(kinds)
    assert [e[2]["item"] for e in events if e[1] == "output"] == [{"i": 0}, {"i": 1}]
    assert events[-1][2]["result"] == {"steps": 2}


def test_resume_after_a_client_disconnect(url: str, gates: Gates) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = http.post("/v1/tasks/stepper/jobs", json={"steps": 4, "gate": "r"}).json()["id"]
        seen: list[tuple[int, str, Any]] = []
        gates.open("r:0")
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            for event in read_events(r):
                seen.append(event)
                if event[1] == "output":
                    break  # drop the connection mid-stream
        # The job goes on while nobody listens.
        gates.open("r:1")
        gates.open("r:2")
        until(lambda: http.get(f"/v1/jobs/{job_id}").json()["output_count"] == 3)
        gates.open("r:3")
        last = seen[-1][0]
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last)}
        ) as r:
            seen += list(read_events(r))
        # ?after= resumes the same way (and the header wins over it).
        with http.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": last}) as r:
            again = list(read_events(r))
    ids = [e[0] for e in seen]
    assert ids == list(range(1, len(ids) + 1)), "no loss, no duplicates"
    assert [e[2]["item"]["i"] for e in seen if e[1] == "output"] == [0, 1, 2, 3]
    assert seen[-1][1] == "done"
    assert again == seen[last:]


def test_client_reconnects_after_the_network_drops(url: str, gates: Gates) -> None:
    proxy = CuttingProxy(int(url.rsplit(":", 1)[1]))
    try:
        with Client(proxy.url, reconnect_delay=0.05) as client:
            job = client.submit("stepper", steps=3, gate="net")
            seen = []
            gates.open("net:0")
            for event in job.events(timeout=30):
                seen.append(event)
                if event.kind.value == "output" and event.data["item"]["i"] == 0:
                    proxy.cut()  # the server side of the stream is gone
                    gates.open("net:1")
                    gates.open("net:2")
        assert proxy.accepted >= 2  # the first connection, and at least one reconnect
        ids = [e.seq for e in seen]
        assert ids == list(range(1, len(ids) + 1))
        assert [e.data["item"]["i"] for e in seen if e.kind.value == "output"] == [0, 1, 2]
        assert seen[-1].kind.value == "done"
    finally:
        proxy.close()


def test_pings_keep_an_idle_stream_open(url: str, gates: Gates) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = http.post("/v1/tasks/hold/jobs", json={"gate": "ping"}).json()["id"]
        pings = 0
        with http.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            for line in r.iter_lines():
                if line.startswith(":"):
                    pings += 1
                    if pings == 2:
                        gates.open("ping")
                if line.startswith("event: done"):
                    break
        assert pings >= 2


class CountingStore(SQLiteStore):
    """Counts the reads of jobs' records and events."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0

    def get(self, job_id: str) -> JobRecord | None:
        self.reads += 1
        return super().get(job_id)

    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        self.reads += 1
        return super().events(job_id, after, limit)


def test_an_idle_stream_only_pings_and_still_sees_a_change(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "jobs.db"))
    uw = Underway(store)

    @uw.task
    def parked() -> None:
        return None

    job = uw.submit("parked")  # no workers: it stays queued, nothing changes
    try:
        with (
            api_server(uw, ping_interval=0.1, start_workers=False) as base,
            httpx.Client(base_url=base, timeout=30) as http,
            http.stream("GET", f"/v1/jobs/{job.id}/events") as r,
        ):
            lines = r.iter_lines()
            for line in lines:
                if line.startswith(":"):  # the first ping: the stream is idle now
                    break
            store.reads = 0
            pings = 0
            for line in lines:
                if line.startswith(":"):
                    pings += 1
                    if pings == 10:
                        break
            assert store.reads == 0  # a second of pings, and no read
            uw.cancel(job.id)  # a change: the stream reads it, and ends
            events = list(parse_sse(lines))
        kinds = [kind for _, kind, _ in events]
        assert kinds[-1] == "done"
        assert json.loads(events[-1][2])["state"] == "cancelled"
    finally:
        uw.close()


def test_stream_of_a_finished_job_replays_and_ends(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        job = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=10"}).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            events = list(read_events(r))
        assert events[-1][1] == "done"
        # Resuming past the end: nothing more, and the stream still ends.
        last = events[-1][0]
        with http.stream(
            "GET", f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": str(last)}
        ) as r:
            assert list(read_events(r)) == []


def test_stream_errors_are_problems(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.get("/v1/jobs/NOPE/events")
        assert r.status_code == 404 and r.json()["code"] == "job-not-found"
        job = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=10"}).json()
        r = http.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "abc"})
        assert r.status_code == 422 and r.json()["code"] == "validation-failed"


def test_failed_job_done_event_has_no_traceback(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        job = http.post("/v1/tasks/boom/jobs", json={}, headers={"Prefer": "wait=10"}).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            events = list(read_events(r))
    done = events[-1][2]
    assert done["state"] == "failed" and done["error"]["type"] == "ValueError"
    assert done["error"]["traceback"] is None


def test_many_watchers_of_one_job_each_get_every_event_once(uw: Underway, url: str) -> None:
    # The watchers of a job share their store reads; each must still get exactly the
    # events after its own position, in order, through a burst longer than one read.
    go = threading.Event()

    @uw.task
    def flood(job: Job, n: int) -> int:
        for i in range(30):
            job.emit(i)
        go.wait(30)
        for i in range(30, n):
            job.emit(i)
        return n

    watchers = 12
    with httpx.Client(base_url=url, timeout=30) as http:
        job_id = http.post("/v1/tasks/flood/jobs", json={"n": 2500}).json()["id"]
        until(lambda: http.get(f"/v1/jobs/{job_id}").json()["output_count"] == 30)
        results: list[list[tuple[int, str, Any]]] = [[] for _ in range(watchers)]

        def watch(slot: int) -> None:
            # Each starts at its own place: 0, 3, 6, ... events already seen.
            with (
                httpx.Client(base_url=url, timeout=30) as own,
                own.stream("GET", f"/v1/jobs/{job_id}/events", params={"after": 3 * slot}) as r,
            ):
                results[slot].extend(read_events(r))

        threads = [threading.Thread(target=watch, args=(i,)) for i in range(watchers)]
        for thread in threads:
            thread.start()
        until(lambda: f"underway_sse_connections {watchers}" in http.get("/metrics").text)
        go.set()
        for thread in threads:
            thread.join(30)
    for slot, events in enumerate(results):
        assert [e[0] for e in events] == list(range(3 * slot + 1, 3 * slot + 1 + len(events)))
        items = [e[2]["item"] for e in events if e[1] == "output"]
        assert items == list(range(items[0], 2500)) and items[0] <= 3 * slot
        assert events[-1][1] == "done" and events[-1][2]["result"] == 2500
