"""The reports site run for real: `manage.py runserver` (WSGI) and uvicorn (ASGI) in a
subprocess on a free port, driven over HTTP and in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import launch_chromium
from tests.support.services import free_port
from tests.support.wait import wait_for
from underway.client import parse_sse

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # launch_chromium() reports it
    pass

pytestmark = pytest.mark.timeout(90)
SITE = Path(__file__).resolve().parent
USER, PASSWORD = "ann", "reports-test-password"


@dataclass
class Site:
    url: str
    store: str


def manage(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SITE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def answers(url: str, server: subprocess.Popen[bytes]) -> bool:
    assert server.poll() is None, "the server exited"
    try:
        with httpx.Client(timeout=2) as http:
            return http.get(f"{url}/jobs/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module", params=["runserver", "uvicorn"])
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("reportsite")
    store = f"sqlite:///{folder / 'jobs.db'}"
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "REPORTS_DB": str(folder / "db.sqlite3"),
        "REPORTS_STORE": store,
        "REPORT_ROW_SECONDS": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    manage(env, "migrate", "--verbosity=0")
    make_user = (
        "from django.contrib.auth.models import User; User.objects.create_user({!r}, password={!r})"
    )
    manage(env, "shell", "-c", make_user.format(USER, PASSWORD))
    port = free_port()
    if request.param == "runserver":
        argv = ["manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    else:
        argv = ["-m", "uvicorn", "reportsite.asgi:application", "--port", str(port),
                "--lifespan", "off", "--log-level", "warning"]  # fmt: skip
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, *argv], cwd=SITE, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(url, server), timeout=30, what=f"{request.param} to answer")
        yield Site(url=url, store=store)
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@contextmanager
def logged_in(site: Site) -> Iterator[httpx.Client]:
    """A client with the user's session, logged in through the login form."""
    with httpx.Client(base_url=site.url, timeout=20) as http:
        http.get("/login/")
        token = http.cookies["csrftoken"]
        form = {"username": USER, "password": PASSWORD, "csrfmiddlewaretoken": token}
        response = http.post("/login/", data=form)
        assert response.status_code == 302 and response.headers["location"] == "/"
        yield http


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = http.get(f"/jobs/v1/jobs/{job_id}").json()
    while job["state"] in ("queued", "running"):
        job = http.get(f"/jobs/v1/jobs/{job_id}", params={"wait": 10}).json()
    return job


def test_a_report_runs_and_streams_its_rows(site: Site) -> None:
    with httpx.Client(base_url=site.url) as http:
        assert http.get("/jobs/v1/jobs").status_code == 401
    with logged_in(site) as http:
        token = http.cookies["csrftoken"]
        started = http.post("/reports/", data={"rows": "3", "csrfmiddlewaretoken": token})
        assert started.status_code == 302
        job_id = started.headers["location"].strip("/").rsplit("/", 1)[-1]
        page = http.get(f"/reports/{job_id}/")
        assert page.status_code == 200 and f'job-id="{job_id}"' in page.text

        with http.stream("GET", f"/jobs/v1/jobs/{job_id}/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            seen = [(kind, json.loads(data)) for _, kind, data in parse_sse(events.iter_lines())]
        assert seen[-1][0] == "done"
        rows = [data["item"]["region"] for kind, data in seen if kind == "output"]
        assert rows == ["North", "South", "East"]
        assert any(kind == "progress" for kind, _ in seen)

        job = finished(http, job_id)
        assert job["state"] == "succeeded"
        assert job["result"]["rows"] == 3
        assert len(http.get(f"/jobs/v1/jobs/{job_id}/output").json()["items"]) == 3
        # A cookie-session POST to the API without the CSRF token is refused.
        refused = http.post("/jobs/v1/tasks/report/jobs", json={"rows": 1})
        assert refused.status_code == 403 and refused.json()["code"] == "csrf-failed"
        assert job_id in http.get("/").text


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(20_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.mark.browser
def test_the_browser_watches_a_report_finish(site: Site, page: Page) -> None:
    page.goto(f"{site.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Sales reports")).to_be_visible()

    page.get_by_label("Regions").fill("3")
    page.get_by_role("button", name="Start a report").click()
    page.wait_for_url(re.compile(r"/reports/\w+/$"))
    element = page.locator("#report")
    expect(element.locator("[part=output]")).to_contain_text("North")
    expect(element.locator("[part=state]")).to_have_text("succeeded")
    expect(element.locator("[part=output]")).to_contain_text("East")
    expect(element.locator("[part=result]")).to_contain_text('"rows": 3')

    # The element on the index page starts a job itself: a POST carrying the CSRF token.
    page.get_by_role("link", name="Reports").click()
    quick = page.locator("#quick")
    quick.get_by_role("button", name="Run a quick report").click()
    expect(quick.locator("[part=state]")).to_have_text("succeeded")
    expect(quick.locator("[part=output]")).to_contain_text("South")

    # The dashboard lists the user's jobs.
    page.get_by_role("link", name="All jobs").click()
    expect(page.locator("main")).to_contain_text("report")
