"""underway.django on the test site (tests/integration/django_site): who sees which
job, CSRF, the dashboard, event streams on real WSGI and ASGI servers, and
`manage.py underway` in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings

from tests.support.http_server import serve_asgi, serve_wsgi
from underway import Underway
from underway.client import parse_sse

pytestmark = pytest.mark.timeout(60)
SETTINGS = "tests.integration.django_site.settings"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Django set up on the test site, with a migrated database of its own."""
    folder = tmp_path_factory.mktemp("django-site")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DJANGO_SETTINGS_MODULE", SETTINGS)
        env.setenv("UNDERWAY_TEST_DB", str(folder / "site.db"))
        env.setenv("UNDERWAY_TEST_STORE", f"sqlite:///{folder / 'jobs.db'}")
        django.setup()
        assert settings.DATABASES["default"]["NAME"] == str(folder / "site.db")
        call_command("migrate", verbosity=0)
    yield folder


@pytest.fixture(scope="module")
def users(site: Path) -> dict[str, Any]:
    from django.contrib.auth.models import User

    return {
        "alice": User.objects.create_user("alice"),
        "bob": User.objects.create_user("bob"),
        "root": User.objects.create_user("root", is_staff=True),
    }


class Browser:
    """Django's test client as a logged-in browser: session cookie and CSRF token."""

    def __init__(self, user: Any = None) -> None:
        self.client = Client(enforce_csrf_checks=True)
        if user is not None:
            self.client.force_login(user)
        page = self.client.get("/jobs/")
        self.csrf = page.cookies["csrftoken"].value if "csrftoken" in page.cookies else ""

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self.client.get(path, query)

    def post(self, path: str, data: Any = None, *, csrf: bool = True) -> Any:
        headers = {"X-CSRFToken": self.csrf} if csrf else {}
        body = json.dumps(data) if data is not None else ""
        return self.client.post(path, body, content_type="application/json", headers=headers)

    def submit(self, task: str, **params: Any) -> dict[str, Any]:
        response = self.post(f"/jobs/v1/tasks/{task}/jobs", params)
        assert response.status_code == 202, response.content
        job: dict[str, Any] = response.json()
        return job


def finished(browser: Browser, job_id: str) -> dict[str, Any]:
    """Long-poll the job until it ends."""
    job: dict[str, Any] = browser.get(f"/jobs/v1/jobs/{job_id}").json()
    while job["state"] in ("queued", "running"):
        job = browser.get(f"/jobs/v1/jobs/{job_id}", {"wait": 10}).json()
    return job


def tasks_module() -> Any:
    from tests.integration.django_site import tasks

    return tasks


def test_each_user_sees_only_their_own_jobs_and_staff_see_all(users: dict[str, Any]) -> None:
    alice, bob, root = Browser(users["alice"]), Browser(users["bob"]), Browser(users["root"])
    job = alice.submit("add", x=2)
    assert job["owner"] == str(users["alice"].pk)
    url = f"/jobs/v1/jobs/{job['id']}"
    assert alice.get(url).status_code == 200
    done = finished(alice, job["id"])
    assert done["state"] == "succeeded" and done["result"] == 3

    hidden = bob.get(url)
    assert hidden.status_code == 404
    assert hidden["Content-Type"] == "application/problem+json"
    assert hidden.json()["code"] == "job-not-found"
    assert bob.get(f"{url}/result").status_code == 404
    assert bob.post(f"{url}/cancel").status_code == 404
    assert job["id"] not in [j["id"] for j in bob.get("/jobs/v1/jobs").json()["jobs"]]

    bobs = bob.submit("add", x=5)
    assert root.get(url).status_code == 200
    listed = [j["id"] for j in root.get("/jobs/v1/jobs").json()["jobs"]]
    assert job["id"] in listed and bobs["id"] in listed
    # What staff submit is still their own.
    assert root.submit("add", x=1)["owner"] == str(users["root"].pk)


