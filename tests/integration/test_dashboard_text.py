"""Output that is text reads as text, in a real Chromium: the `<underway-job>` element
(on a Flask page) and the dashboard's job page (under Starlette), opened while a job
streams word tokens, read the text so far in one answer (`?as=text`), then follow
only the new tokens, and end with the whole text once; a retry shows only its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, send_from_directory

from tests.support import browser as chromium
from tests.support.http_server import serve_asgi, serve_wsgi, until
from underway import Job, Underway
from underway.dashboard import ELEMENT_JS, STATIC_DIR
from underway.http import asgi
from underway.http.flask import UnderwayFlask

try:
    from playwright.sync_api import Browser, Locator, Page, Request, expect
except ImportError:  # launch_chromium() reports it: a skip, or a failure in CI
    pass

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

browser = chromium.browser  # the module-scoped fixture, found by pytest under this name

FIRST = ["Hello", " world,", *(f" word{i}" for i in range(1, 40))]  # before the gate
REST = [*(f" word{i}" for i in range(40, 80)), " done."]
RETRY_FIRST = ["Lost", " words", *(f" lost{i}" for i in range(1, 30))]
RETRY_SECOND = ["Second", " try", *(f" kept{i}" for i in range(1, 30)), "."]

ELEMENT_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Chat</title>
<script src="/assets/{ELEMENT_JS}"></script></head><body>
<h1>Chat</h1>
<script src="/assets/watch.js"></script>
</body></html>
"""

# Records what each element reports, so the test can tell a replay from one read.
WATCH_JS = """window.outputs = []; window.texts = [];
const on = (name, fn) => document.addEventListener("underway:" + name, fn);
on("output", (e) => window.outputs.push([e.target.id, e.detail.index]));
on("text", (e) => window.texts.push([e.target.id, e.detail]));
window.attach = (id, jobId, join) => {
  const el = document.createElement("underway-job");
  el.id = id; el.setAttribute("api", "/jobs"); el.setAttribute("job-id", jobId);
  if (join) el.setAttribute("join", join);
  document.body.append(el);
};"""


