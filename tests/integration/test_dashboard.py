"""The dashboard and the `<underway-job>` element in a real Chromium, against real
servers: uvicorn for the dashboard, werkzeug for a Flask page that embeds the element.

Screenshots land in artifacts/screenshots/ (docs/screenshots/ holds the README's copies).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from flask import Flask, Response, send_from_directory

from tests.support import browser as chromium
from tests.support.browser import screenshot_path
from tests.support.http_server import Gates, register_test_tasks, serve_asgi, serve_wsgi, until
from underway import Job, JobFinished, Underway
from underway.dashboard import ELEMENT_JS, STATIC_DIR
from underway.http import asgi
from underway.http.flask import UnderwayFlask

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # launch_chromium() reports it: a skip, or a failure in CI
    pass

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

browser = chromium.browser  # the module-scoped fixture, found by pytest under this name

XSS = '<img src=x onerror="window.__pwned = 1; alert(1)">'
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 760}
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def register_dashboard_tasks(uw: Underway) -> Gates:
    gates = register_test_tasks(uw)

    @uw.task
    def make_report(
        job: Job,
        sections: list[str],
        pages: int = 3,
        layout: Literal["portrait", "landscape"] = "portrait",
        draft: bool = False,
    ) -> dict[str, Any]:
        """Build a report, one section at a time (`sections`, in order)."""
        for i, name in enumerate(sections, 1):
            job.check_cancelled()
            job.emit(f"{name}: {pages} pages, {layout}")
            job.progress(i, total=len(sections), message=f"section {i} of {len(sections)}")
        return {"sections": len(sections), "draft": draft}

    @uw.task
    def hostile(job: Job, payload: str) -> None:
        """Echoes its parameter everywhere a job can carry text, then fails with it."""
        job.emit(payload)
        job.log(payload)
        job.progress(1, total=2, message=payload)
        raise ValueError(payload)

    return gates


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Underway, Gates]]:
    uw = Underway(f"sqlite:///{tmp_path_factory.mktemp('dash')}/jobs.db")
    gates = register_dashboard_tasks(uw)
    yield uw, gates
    uw.close()


@pytest.fixture(scope="module")
def server(engine: tuple[Underway, Gates]) -> Iterator[str]:
    uw, _ = engine
    with serve_asgi(asgi(uw, start_workers=True)) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(10_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def submit(url: str, task: str, params: dict[str, Any], token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.post(f"{url}/v1/tasks/{task}/jobs", json=params, headers=headers)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def shoot(page: Page, name: str, *, full_page: bool = False) -> None:
    page.screenshot(path=screenshot_path(name), full_page=full_page)


# -- the tests ---------------------------------------------------------------------------
def test_start_a_job_from_a_task_form_and_watch_it_finish(server: str, page: Page) -> None:
    page.goto(f"{server}/#/tasks")
    card = page.locator('[data-task="make_report"]')
    expect(card.get_by_label("Sections")).to_be_visible()
    expect(card.get_by_label("Pages")).to_have_value("3")
    expect(card.get_by_label("Layout")).to_have_text(re.compile("portrait"))
    card.get_by_label("Sections").fill("intro\nmethods\nresults\nsummary")
    card.get_by_label("Pages").fill("7")
    card.get_by_label("Layout").select_option(label="landscape")
    card.get_by_label("Draft").check()
    card.get_by_role("button", name="Start job").click()

    expect(page).to_have_url(re.compile(r"#/jobs/\w+"))
    bar = page.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("h1 .badge")).to_have_text("succeeded")
    expect(page.locator("#job-output")).to_contain_text("summary: 7 pages, landscape")
    expect(page.locator("#job-result")).to_contain_text('"draft": true')
    expect(page.locator("#job-params")).to_contain_text('"layout": "landscape"')


def test_task_descriptions_show_code_spans_as_code(server: str, page: Page) -> None:
    page.goto(f"{server}/#/tasks")
    description = page.locator('[data-task="make_report"] .desc')
    expect(description).to_have_text("Build a report, one section at a time (sections, in order).")
    expect(description.locator("code")).to_have_text("sections")


def test_a_form_shows_the_servers_validation_errors(server: str, page: Page) -> None:
    page.goto(f"{server}/#/tasks/add")
    card = page.locator('[data-task="add"]')
    x = card.get_by_label("X")
    expect(x).to_have_attribute("required", "")
    # As if the browser did not check: the server's 422 lands on the field.
    x.evaluate("input => input.removeAttribute('required')")
    card.get_by_role("button", name="Start job").click()
    expect(card.locator('[data-field="x"] .problem')).to_have_text("Field required")
    expect(x).to_have_attribute("aria-invalid", "true")
    expect(x).to_be_focused()


def test_cancel_a_running_job_from_its_page(
    server: str, engine: tuple[Underway, Gates], page: Page
) -> None:
    job_id = submit(server, "hold", {"gate": "cancel-me"})
    page.goto(f"{server}/#/jobs/{job_id}")
    expect(page.locator("h1 .badge")).to_have_text("running")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.get_by_role("button", name="Delete")).to_be_visible()
    assert engine[0].get(job_id).state == "cancelled"


def test_reloading_mid_job_shows_the_state_and_goes_on_live(
    server: str, engine: tuple[Underway, Gates], page: Page
) -> None:
    _, gates = engine
    job_id = submit(server, "stepper", {"steps": 4, "gate": "reload"})
    gates.open("reload:0")
    gates.open("reload:1")
    page.goto(f"{server}/#/jobs/{job_id}")
    bar = page.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "50")
    expect(page.locator("#job-output")).to_have_text('{ "i": 0 }\n{ "i": 1 }\n')
    shoot(page, "job-running-desktop-light")

    page.reload()
    expect(bar).to_have_attribute("aria-valuenow", "50")
    expect(page.locator("#job-output")).to_have_text('{ "i": 0 }\n{ "i": 1 }\n')
    expect(page.locator("#job-log li")).to_have_count(2)
    gates.open("reload:2")
    expect(bar).to_have_attribute("aria-valuenow", "75")
    gates.open("reload:3")
    expect(bar).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("h1 .badge")).to_have_text("succeeded")
    expect(page.locator("#job-output")).to_have_text("".join(f'{{ "i": {i} }}\n' for i in range(4)))
    expect(page.locator("#job-result")).to_contain_text('"steps": 4')


def test_task_text_is_shown_as_text_and_never_run(server: str, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    job_id = submit(server, "hostile", {"payload": XSS})

    page.goto(f"{server}/#/jobs/{job_id}")
    expect(page.locator("h1 .badge")).to_have_text("failed")
    expect(page.locator("#job-error")).to_contain_text(XSS)
    expect(page.locator("#job-output")).to_have_text(XSS + "\n")
    expect(page.locator("#job-log")).to_have_text(XSS)
    expect(page.locator("#job-params")).to_contain_text("onerror")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "50")
    shoot(page, "job-failed-desktop-light")

    page.goto(f"{server}/#/jobs?task=hostile")
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    expect(row.locator(".msg")).to_have_text(XSS)

    assert page.locator("img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []


def test_the_jobs_table_follows_active_jobs_and_filters(
    server: str, engine: tuple[Underway, Gates], page: Page
) -> None:
    _, gates = engine
    failed = submit(server, "boom", {"message": "table"})
    live = submit(server, "stepper", {"steps": 2, "gate": "table"})
    page.goto(f"{server}/#/jobs")
    row = page.locator(f'tr[data-job-id="{live}"]')
    expect(row.locator(".badge")).to_have_text("running")
    gates.open("table:0")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "50")
    gates.open("table:1")
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")

    page.get_by_label("State").select_option("failed")
    expect(page).to_have_url(re.compile(r"#/jobs\?state=failed"))
    expect(page.locator(f'tr[data-job-id="{failed}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job-id="{live}"]')).to_have_count(0)
    for state in page.locator("tbody .badge").all_text_contents():
        assert state == "failed"
    page.reload()
    expect(page.get_by_label("State")).to_have_value("failed")

    toggle = page.get_by_role("button", name="Dark theme")
    dark = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(page.locator("html")).to_have_attribute("data-theme", "light" if dark else "dark")
    expect(toggle).to_have_attribute("aria-pressed", "false" if dark else "true")
    page.reload()  # the choice is remembered
    expect(page.locator("html")).to_have_attribute("data-theme", "light" if dark else "dark")


def test_the_dashboard_with_a_token_shows_only_that_principals_jobs(
    engine: tuple[Underway, Gates], server: str, page: Page
) -> None:
    uw, _ = engine
    with serve_asgi(asgi(uw, tokens=TOKENS)) as url:
        mine = submit(url, "add", {"x": 1}, token="tok-alice")
        theirs = submit(url, "add", {"x": 2}, token="tok-bob")
        page.goto(f"{url}/")
        token = page.get_by_label("API token")
        token.fill("wrong")
        token.press("Enter")
        expect(page.get_by_role("alert")).to_have_text("That token was not accepted.")
        shoot(page, "signin-desktop-light")
        token.fill("tok-alice")
        page.get_by_role("button", name="Continue").click()
        expect(page.locator(f'tr[data-job-id="{mine}"]')).to_be_visible()
        expect(page.locator("tbody tr")).to_have_count(1)
        expect(page.locator(f'tr[data-job-id="{theirs}"]')).to_have_count(0)

        page.reload()  # the token is kept for the tab
        expect(page.locator(f'tr[data-job-id="{mine}"]')).to_be_visible()
        page.goto(f"{url}/#/jobs/{theirs}")
        expect(page.get_by_text("Job not found")).to_be_visible()
        page.get_by_role("button", name="Forget token").click()
        expect(page.get_by_label("API token")).to_be_visible()


def test_the_dashboard_follows_the_mount_point(engine: tuple[Underway, Gates]) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    uw, _ = engine
    host = Starlette(routes=[Mount("/jobs", app=asgi(uw))])
    with serve_asgi(host) as url, httpx.Client(base_url=url) as http:
        index = http.get("/jobs/")
        assert index.status_code == 200
        assert 'src="/jobs/static/underway/dashboard.js"' in index.text
        assert 'content="/jobs"' in index.text
        assert "script-src 'self'" in index.headers["content-security-policy"]
        script = http.get(f"/jobs/static/underway/{ELEMENT_JS}")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        for bad in ("..%2F__init__.py", ".hidden.js", "index.html%00.js", "missing.js"):
            assert http.get(f"/jobs/static/underway/{bad}").status_code == 404


# -- the element on a Flask page ---------------------------------------------------------
ELEMENT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Reports</title>
<link rel="stylesheet" href="/assets/page.css">
<script src="/assets/{element}"></script>
</head><body>
<h1>Quarterly report</h1>
<underway-job id="report" task="make_report" api="/jobs"
  params='{{"sections": ["sales", "costs", "outlook"]}}' label="Build report"></underway-job>
<underway-job id="broken" task="boom" api="/jobs" params='{{"message": {xss}}}'></underway-job>
<underway-job id="held" task="hold" api="/jobs" params='{{"gate": "element"}}'></underway-job>
</body></html>
"""