def test_staff_may_cancel_a_users_job(users: dict[str, Any]) -> None:
    alice, root = Browser(users["alice"]), Browser(users["root"])
    job = alice.submit("stepper", steps=1, gate="staff-cancel")
    cancelled = root.post(f"/jobs/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202
    assert finished(alice, job["id"])["state"] == "cancelled"


def test_anonymous_visitors_get_401_unless_allowed(users: dict[str, Any]) -> None:
    visitor = Browser()
    refused = visitor.get("/jobs/v1/jobs")
    assert refused.status_code == 401
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "unauthorized"
    assert visitor.post("/jobs/v1/tasks/add/jobs", {"x": 1}).status_code == 401
    dashboard = visitor.get("/jobs/")
    assert dashboard.status_code == 302 and dashboard["Location"] == "/login/?next=/jobs/"
    assert visitor.get("/jobs/healthz").status_code == 200  # public, as in the API

    with override_settings(UNDERWAY={**settings.UNDERWAY, "ALLOW_ANONYMOUS": True}):
        visitor = Browser()
        job = visitor.submit("add", x=1)
        assert job["owner"] == "anonymous"
        assert visitor.get(f"/jobs/v1/jobs/{job['id']}").status_code == 200
        assert visitor.get("/jobs/").status_code == 200
        alice = Browser(users["alice"])
        assert alice.get(f"/jobs/v1/jobs/{job['id']}").status_code == 404
        alices = alice.submit("add", x=1)
        assert alices["id"] not in [j["id"] for j in visitor.get("/jobs/v1/jobs").json()["jobs"]]
    assert Browser().get(f"/jobs/v1/jobs/{job['id']}").status_code == 401


def test_a_session_post_without_the_csrf_token_is_refused(users: dict[str, Any]) -> None:
    alice = Browser(users["alice"])
    assert alice.csrf
    refused = alice.post("/jobs/v1/tasks/add/jobs", {"x": 1}, csrf=False)
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "csrf-failed"
    alice.csrf = "x" * 32
    assert alice.post("/jobs/v1/tasks/add/jobs", {"x": 1}).status_code == 403
    assert alice.get("/jobs/v1/jobs").status_code == 200  # reads need no token

    alice = Browser(users["alice"])
    job = alice.submit("stepper", steps=1, gate="csrf")
    assert alice.post(f"/jobs/v1/jobs/{job['id']}/cancel", csrf=False).status_code == 403
    assert alice.post(f"/jobs/v1/jobs/{job['id']}/cancel").status_code == 202


def test_the_dashboard_page_carries_the_csrf_token(users: dict[str, Any]) -> None:
    alice = Browser(users["alice"])
    page = alice.get("/jobs/")
    assert page.status_code == 200
    text = page.content.decode()
    assert '<meta name="csrf-token" content="' in text
    assert '<meta name="underway-api" content="/jobs">' in text
    assert page["Content-Security-Policy"].startswith("default-src 'none'")
    script = alice.get("/jobs/static/underway/underway-job.js")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("text/javascript")
    assert b"customElements.define" in b"".join(script.streaming_content)
    script.close()  # a real server closes the file; the test client leaves it to us
    missing = alice.get("/jobs/static/underway/nope.js")
    assert missing.status_code == 404 and missing["Content-Type"] == "application/problem+json"
    assert missing["X-Content-Type-Options"] == "nosniff"
    assert missing.json()["code"] == "not-found"
    assert alice.get("/jobs/v1/tasks").json()["tasks"][0]["name"] == "add"


@pytest.fixture(params=["wsgi", "asgi"])
def server(request: pytest.FixtureRequest, site: Path) -> Iterator[str]:
    """The site on a real server: werkzeug (WSGI) or uvicorn (ASGI)."""
    if request.param == "wsgi":
        from django.core.wsgi import get_wsgi_application

        with serve_wsgi(get_wsgi_application()) as url:
            yield url
    else:
        from django.core.asgi import get_asgi_application

        with serve_asgi(get_asgi_application(), lifespan="off") as url:
            yield url


def test_events_stream_as_they_happen_and_end_after_done(
    server: str, users: dict[str, Any]
) -> None:
    alice = Browser(users["alice"])
    gate = f"sse-{server.rsplit(':', 1)[-1]}"
    job = alice.submit("stepper", steps=2, gate=gate)
    gates = tasks_module().gates
    cookies = {"sessionid": alice.client.cookies["sessionid"].value}
    with httpx.Client(base_url=server, cookies=cookies, timeout=20) as http:
        with http.stream("GET", f"/jobs/v1/jobs/{job['id']}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            seen: list[tuple[str, Any]] = []
            gates.open(f"{gate}:0")
            for _, kind, data in parse_sse(response.iter_lines()):
                seen.append((kind, json.loads(data)))
                if kind == "output" and seen[-1][1]["item"] == {"i": 0}:
                    # The first item arrived while the job still waits: streamed, not buffered.
                    gates.open(f"{gate}:1")
            # The iterator ended: the server closed the stream after `done`.
        kinds = [kind for kind, _ in seen]
        assert kinds[-1] == "done"
        assert [d["item"] for k, d in seen if k == "output"] == [{"i": 0}, {"i": 1}]
    bob = {"sessionid": Browser(users["bob"]).client.cookies["sessionid"].value}
    with httpx.Client(base_url=server, cookies=bob, timeout=20) as http:
        assert http.get(f"/jobs/v1/jobs/{job['id']}/events").status_code == 404


def test_the_api_on_a_real_server_refuses_a_post_without_the_token(
    server: str, users: dict[str, Any]
) -> None:
    alice = Browser(users["alice"])
    cookies = {"sessionid": alice.client.cookies["sessionid"].value, "csrftoken": alice.csrf}
    with httpx.Client(base_url=server, cookies=cookies, timeout=20) as http:
        refused = http.post("/jobs/v1/tasks/add/jobs", json={"x": 1})
        assert refused.status_code == 403 and refused.json()["code"] == "csrf-failed"
        accepted = http.post(
            "/jobs/v1/tasks/add/jobs",
            json={"x": 1},
            headers={"X-CSRFToken": alice.csrf, "Prefer": "wait=10"},
        )
        assert accepted.status_code == 200  # finished within `Prefer: wait`
        assert accepted.json()["state"] == "succeeded"  # the site's workers ran it


# -- manage.py underway ------------------------------------------------------------------
def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_manage_py_underway_runs_the_cli_with_the_projects_app(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "UNDERWAY_TEST_DB": str(tmp_path / "site.db"),
        "UNDERWAY_TEST_STORE": store,
    }
    submitted = manage(env, "underway", "submit", "add", "x=2")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    # The settings ask for embedded workers, yet neither that command nor a migration
    # ran the job: workers start with a served request only.
    assert manage(env, "migrate", "--verbosity=0").returncode == 0
    shown = manage(env, "underway", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == "queued"

    worker = subprocess.Popen(
        [sys.executable, "-m", "django", "underway", "worker", "--workers", "1"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with Underway(store) as reader:
            assert reader.wait(job_id, timeout=20).result == 3
    finally:
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=20)
    assert worker.returncode == 0, stderr
    assert "tasks: add, stepper" in stderr and "underway worker: stopped" in stderr

    listed = manage(env, "underway", "jobs", "--json")
    assert [json.loads(line)["state"] for line in listed.stdout.splitlines()] == ["succeeded"]
    unknown = manage(env, "underway", "show", "NO-SUCH-JOB")
    assert unknown.returncode == 3 and unknown.stderr.startswith("error:")
    assert "worker" in manage(env, "underway", "--help").stdout
