"""The minimal FastAPI app on a real uvicorn server, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from examples.fastapi_app.app import app, uw
from tests.support.http_server import serve_asgi

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    uw.configure(store=f"sqlite:///{tmp_path / 'jobs.db'}")  # before the store is first opened
    try:
        with serve_asgi(app) as url:  # runs the app's lifespan: workers start and stop with it
            yield url
    finally:
        uw.close()


def test_submit_watch_and_collect_a_result(base_url: str) -> None:
    with httpx.Client(base_url=f"{base_url}/jobs", timeout=15) as http:
        tasks = http.get("/v1/tasks").json()["tasks"]
        assert [t["name"] for t in tasks] == ["countdown"]

        started = http.post("/v1/tasks/countdown/jobs", json={"seconds": 1})
        assert started.status_code == 202
        job = started.json()
        assert started.headers["location"] == f"/jobs/v1/jobs/{job['id']}"

        # Long-poll the status until it is done, as any HTTP client can.
        while job["state"] in ("queued", "running"):
            job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
        assert job["state"] == "succeeded"
        assert http.get(f"/v1/jobs/{job['id']}/result").json() == "liftoff"

        events = http.get(f"/v1/jobs/{job['id']}/events").text
        assert "event: progress" in events and "1s left" in events
        assert events.rstrip().splitlines()[-1].startswith("data: ")
        assert "event: done" in events


def test_a_cancel_stops_the_countdown(base_url: str) -> None:
    with httpx.Client(base_url=f"{base_url}/jobs", timeout=15) as http:
        job = http.post("/v1/tasks/countdown/jobs", json={"seconds": 60}).json()
        while job["state"] == "queued":
            job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
        assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        while job["state"] == "running":
            job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
        assert job["state"] == "cancelled"
        assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 409
