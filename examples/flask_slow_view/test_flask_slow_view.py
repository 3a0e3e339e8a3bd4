"""The slow view on a real werkzeug server, over real HTTP: 202 + Location at once,
202 from the status URL while it runs, then the view's own response."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.flask_slow_view.app import create_app
from tests.support.http_server import serve_wsgi, until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    app = create_app(store=f"sqlite:///{tmp_path / 'jobs.db'}", seconds_per_text=0.2)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.extensions["underway"].uw.close()


def still_running(http: httpx.Client, status_url: str) -> dict[str, Any] | None:
    """The progress in the status URL's 202 answer; None once it answers otherwise."""
    r = http.get(status_url)
    return r.json()["progress"] if r.status_code == 202 else None


def final_response(http: httpx.Client, status_url: str) -> httpx.Response:
    """Poll the status URL until it stops answering 202: the view's own response."""
    response: httpx.Response = until(lambda: (r := http.get(status_url)).status_code != 202 and r)
    return response


def test_the_slow_view_answers_202_then_its_own_response(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        started = http.post("/render/7?voice=fr", json={"text_list": ["Hello", "big", "world"]})
        assert started.status_code == 202
        status_url = started.headers["location"]
        assert status_url == f"/jobs/status/{started.json()['job_id']}"

        pending = http.get(status_url)
        assert pending.status_code == 202
        assert pending.headers["retry-after"] and pending.headers["location"] == status_url
        # While it runs, the 202 carries the progress the view reports.
        halfway = until(lambda: (r := still_running(http, status_url)) and r["current"] == 1 and r)
        assert halfway["message"] == "rendered 1 of 3"

        done = final_response(http, status_url)
        assert done.status_code == 201
        assert done.json() == {
            "id": 7,
            "voice": "fr",
            "files": ["fr-001-5.wav", "fr-002-3.wav", "fr-003-5.wav"],
        }
        # Asking again gives the same response, until the job is cleaned up.
        assert http.get(status_url).json() == done.json()


def test_finished_jobs_are_kept_for_five_minutes(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        started = http.post("/render/1", json={"text_list": ["one"]})
        job_url = f"/jobs/v1/jobs/{started.json()['job_id']}"
        job = http.get(job_url, params={"wait": 10}).json()
        while job["state"] in ("queued", "running"):
            job = http.get(job_url, params={"wait": 10}).json()
        assert job["state"] == "succeeded"
        kept = datetime.fromisoformat(job["expires_at"]) - datetime.fromisoformat(
            job["finished_at"]
        )
        assert kept.total_seconds() == pytest.approx(300, abs=1)


def test_a_bad_request_gets_the_views_own_error(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        started = http.post("/render/2", content=b"?", headers={"Content-Type": "text/plain"})
        assert started.status_code == 202  # the view has not run yet
        answer = final_response(http, started.headers["location"])
        assert answer.status_code == 415  # what Flask's request.get_json() says about it