PAGE_CSS = """:root { color-scheme: light dark; }
body { font: 16px/1.5 system-ui, sans-serif; max-width: 640px; margin: 32px auto; padding: 0 16px; }
underway-job { margin: 16px 0; }"""


@pytest.fixture(scope="module")
def flask_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Underway, Gates]]:
    import json

    uw = Underway(f"sqlite:///{tmp_path_factory.mktemp('flask')}/jobs.db")
    gates = register_dashboard_tasks(uw)
    app = Flask(__name__)
    UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True)
    attr = json.dumps(XSS).replace("'", "&#39;")

    @app.get("/")
    def home() -> str:
        return ELEMENT_PAGE.format(element=ELEMENT_JS, xss=attr)

    @app.get("/assets/page.css")
    def page_css() -> Response:
        return Response(PAGE_CSS, mimetype="text/css")

    @app.get("/assets/<name>")
    def assets(name: str) -> Response:
        return send_from_directory(STATIC_DIR, name)

    with serve_wsgi(app) as url:
        yield url, uw, gates
    uw.close()


def test_the_element_on_a_flask_page(flask_site: tuple[str, Underway, Gates], page: Page) -> None:
    url, uw, _ = flask_site
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.evaluate(
        """() => { window.seen = [];
        window.items = [];
        document.addEventListener("underway:output", (e) => window.items.push(e.detail.item));
        for (const name of ["start", "progress", "done", "failed", "cancelled"])
          document.addEventListener("underway:" + name, (e) =>
            window.seen.push([e.target.id, name, (e.detail.job || e.detail).state])); }"""
    )
    report = page.locator("#report")
    report.get_by_role("button", name="Build report").click()
    expect(report.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(report.locator('[part="output"]')).to_have_text(
        "sales: 3 pages, portrait\ncosts: 3 pages, portrait\noutlook: 3 pages, portrait\n"
    )
    expect(report.locator('[part="result"]')).to_contain_text('"sections": 3')
    page.wait_for_function("window.seen.some(([id, n]) => id === 'report' && n === 'done')")
    job_id = report.get_attribute("job-id")
    assert job_id is not None and uw.get(job_id).state == "succeeded"

    broken = page.locator("#broken")
    broken.get_by_role("button", name="Start").click()
    expect(broken.locator('[part="error"]')).to_have_text(f"ValueError: {XSS}")
    page.wait_for_function("window.seen.some(([id, n]) => id === 'broken' && n === 'failed')")

    held = page.locator("#held")
    held.get_by_role("button", name="Start").click()
    expect(held.locator('[part="state"]')).to_have_text("running")
    shoot(page, "element-desktop-light", full_page=True)
    held.get_by_role("button", name="Cancel").click()
    expect(held.locator('[part="state"]')).to_have_text("cancelled")
    page.wait_for_function("window.seen.some(([id, n]) => id === 'held' && n === 'cancelled')")

    names = {(target, name) for target, name, _ in page.evaluate("window.seen")}
    assert {("report", "start"), ("report", "progress"), ("report", "done")} <= names
    assert ("report", "failed") not in names
    # Each output item also comes as an event, for pages that show it their own way.
    assert page.evaluate("window.items.slice(0, 3)") == [
        "sales: 3 pages, portrait",
        "costs: 3 pages, portrait",
        "outlook: 3 pages, portrait",
    ]
    assert page.locator("img").count() == 0 and dialogs == []

    # A page rendered later can attach to the same job by id and show how it ended.
    page.evaluate(
        """(id) => { const el = document.createElement("underway-job");
        el.id = "again"; el.setAttribute("api", "/jobs"); el.setAttribute("job-id", id);
        document.body.append(el); }""",
        job_id,
    )
    again = page.locator("#again")
    expect(again.locator('[part="state"]')).to_have_text("succeeded")
    expect(again.locator('[part="output"]')).to_contain_text("outlook: 3 pages")

    page.emulate_media(color_scheme="dark")
    shoot(page, "element-desktop-dark", full_page=True)
    until(lambda: uw.get(held.get_attribute("job-id") or "").finished, "the held job to end")


# -- screenshots of the demo -------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Underway]]:
    """The tasks of `underway demo` on their own app, so the pictures match the demo."""
    from underway import demo

    uw = Underway(f"sqlite:///{tmp_path_factory.mktemp('demo')}/demo.db")
    for task in demo.uw.tasks.values():
        uw.task(name=task.name, executor=task.settings.executor, keep_for="1h")(task.func)
    with serve_asgi(asgi(uw, start_workers=True)) as url:
        yield url, uw
    uw.close()


def test_screenshots_of_the_demo(demo_site: tuple[str, Underway], browser: Browser) -> None:
    url, uw = demo_site
    finished = [
        submit(url, "count", {"to": 5, "pause": 0.01}),
        submit(url, "chat", {"prompt": "What is underway?", "tokens_per_second": 400}),
        submit(url, "fail", {"after": 2, "pause": 0.01}),
    ]
    stopped = submit(url, "long_process", {"steps": 10, "pause": 5})
    uw.cancel(stopped)
    running = [
        submit(url, "batch_files", {"files": 40, "pause": 0.25}),
        submit(url, "long_process", {"steps": 10, "pause": 0.8}),
    ]
    until(lambda: all(uw.get(j).finished for j in [*finished, stopped]), "the quick jobs")
    until(lambda: all((uw.get(j).progress.percent or 0) >= 20 for j in running), "some progress")
    chat = finished[1]
    try:
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            for scheme in ("light", "dark"):
                context = browser.new_context(
                    viewport=viewport, color_scheme=scheme, reduced_motion="reduce"
                )
                page = context.new_page()
                page.goto(f"{url}/#/jobs")
                expect(page.locator("tbody tr")).to_have_count(6)
                expect(page.locator(f'tr[data-job-id="{chat}"] .badge')).to_have_text("succeeded")
                shoot(page, f"jobs-{size}-{scheme}")
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
                page.goto(f"{url}/#/jobs/{running[0]}")
                expect(page.locator("#job-output")).to_contain_text("sample-001.txt")
                shoot(page, f"job-{size}-{scheme}", full_page=size == "phone")
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
                page.goto(f"{url}/#/tasks")
                expect(page.locator(".task-card")).to_have_count(len(uw.tasks))
                shoot(page, f"tasks-{size}-{scheme}", full_page=True)
                assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
                if size == "desktop" and scheme == "light":
                    page.goto(f"{url}/#/jobs/{chat}")
                    expect(page.locator("#join-text")).to_be_checked()
                    shoot(page, "job-chat-desktop-light")
                context.close()
    finally:
        for job_id in running:  # on a slow machine they may have finished by now
            with contextlib.suppress(JobFinished):
                uw.cancel(job_id)


def test_a_queued_job_page_says_why_it_waits(tmp_path: Path, page: Page) -> None:
    uw = Underway(f"sqlite:///{tmp_path / 'waiting.db'}")

    @uw.task
    def lonely() -> None:
        return None

    try:
        with serve_asgi(asgi(uw)) as url:  # no workers anywhere
            job_id = submit(url, "lonely", {})
            page.goto(f"{url}/#/jobs/{job_id}")
            expect(page.locator("h1 .badge")).to_have_text("queued")
            facts = page.locator("dl.facts")
            expect(facts).to_contain_text("Waiting")
            expect(facts).to_contain_text("no live worker serves task 'lonely'")
    finally:
        uw.close()
