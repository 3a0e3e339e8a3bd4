"""`GET /v1/jobs/{id}/output?as=text` on both adapters: the output so far as one text,
and the event id after which the stream brings exactly the rest."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.support.http_server import api_server, serve_wsgi, until
from underway import Job, Underway
from underway.client import parse_sse
from underway.http import output_text
from underway.http.flask import UnderwayFlask

PROBLEM = "application/problem+json"


class Tokens:
    """Tasks that emit word tokens, as a chat model does; `release` ends `chatter`."""

    def __init__(self, uw: Underway) -> None:
        self.release = threading.Event()

        @uw.task
        def chatter(job: Job) -> int:
            """Emits " w0", " w1", ... until released (then "."), pausing a little."""
            n = 0
            while not self.release.is_set():
                job.emit(f" w{n}")
                n += 1
                self.release.wait(0.001)  # pacing, so the test reads it mid-stream
            job.emit(".")
            return n

        @uw.task(retries=1, retry_backoff=0.01)
        def second_try(job: Job) -> str:
            """Emits a different text on each attempt; the first attempt fails."""
            for word in ["first", " try"] if job.attempt == 1 else ["second", " try", "!"]:
                job.emit(word)
            job.log(f"attempt {job.attempt}")
            if job.attempt == 1:
                raise RuntimeError("try again")
            return "ok"

        @uw.task
        def mixed(job: Job) -> None:
            job.emit("rows:")
            job.emit({"row": 1})


@pytest.fixture(params=["starlette", "flask"])
def api(request: pytest.FixtureRequest, uw: Underway) -> Iterator[tuple[httpx.Client, Tokens]]:
    tokens = Tokens(uw)
    if request.param == "starlette":
        with api_server(uw) as url, httpx.Client(base_url=url, timeout=30) as http:
            yield http, tokens
        return
    app = Flask(__name__)
    UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True)
    with serve_wsgi(app) as url, httpx.Client(base_url=url + "/jobs", timeout=30) as http:
        yield http, tokens
    uw.stop(drain=1)


def submit(http: httpx.Client, task: str) -> str:
    r = http.post(f"/v1/tasks/{task}/jobs", json={})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def text_view(http: httpx.Client, job_id: str, **params: Any) -> dict[str, Any]:
    r = http.get(f"/v1/jobs/{job_id}/output", params={"as": "text", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    return body


def events_after(http: httpx.Client, job_id: str, last_event_id: int) -> list[tuple[int, str, Any]]:
    """The stream resumed after `last_event_id`, read to its end (the job is finished)."""
    headers = {"Last-Event-ID": str(last_event_id)}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as r:
        assert r.status_code == 200
        return [(int(i or 0), k, json.loads(d)) for i, k, d in parse_sse(r.iter_lines())]


def all_items(http: httpx.Client, job_id: str) -> list[Any]:
    items: list[Any] = []
    while True:
        page = http.get(f"/v1/jobs/{job_id}/output", params={"after": len(items)}).json()
        if not page["items"]:
            return items
        items += page["items"]


def test_the_text_so_far_and_the_stream_after_it_give_the_whole_output_once(
    api: tuple[httpx.Client, Tokens], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, tokens = api
    # Small reads of the log, so that the worker appends between them.
    monkeypatch.setattr(output_text, "READ_LIMIT", 7)
    job_id = submit(http, "chatter")
    # Several reads while the worker is appending: each must fit the stream exactly.
    views: list[dict[str, Any]] = []
    while len(views) < 5:
        seen = views[-1]["next"] if views else output_text.READ_LIMIT  # several reads' worth
        views.append(until(lambda seen=seen: (v := text_view(http, job_id))["next"] > seen and v))
    tokens.release.set()
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", "the end")

    final = text_view(http, job_id)
    items = all_items(http, job_id)
    assert final["text"] == "".join(items) and final["text"].endswith(".")
    assert final["text"].startswith(" w0 w1 w2")
    assert views[0]["next"] > output_text.READ_LIMIT  # read in several pieces
    assert final["next"] == len(items) and final["attempt"] == 1
    assert final["done"] is True and final["log"] == []
    assert events_after(http, job_id, final["last_event_id"]) == []

    for view in views:
        assert view["done"] is False and view["attempt"] == 1
        assert final["text"].startswith(view["text"])
        rest = [d for _, kind, d in events_after(http, job_id, view["last_event_id"])]
        outputs = [d for d in rest if isinstance(d, dict) and "item" in d]
        # Exactly the items after the text: numbered on from `next`, none twice.
        assert [d["index"] for d in outputs] == list(range(view["next"], len(items)))
        assert view["text"] + "".join(d["item"] for d in outputs) == final["text"]


def test_a_retried_jobs_text_is_its_latest_attempts(api: tuple[httpx.Client, Tokens]) -> None:
    http, _ = api
    job_id = submit(http, "second_try")
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", "the retry")
    view = text_view(http, job_id)
    assert view["text"] == "second try!"
    assert (view["attempt"], view["next"], view["done"]) == (2, 3, True)
    assert view["log"] == ["attempt 2"]
    first = text_view(http, job_id, attempt=1)
    assert (first["text"], first["attempt"], first["next"]) == ("first try", 1, 2)
    assert first["log"] == ["attempt 1"]
    # The items view agrees, attempt by attempt.
    assert http.get(f"/v1/jobs/{job_id}/output").json()["items"] == ["second", " try", "!"]


def test_output_that_is_not_text_is_409(api: tuple[httpx.Client, Tokens]) -> None:
    http, _ = api
    job_id = submit(http, "mixed")
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", "the job")
    r = http.get(f"/v1/jobs/{job_id}/output", params={"as": "text"})
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "output-not-text"
    assert "item 1 of attempt 1" in r.json()["detail"]
    assert http.get(f"/v1/jobs/{job_id}/output", params={"as": "items"}).json()["items"] == [
        "rows:",
        {"row": 1},
    ]
    bad = http.get(f"/v1/jobs/{job_id}/output", params={"as": "html"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.as"
    gone = http.get("/v1/jobs/NOPE/output", params={"as": "text"})
    assert gone.status_code == 404 and gone.json()["code"] == "job-not-found"


def test_a_queued_job_has_no_text_yet(uw: Underway) -> None:
    Tokens(uw)
    with api_server(uw, start_workers=False) as url, httpx.Client(base_url=url) as http:
        job_id = submit(http, "chatter")
        view = text_view(http, job_id)
        assert view == {
            "text": "",
            "attempt": 0,
            "next": 0,
            "last_event_id": 1,  # the `queued` state event
            "done": False,
            "log": [],
        }


def test_the_document_describes_the_text_view(uw: Underway) -> None:
    with api_server(uw, start_workers=False) as url:
        doc = httpx.get(f"{url}/v1/openapi.json").json()
    op = doc["paths"]["/v1/jobs/{id}/output"]["get"]
    assert {"name": "as", "schema": {"enum": ["items", "text"]}}.items() <= {
        k: v for p in op["parameters"] if p["name"] == "as" for k, v in p.items()
    }.items()
    assert "409" in op["responses"]
    required = doc["components"]["schemas"]["OutputText"]["required"]
    assert required == ["text", "attempt", "next", "last_event_id", "done", "log"]
