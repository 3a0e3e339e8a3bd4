"""What a careless or hostile client sends, on both adapters: every answer a problem
with a stable code (never a 500), the `Host` check, `nosniff`, the metrics token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.support.http_server import api_server, serve_wsgi
from underway import Underway
from underway.http.flask import UnderwayFlask
from underway.http.handlers import MAX_DEPTH
from underway.http.hosts import HostCheck

PROBLEM = "application/problem+json"


def register(uw: Underway) -> None:
    @uw.task
    def add(x: int, y: float = 1.0) -> float:
        return x + y

    @uw.task
    def keep(data: Any = None) -> Any:
        return data


@contextmanager
def server(kind: str, uw: Underway, **options: Any) -> Iterator[str]:
    register(uw)
    if kind == "starlette":
        with api_server(uw, **options) as url:
            yield url
        return
    app = Flask(__name__)
    UnderwayFlask(uw, app, start_workers=True, **options)
    with serve_wsgi(app) as url:
        yield url
    uw.stop(drain=1)


ADAPTERS = ["starlette", "flask"]


@pytest.fixture(params=ADAPTERS)
def http(request: pytest.FixtureRequest, uw: Underway) -> Iterator[httpx.Client]:
    with server(request.param, uw) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["x-content-type-options"] == "nosniff"
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    return body


def post(http: httpx.Client, task: str, raw: str, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return http.post(f"/v1/tasks/{task}/jobs", content=raw.encode(), headers=headers, **kwargs)


@pytest.mark.parametrize(
    "raw",
    [
        '{"x": NaN}',
        '{"x": 1, "y": Infinity}',
        '{"x": 1, "y": -Infinity}',
        '{"x": 1, "y": 1e999}',
        '{"data": {"deep": [1, NaN]}}',  # free-form: would be stored as null
    ],
)
def test_non_finite_numbers_are_validation_failed(http: httpx.Client, raw: str) -> None:
    task = "keep" if "data" in raw else "add"
    body = assert_problem(post(http, task, raw), 422, "validation-failed")
    assert "finite" in body["errors"][0]["message"]


def test_lone_surrogates_and_deep_nesting_are_400(http: httpx.Client) -> None:
    assert_problem(post(http, "keep", '{"data": "\\ud800"}'), 400, "malformed-json")
    assert_problem(post(http, "keep", '{"\\udfff": 1}'), 400, "malformed-json")
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH  # inside {"data": ...}: one level too many
    assert_problem(post(http, "keep", '{"data": ' + deep + "}"), 400, "nested-too-deeply")
    very_deep = "[" * 5000 + "]" * 5000
    assert_problem(post(http, "keep", '{"data": ' + very_deep + "}"), 400, "nested-too-deeply")
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert post(http, "keep", '{"data": ' + ok + "}").status_code == 202


def test_types_are_strict_over_http(http: httpx.Client) -> None:
    for raw in ('{"x": true}', '{"x": "1"}', '{"x": 1, "y": false}', '{"x": 1.5}'):
        assert_problem(post(http, "add", raw), 422, "validation-failed")
    assert post(http, "add", '{"x": 1, "y": 2}').status_code == 202  # an int is a number


def test_query_and_header_integers_are_bounded(http: httpx.Client) -> None:
    job_id = post(http, "add", '{"x": 1}').json()["id"]
    for after in (str(2**63), "99999999999999999999999", "-1", "x"):
        r = http.get(f"/v1/jobs/{job_id}/output", params={"after": after})
        assert_problem(r, 422, "validation-failed")
    r = http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(2**63)})
    assert_problem(r, 422, "validation-failed")
    for wait in ("nan", "inf", "-1"):
        assert_problem(
            http.get(f"/v1/jobs/{job_id}", params={"wait": wait}), 422, "validation-failed"
        )
    assert (
        http.get(f"/v1/jobs/{job_id}/output", params={"after": str(2**63 - 1)}).status_code == 200
    )


def test_garbage_cursor_is_refused_and_a_real_one_works(http: httpx.Client) -> None:
    for _ in range(3):
        post(http, "add", '{"x": 1}')
    assert_problem(http.get("/v1/jobs", params={"cursor": "garbage"}), 422, "validation-failed")
    page = http.get("/v1/jobs", params={"limit": 2}).json()
    assert page["next_cursor"] is not None
    rest = http.get("/v1/jobs", params={"cursor": page["next_cursor"]})
    assert rest.status_code == 200 and len(rest.json()["jobs"]) == 1


def test_empty_callback_url_means_none(http: httpx.Client) -> None:
    r = http.post("/v1/tasks/add/jobs", params={"callback_url": ""}, json={"x": 1})
    assert r.status_code == 202


def test_wrong_methods_are_405_with_allow(http: httpx.Client) -> None:
    for method in ("PUT", "QUERY", "TRACE", "PATCH"):
        body = assert_problem(http.request(method, "/v1/tasks"), 405, "method-not-allowed")
        assert "GET" in body["detail"]
    r = http.request("QUERY", "/v1/jobs/x")
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "DELETE, GET"


def test_every_answer_has_nosniff(http: httpx.Client) -> None:
    for r in (
        http.get("/v1/tasks"),
        http.get("/healthz"),
        http.get("/metrics"),
        http.get("/v1/nothing"),
        post(http, "add", '{"x": 1}'),
    ):
        assert r.headers["x-content-type-options"] == "nosniff"


def test_a_missing_static_file_is_a_problem(http: httpx.Client) -> None:
    for name in ("nope.js", ".hidden.js", "index.py", "dashboard.js%00.py"):
        body = assert_problem(http.get(f"/static/underway/{name}"), 404, "not-found")
        assert body["instance"].startswith("/static/underway/")
    found = http.get("/static/underway/underway-job.js")
    assert found.status_code == 200 and found.headers["x-content-type-options"] == "nosniff"


# -- the Host check -------------------------------------------------------------------


def test_host_check_rules() -> None:
    open_server = HostCheck(None, enforce=True)
    for host in ("localhost", "LOCALHOST:8000", "127.0.0.1", "127.8.0.1:1", "[::1]:80",
                 "[::1]", "app.localhost:3000", "localhost."):  # fmt: skip
        assert open_server.allows(host), host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]", "", None):
        assert not open_server.allows(host), host
    listed = HostCheck(["jobs.example.com", "*.corp.example"], enforce=True)
    assert listed.allows("jobs.example.com:443") and listed.allows("a.corp.example")
    assert listed.allows("localhost") and not listed.allows("example.com")
    assert HostCheck(None, enforce=False).allows("anything.example")
    assert not HostCheck(["jobs.example.com"], enforce=False).allows("other.example")
    assert HostCheck(["*"], enforce=True).allows("anything.example")


def server_for(kind: str, uw: Underway, **options: Any) -> AbstractContextManager[str]:
    return server(kind, uw, **options)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_open_server_answers_loopback_hosts_only(kind: str, uw: Underway) -> None:
    with server_for(kind, uw) as url, httpx.Client(base_url=url, timeout=30) as http:
        for host in ("localhost", "127.0.0.1:1234", "[::1]:8000"):
            assert http.get("/v1/tasks", headers={"Host": host}).status_code == 200
        r = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Host": "rebound.example"})
        assert_problem(r, 421, "misdirected-request")
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing was submitted
        assert_problem(http.get("/healthz", headers={"Host": "rebound.example"}), 421,
                       "misdirected-request")  # fmt: skip


@pytest.mark.parametrize("kind", ADAPTERS)
def test_allowed_hosts_and_tokens(kind: str, uw: Underway) -> None:
    with (
        server_for(kind, uw, allowed_hosts=["jobs.example.com"]) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        assert http.get("/v1/tasks", headers={"Host": "jobs.example.com"}).status_code == 200
        assert http.get("/v1/tasks", headers={"Host": "other.example"}).status_code == 421


@pytest.mark.parametrize("kind", ADAPTERS)
def test_with_tokens_any_host_is_answered(kind: str, uw: Underway) -> None:
    with (
        server_for(kind, uw, tokens={"tok": "alice"}) as url,
        httpx.Client(base_url=url, timeout=30, headers={"Authorization": "Bearer tok"}) as http,
    ):
        assert http.get("/v1/tasks", headers={"Host": "jobs.example.com"}).status_code == 200


# -- /metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ADAPTERS)
def test_metrics_token(kind: str, uw: Underway) -> None:
    options = {"tokens": {"tok": "alice"}, "metrics_token": "scrape"}
    with server_for(kind, uw, **options) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert_problem(http.get("/metrics"), 401, "unauthorized")
        r = http.get("/metrics", headers={"Authorization": "Bearer tok"})
        assert_problem(r, 401, "unauthorized")  # an API principal is not the scraper
        r = http.get("/metrics", headers={"Authorization": "Bearer scrape"})
        assert r.status_code == 200 and "underway_jobs" in r.text