class Site:
    def __init__(self, uw: Underway) -> None:
        self.uw = uw
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

        @uw.task
        def chat(job: Job, gate: str) -> int:
            """Streams FIRST, logs, waits for its gate, then streams REST."""
            for token in FIRST:
                job.emit(token)
            job.log("halfway")
            self.wait(job, gate)
            for token in REST:
                job.emit(token)
            return len(FIRST) + len(REST)

        @uw.task(retries=1, retry_backoff=0.01)
        def flaky_chat(job: Job, gate: str) -> str:
            """Attempt 1 streams RETRY_FIRST and fails at its gate; attempt 2 streams
            RETRY_SECOND and waits at its own gate."""
            for token in RETRY_FIRST if job.attempt == 1 else RETRY_SECOND:
                job.emit(token)
            self.wait(job, f"{gate}:{job.attempt}")
            if job.attempt == 1:
                raise RuntimeError("the model went away")
            return "ok"

    def gate(self, name: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def wait(self, job: Job, name: str) -> None:
        event = self.gate(name)
        while not event.wait(0.02):
            job.check_cancelled()

    def submit_when(self, task: str, gate: str, emitted: int, attempt: int = 1) -> str:
        """Submit, and return once `emitted` items of `attempt` are stored."""
        job_id = self.uw.submit(task, gate=gate).id

        def ready() -> bool:
            record = self.uw.get(job_id)
            return record.attempt == attempt and record.output_count == emitted

        until(ready, f"{task} to emit {emitted} items")
        return job_id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, str, str]]:
    """The engine, a Flask page with the element at its root, the dashboard."""
    uw = Underway(f"sqlite:///{tmp_path_factory.mktemp('text')}/jobs.db")
    site = Site(uw)
    app = Flask(__name__)
    UnderwayFlask(uw, app, url_prefix="/jobs")

    @app.get("/")
    def home() -> str:
        return ELEMENT_PAGE

    @app.get("/assets/watch.js")
    def watch() -> Any:
        return app.response_class(WATCH_JS, mimetype="text/javascript")

    @app.get("/assets/<name>")
    def assets(name: str) -> Any:
        return send_from_directory(STATIC_DIR, name)

    uw.start()
    try:
        with serve_wsgi(app) as flask_url, serve_asgi(asgi(uw)) as dashboard_url:
            yield site, flask_url, dashboard_url
    finally:
        for event in site.gates.values():
            event.set()
        uw.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[tuple[Page, Page, list[str]]]:
    """Two tabs (the element's page, the dashboard) and the URLs they requested."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    errors: list[str] = []
    requested: list[str] = []

    def requests(request: Request) -> None:
        requested.append(request.url)

    context.on("request", requests)
    element_page, job_page = context.new_page(), context.new_page()
    for pg in (element_page, job_page):
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield element_page, job_page, requested
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def exact_text(locator: Locator, text: str) -> None:
    """`to_have_text` collapses white space (a token per line would pass): compare exactly."""
    expect(locator).to_have_js_property("textContent", text)


def test_a_page_opened_mid_stream_reads_the_text_so_far_at_once_then_the_rest(
    site: tuple[Site, str, str], pages: tuple[Page, Page, list[str]]
) -> None:
    engine, flask_url, dashboard_url = site
    element_page, job_page, requested = pages
    job_id = engine.submit_when("chat", "mid", len(FIRST))
    so_far, whole = "".join(FIRST), "".join(FIRST + REST)
    assert so_far.startswith("Hello world, word1 word2")

    element_page.goto(flask_url)
    element_page.evaluate("([id]) => window.attach('chat', id)", [job_id])
    output = element_page.locator("#chat [part='output']")
    exact_text(output, so_far)  # joined: not one token per line
    # One read, not a replay: no item came as an event, the text came at once.
    texts = element_page.evaluate("window.texts")
    assert [(name, t["next"], t["attempt"]) for name, t in texts] == [("chat", len(FIRST), 1)]
    assert element_page.evaluate("window.outputs") == []

    job_page.goto(f"{dashboard_url}/#/jobs/{job_id}")
    job_output = job_page.locator("#job-output")
    exact_text(job_output, so_far)
    expect(job_page.locator("#join-text")).to_be_checked()
    expect(job_page.locator(".output-foot")).to_have_text(f"{len(FIRST)} items")
    expect(job_page.locator("#job-log li")).to_have_text(["halfway"])  # the log, up to the text
    assert sum("/output?as=text" in url for url in requested) == 2  # one per page

    engine.gate("mid").set()
    expect(element_page.locator("#chat [part='state']")).to_have_text("succeeded")
    exact_text(output, whole)  # every token once, in order
    expect(job_page.locator("h1 .badge")).to_have_text("succeeded")
    exact_text(job_output, whole)
    expect(job_page.locator(".output-foot")).to_have_text(f"{len(FIRST) + len(REST)} items")
    expect(job_page.locator("#job-log li")).to_have_text(["halfway"])
    # Only the new tokens were streamed to the element, numbered on from the text.
    indexes = [i for name, i in element_page.evaluate("window.outputs") if name == "chat"]
    assert indexes == list(range(len(FIRST), len(FIRST) + len(REST)))

    # join="lines" opts out: one item per line, from a replay of every item.
    element_page.evaluate("([id]) => window.attach('lines', id, 'lines')", [job_id])
    lines = element_page.locator("#lines [part='output']")
    exact_text(lines, "".join(f"{t}\n" for t in FIRST + REST))
    # The dashboard's checkbox does the same.
    job_page.locator("#join-text").uncheck()
    exact_text(job_output, "".join(f"{t}\n" for t in FIRST + REST))


def test_a_retry_replaces_the_text_read_mid_stream(
    site: tuple[Site, str, str], pages: tuple[Page, Page, list[str]]
) -> None:
    engine, flask_url, dashboard_url = site
    element_page, job_page, _ = pages
    job_id = engine.submit_when("flaky_chat", "retry", len(RETRY_FIRST))

    element_page.goto(flask_url)
    element_page.evaluate("([id]) => window.attach('flaky', id)", [job_id])
    output = element_page.locator("#flaky [part='output']")
    exact_text(output, "".join(RETRY_FIRST))
    job_page.goto(f"{dashboard_url}/#/jobs/{job_id}")
    job_output = job_page.locator("#job-output")
    exact_text(job_output, "".join(RETRY_FIRST))

    engine.gate("retry:1").set()  # attempt 1 fails; attempt 2 starts a fresh segment
    record = engine.uw.get
    until(lambda: (r := record(job_id)).attempt == 2 and r.output_count == len(RETRY_SECOND))
    exact_text(output, "".join(RETRY_SECOND))
    exact_text(job_output, "".join(RETRY_SECOND))
    engine.gate("retry:2").set()
    expect(element_page.locator("#flaky [part='state']")).to_have_text("succeeded")
    expect(job_page.locator("h1 .badge")).to_have_text("succeeded")
    exact_text(output, "".join(RETRY_SECOND))
    exact_text(job_output, "".join(RETRY_SECOND))

    # Opened again now, both read the latest attempt's text in one answer.
    element_page.evaluate("([id]) => window.attach('later', id)", [job_id])
    exact_text(element_page.locator("#later [part='output']"), "".join(RETRY_SECOND))
    expect(element_page.locator("#later [part='state']")).to_have_text("succeeded")
    job_page.reload()
    exact_text(job_output, "".join(RETRY_SECOND))
