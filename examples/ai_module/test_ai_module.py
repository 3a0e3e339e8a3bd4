"""The text generation module on a real uvicorn server: polling, interim results and
cancel over HTTP, and the explore page in Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from examples.ai_module.app import create_app
from tests.support.browser import launch_chromium
from tests.support.http_server import serve_asgi, until

try:
    from playwright.sync_api import Browser, expect
except ImportError:  # launch_chromium() reports it
    pass

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = f"sqlite:///{tmp_path_factory.mktemp('ai_module') / 'jobs.db'}"
    with serve_asgi(create_app(store=store, tokens_per_second=40)) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


def poll_until(http: httpx.Client, job_id: str, done: Any) -> dict[str, Any]:
    return until(lambda: (s := http.get(f"/generate/{job_id}").json()) and done(s) and s)


def test_start_poll_and_collect_the_reply(http: httpx.Client) -> None:
    started = http.post("/generate", json={"prompt": "Why jobs?", "max_tokens": 6})
    assert started.status_code == 202
    job_id = started.json()["id"]
    assert started.headers["location"] == f"/generate/{job_id}"
    assert started.headers["retry-after"] == "1"

    final = poll_until(http, job_id, lambda s: s["state"] == "succeeded")
    assert final["reply"] == "You asked: 'Why jobs?'. Long operations"
    assert final["tokens"] == 6 and final["error"] is None
    assert "retry-after" not in http.get(f"/generate/{job_id}").headers
    # The same job through the generic jobs API.
    assert http.get(f"/jobs/v1/jobs/{job_id}/result").json() == final["reply"]
    assert http.post(f"/generate/{job_id}/cancel").status_code == 409
    assert http.get("/generate/NO-SUCH-JOB").status_code == 404


def test_interim_results_then_cancel(http: httpx.Client) -> None:
    job_id = http.post("/generate", json={"prompt": "Tell me everything"}).json()["id"]
    # While the model runs, the reply grows token by token.
    opening = "You asked: 'Tell me everything'."
    partial = poll_until(
        http, job_id, lambda s: s["state"] == "running" and s["reply"].startswith(opening)
    )
    assert partial["tokens"] >= 3

    cancelled = http.post(f"/generate/{job_id}/cancel")
    assert cancelled.status_code == 202
    final = poll_until(http, job_id, lambda s: s["state"] == "cancelled")
    assert partial["tokens"] <= final["tokens"] < 100  # stopped well before the end
    assert final["reply"].startswith(partial["reply"])  # what was generated is kept
    assert http.post(f"/generate/{job_id}/cancel").status_code == 202  # idempotent


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.mark.browser
def test_the_explore_page_starts_streams_and_cancels(base_url: str, browser: Browser) -> None:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(base_url)
        page.get_by_label("Prompt").fill("What is a job?")
        element = page.locator("#generation")
        element.get_by_role("button", name="Start").click()

        # Tokens stream into the element while the state says running.
        expect(element.locator("[part=state]")).to_have_text("running")
        output = element.locator("[part=output]")
        expect(output).to_contain_text("You\n asked:\n 'What\n is\n a\n job?'.")
        expect(output).to_contain_text(" Long\n operations\n")

        element.get_by_role("button", name="Cancel").click()
        expect(element.locator("[part=state]")).to_have_text("cancelled")
        expect(element.get_by_role("button", name="Cancel")).to_be_hidden()
        # The reply so far, as text, from polling GET /generate/{id}.
        expect(page.locator("#reply")).to_contain_text("You asked: 'What is a job?'. Long")
        streamed = output.inner_text()
        assert not streamed.rstrip().endswith("result.")  # it did not run to the end

        job_id = element.get_attribute("job-id")
        assert job_id is not None
        status = httpx.get(f"{base_url}/generate/{job_id}").json()
        assert status["state"] == "cancelled"
        assert streamed.replace("\n", "") == status["reply"]  # one token a line
        expect(page.locator("#reply")).to_have_text(status["reply"])
    finally:
        context.close()
    assert errors == []
