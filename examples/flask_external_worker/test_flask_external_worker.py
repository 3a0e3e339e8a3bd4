"""The counting app on a real werkzeug server, with SQLite and with a real
redis-server: over HTTP, and in Chromium from the redirect to the results page."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.flask_external_worker.app import create_app
from tests.support.browser import launch_chromium
from tests.support.http_server import serve_wsgi
from tests.support.redis_server import RedisServer
from tests.support.services import missing

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # launch_chromium() reports it
    pass

pytestmark = pytest.mark.timeout(60)
STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture
def redis_url() -> Iterator[str]:
    # A fresh server per test: each test's app starts and stops its own workers.
    try:
        server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with server:
        yield server.url


@pytest.fixture(params=STORES)
def base_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    config: dict[str, Any] = {"COUNT_PAUSE": 0.2, "REDIS_URL": None}
    if request.param == "redis":
        config["REDIS_URL"] = request.getfixturevalue("redis_url")
    else:
        config["SQLITE_PATH"] = str(tmp_path / "jobs.db")
    app = create_app(config)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.extensions["underway"].uw.close()


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    """Long-poll the job through the API until it ends."""
    job: dict[str, Any] = http.get(f"/jobs/v1/jobs/{job_id}").json()
    while job["state"] in ("queued", "running"):
        job = http.get(f"/jobs/v1/jobs/{job_id}", params={"wait": 10}).json()
    return job


def test_a_count_runs_in_another_process_and_shows_its_results(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=15) as http:
        started = http.get("/count/1/3")
        assert started.status_code == 302
        status_url = started.headers["location"]
        job_id = status_url.rsplit("/", 1)[-1]
        assert status_url == f"/status/{job_id}"
        assert f'job-id="{job_id}"' in http.get(status_url).text

        job = finished(http, job_id)
        assert job["state"] == "succeeded", job["error"]
        assert job["result"]["numbers"] == [1, 2, 3]
        assert job["result"]["pid"] != os.getpid()  # counted in a process of its own
        assert http.get(f"/jobs/v1/jobs/{job_id}/output").json()["items"] == [1, 2, 3]
        page = http.get(f"/results/{job_id}")
        assert page.status_code == 200 and "1, 2, 3" in page.text
        assert http.get(f"/error/{job_id}").headers["location"] == f"/results/{job_id}"


def test_a_failed_count_shows_the_error_page(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=15) as http:
        job_id = http.get("/count/999/1002").headers["location"].rsplit("/", 1)[-1]
        job = finished(http, job_id)
        assert job["state"] == "failed"
        assert job["error"]["message"] == "refusing to count past 1000"
        assert http.get(f"/jobs/v1/jobs/{job_id}/output").json()["items"] == [999, 1000]
        assert http.get(f"/results/{job_id}").headers["location"] == f"/error/{job_id}"
        assert "refusing to count past 1000" in http.get(f"/error/{job_id}").text
        assert http.get("/count/1/3?increment=0").status_code == 400
        assert http.get("/status/NO-SUCH-JOB").status_code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.mark.browser
def test_the_browser_follows_the_count_to_the_results(base_url: str, page: Page) -> None:
    page.goto(f"{base_url}/count/1/5")
    expect(page).to_have_url(re.compile(r"/status/\w+$"))
    # The status page shows the numbers as the other process counts them...
    expect(page.locator("#count [part=output]")).to_contain_text("1")
    # ...and moves on to the results page by itself.
    page.wait_for_url(re.compile(r"/results/\w+$"))
    expect(page.locator("#numbers")).to_have_text("1, 2, 3, 4, 5")


@pytest.mark.browser
def test_the_browser_is_sent_to_the_error_page(base_url: str, page: Page) -> None:
    page.goto(f"{base_url}/")
    page.get_by_role("link", name="Count past 1000").click()
    page.wait_for_url(re.compile(r"/error/\w+$"))
    expect(page.locator("h1")).to_have_text("The count failed")
    expect(page.locator("#error")).to_have_text("refusing to count past 1000")
