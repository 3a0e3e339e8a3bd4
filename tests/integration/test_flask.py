"""The Flask extension on a real werkzeug server: the API blueprint (SSE included)
and a slow view turned into a background job (seed 004)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, Response, abort, g, request

from tests.support.http_server import Gates, register_test_tasks, serve_wsgi, until
from underway import Underway
from underway.client import Client, parse_sse
from underway.http.flask import UnderwayFlask


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def flask_url(uw: Underway, gates: Gates) -> Iterator[str]:
    app = Flask(__name__)
    jobs = UnderwayFlask(uw, app, url_prefix="/jobs", max_body=1000, start_workers=True)

    @app.get("/")
    def home() -> str:
        return "host app"

    @app.post("/render/<int:render_id>")
    @jobs.background_view(keep_for="5m")
    def render_script(render_id: int) -> Response:
        data = json.loads(request.data)
        text_list = data["text_list"]
        job = g.underway_job
        for i, _text in enumerate(text_list, 1):
            gates.get(f"render:{render_id}").wait(10)
            job.progress(i, total=len(text_list))
        body = {
            "id": render_id,
            "files": [f"{t}.wav" for t in text_list],
            "voice": request.args.get("voice"),
            "user": request.headers.get("X-User"),
        }
        return Response(json.dumps(body), status=201, mimetype="application/json",
                        headers={"X-Rendered": str(len(text_list))})  # fmt: skip

    @app.post("/forbidden")
    @jobs.background_view()
    def forbidden() -> Any:
        abort(403)

    @app.post("/crash")
    @jobs.background_view()
    def crash() -> Any:
        raise RuntimeError("disk on fire")

    with serve_wsgi(app) as url:
        yield url
    uw.stop()


def test_background_view_end_to_end(flask_url: str, gates: Gates) -> None:
    with httpx.Client(base_url=flask_url, timeout=30) as http:
        r = http.post(
            "/render/7?voice=en",
            json={"text_list": ["a", "b", "c"]},
            headers={"X-User": "alice", "Cookie": "session=secret-cookie"},
        )
        assert r.status_code == 202
        location = r.headers["location"]
        assert location == f"/jobs/status/{r.json()['job_id']}"
        status = http.get(location)
        assert status.status_code == 202
        assert status.headers["retry-after"] == "1"
        assert status.headers["location"] == location
        gates.open("render:7")
        done = until(lambda: (s := http.get(location)).status_code != 202 and s)
        assert done.status_code == 201
        assert done.headers["x-rendered"] == "3"
        assert done.headers["content-type"] == "application/json"
        assert done.json() == {
            "id": 7,
            "files": ["a.wav", "b.wav", "c.wav"],
            "voice": "en",
            "user": "alice",
        }
        # The view's job is an ordinary job too, with the progress the view reported.
        job = http.get(f"/jobs/v1/jobs/{r.json()['job_id']}").json()
        assert job["state"] == "succeeded" and job["progress"]["percent"] == 100.0
        # The copy of the request (cookies included) is never shown through the API.
        assert "secret-cookie" not in http.get(f"/jobs/v1/jobs/{job['id']}").text
        assert "secret-cookie" not in http.get("/jobs/v1/jobs").text


def test_background_view_errors(flask_url: str) -> None:
    with httpx.Client(base_url=flask_url, timeout=30) as http:
        forbidden = http.post("/forbidden").headers["location"]
        r = until(lambda: (s := http.get(forbidden)).status_code != 202 and s)
        assert r.status_code == 403
        crash = http.post("/crash").headers["location"]
        r = until(lambda: (s := http.get(crash)).status_code != 202 and s)
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/problem+json"
        # The exception's message says what went wrong; the traceback stays private.
        assert "RuntimeError: disk on fire" in r.json()["detail"] and "Traceback" not in r.text
        missing = http.get("/jobs/status/NOPE")
        assert missing.status_code == 404 and missing.json()["code"] == "job-not-found"


def test_blueprint_serves_the_api(flask_url: str, gates: Gates) -> None:
    with httpx.Client(base_url=flask_url + "/jobs", timeout=30) as http:
        assert http.get(flask_url).text == "host app"
        r = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=10"})
        assert r.status_code == 200 and r.json()["result"] == 2
        assert r.headers["location"] == f"/jobs/v1/jobs/{r.json()['id']}"
        assert http.get(r.headers["location"].removeprefix("/jobs")).json()["state"] == "succeeded"
        assert http.get("/v1/tasks").json()["tasks"][0]["name"] == "add"
        assert http.get("/v1/nope").json()["code"] == "not-found"
        assert http.put("/v1/jobs").status_code == 405
        assert http.post("/v1/tasks/add/jobs", content=b"{").json()["code"] == "malformed-json"
        big = http.post("/v1/tasks/add/jobs", content=b"[" + b"1," * 600 + b"1]")
        assert big.status_code == 413 and big.json()["code"] == "payload-too-large"
        assert http.get("/healthz").json() == {"status": "ok"}
        assert "underway_jobs" in http.get("/metrics").text


def test_blueprint_sse_and_client(flask_url: str, gates: Gates) -> None:
    for i in range(2):
        gates.open(f"fs:{i}")
    with Client(flask_url + "/jobs") as client:
        job = client.submit("stepper", steps=2, gate="fs")
        events = list(job.events(timeout=30))
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].kind.value == "done"
        assert job.wait(timeout=10) == {"steps": 2}
    with httpx.Client(base_url=flask_url + "/jobs", timeout=30) as http:
        last = events[-3].seq
        with http.stream(
            "GET", f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": str(last)}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            resumed = [int(i or 0) for i, _, _ in parse_sse(r.iter_lines())]
        assert resumed == [e.seq for e in events[-2:]]


def test_blueprint_serves_the_element_script(flask_url: str) -> None:
    with httpx.Client(base_url=flask_url, timeout=30) as http:
        r = http.get("/jobs/static/underway/underway-job.js")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/javascript")
        assert "customElements.define" in r.text
        missing = http.get("/jobs/static/underway/nope.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        for bad in ("..%2Fapp.py", ".hidden.js", "..%2F..%2Fpyproject.toml"):
            assert http.get(f"/jobs/static/underway/{bad}").status_code == 404


# -- background views under tokens: the API's isolation rules --------------------------------
@pytest.fixture
def tokens_flask(uw: Underway) -> Iterator[tuple[str, Underway]]:
    app = Flask(__name__)
    jobs = UnderwayFlask(
        uw, app, url_prefix="/jobs", tokens={"ta": "alice", "tb": "bob"}, start_workers=True
    )

    @app.post("/secret")
    @jobs.background_view()
    def secret() -> Any:
        return {
            "for": g.underway_principal,
            "saw": sorted(
                name
                for name in ("Authorization", "Cookie", "Proxy-Authorization", "X-Kept")
                if name in request.headers
            ),
        }

    with serve_wsgi(app) as url:
        yield url, uw
    uw.stop()


def test_background_view_status_applies_auth_and_owner(
    tokens_flask: tuple[str, Underway],
) -> None:
    url, uw = tokens_flask
    alice, bob = {"Authorization": "Bearer ta"}, {"Authorization": "Bearer tb"}
    with httpx.Client(base_url=url, timeout=30) as http:
        started = http.post(
            "/secret",
            headers={**alice, "Cookie": "session=s3", "Proxy-Authorization": "Basic eA==",
                     "X-Kept": "1"},
        )  # fmt: skip
        assert started.status_code == 202
        location = started.headers["location"]
        done = until(lambda: (s := http.get(location, headers=alice)).status_code != 202 and s)
        assert done.status_code == 200
        assert done.json() == {"for": "alice", "saw": ["X-Kept"]}

        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = http.get(location, headers=headers)
            assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
            assert "alice" not in denied.text
        hidden = http.get(location, headers=bob)
        assert hidden.status_code == 404 and hidden.json()["code"] == "job-not-found"
        assert "alice" not in hidden.text
        # The view's job is alice's through the API too.
        job_id = started.json()["job_id"]
        assert http.get(f"/jobs/v1/jobs/{job_id}", headers=bob).status_code == 404
        assert http.get(f"/jobs/v1/jobs/{job_id}", headers=alice).json()["owner"] == "alice"

    stored = uw.get(job_id).meta["request"]["environ"]
    assert stored["HTTP_X_KEPT"] == "1"
    for key in ("HTTP_AUTHORIZATION", "HTTP_COOKIE", "HTTP_PROXY_AUTHORIZATION"):
        assert key not in stored
    assert "s3" not in json.dumps(uw.get(job_id).meta) and "Bearer" not in json.dumps(stored)
