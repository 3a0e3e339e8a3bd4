"""The HTTP contract (DESIGN.md) over real uvicorn and real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tests.support.http_server import Gates, api_server, register_test_tasks, serve_asgi, until
from underway import StoreUnavailable, Underway
from underway.http import asgi

PROBLEM = "application/problem+json"


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def http(uw: Underway, gates: Gates) -> Iterator[httpx.Client]:
    with api_server(uw, max_body=1000) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    assert "Traceback" not in response.text
    return body


def test_submit_answers_202_with_location_and_retry_after(http: httpx.Client) -> None:
    r = http.post("/v1/tasks/hold/jobs", json={"gate": "never"})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert int(r.headers["retry-after"]) >= 1
    assert job["task"] == "hold" and job["params"] == {"gate": "never"}
    assert job["state"] in ("queued", "running")
    http.post(f"/v1/jobs/{job['id']}/cancel")


def test_prefer_wait_returns_the_finished_job(http: httpx.Client) -> None:
    r = http.post("/v1/tasks/add/jobs", json={"x": 2, "y": 3}, headers={"Prefer": "wait=10"})
    assert r.status_code == 200  # finished within the wait: the complete answer
    assert r.json()["state"] == "succeeded"
    assert r.json()["result"] == 5
    assert "retry-after" not in r.headers
    assert r.headers["preference-applied"] == "wait=10"


def test_prefer_wait_answers_202_when_the_job_is_not_done(http: httpx.Client, gates: Gates) -> None:
    r = http.post("/v1/tasks/hold/jobs", json={"gate": "late"}, headers={"Prefer": "wait=0.2"})
    assert r.status_code == 202
    assert r.json()["state"] in ("queued", "running")
    assert r.headers["preference-applied"] == "wait=0.2"
    gates.open("late")


def test_prefer_wait_is_capped(http: httpx.Client, gates: Gates) -> None:
    # A silly wait is capped (30 s) rather than refused; the job still answers promptly
    # once it finishes.
    job_id = http.post("/v1/tasks/hold/jobs", json={"gate": "g"}).json()["id"]
    gates.open("g")
    r = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=99999"})
    assert r.json()["state"] == "succeeded"
    assert r.headers["preference-applied"] == "wait=30"
    assert http.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()["state"] == "succeeded"


def test_get_job_and_result_lifecycle(http: httpx.Client, gates: Gates) -> None:
    job_id = http.post("/v1/tasks/hold/jobs", json={"gate": "life"}).json()["id"]
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.headers["retry-after"] == "1"
    pending = http.get(f"/v1/jobs/{job_id}/result")
    assert pending.status_code == 202
    assert pending.headers["location"] == f"/v1/jobs/{job_id}/result"
    assert "retry-after" in pending.headers
    gates.open("life")
    done = http.get(f"/v1/jobs/{job_id}", params={"wait": 10})
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded")
    assert done.status_code == 200
    r = http.get(f"/v1/jobs/{job_id}/result")
    assert r.status_code == 200 and r.json() == "released"
    assert "retry-after" not in http.get(f"/v1/jobs/{job_id}").headers


def test_long_poll_returns_when_the_job_changes(http: httpx.Client, gates: Gates) -> None:
    job_id = http.post("/v1/tasks/stepper/jobs", json={"steps": 2, "gate": "lp"}).json()["id"]
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "running")
    gates.open("lp:0")
    started = time.monotonic()
    r = http.get(f"/v1/jobs/{job_id}", params={"wait": 20})
    assert time.monotonic() - started < 10
    assert r.status_code == 200
    gates.open("lp:1")
    final = http.get(f"/v1/jobs/{job_id}", params={"wait": 20})
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded")
    assert final.json()["id"] == job_id


def test_long_poll_times_out_with_the_current_job(http: httpx.Client) -> None:
    job_id = http.post("/v1/tasks/hold/jobs", json={"gate": "forever"}).json()["id"]
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "running")
    started = time.monotonic()
    r = http.get(f"/v1/jobs/{job_id}", params={"wait": 0.3})
    assert 0.25 <= time.monotonic() - started < 5
    assert r.json()["state"] == "running"
    http.post(f"/v1/jobs/{job_id}/cancel")


def test_failed_job_result_is_409_problem(http: httpx.Client) -> None:
    r = http.post("/v1/tasks/boom/jobs", json={}, headers={"Prefer": "wait=10"})
    job = r.json()
    assert job["state"] == "failed"
    assert job["error"]["type"] == "ValueError"
    body = assert_problem(http.get(f"/v1/jobs/{job['id']}/result"), 409, "job-failed")
    assert body["job"]["id"] == job["id"]


def test_output_after(http: httpx.Client, gates: Gates) -> None:
    for i in range(3):
        gates.open(f"out:{i}")
    r = http.post(
        "/v1/tasks/stepper/jobs", json={"steps": 3, "gate": "out"}, headers={"Prefer": "wait=10"}
    )
    job_id = r.json()["id"]
    assert http.get(f"/v1/jobs/{job_id}/output").json()["items"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    page = http.get(f"/v1/jobs/{job_id}/output", params={"after": 1}).json()
    assert page == {"items": [{"i": 1}, {"i": 2}], "after": 1, "next": 3, "attempt": 1}


def test_cancel_and_delete(http: httpx.Client, gates: Gates) -> None:
    job_id = http.post("/v1/tasks/hold/jobs", json={"gate": "c"}).json()["id"]
    assert_problem(http.delete(f"/v1/jobs/{job_id}"), 409, "job-active")
    r = http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202  # idempotent
    until(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled")
    assert_problem(http.get(f"/v1/jobs/{job_id}/result"), 409, "job-cancelled")
    r = http.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 204 and r.content == b""
    assert_problem(http.get(f"/v1/jobs/{job_id}"), 404, "job-not-found")


def test_cancel_of_a_succeeded_job_is_409(http: httpx.Client) -> None:
    job = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=10"}).json()
    body = assert_problem(http.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job-finished")
    assert body["job"]["state"] == "succeeded"


def test_list_pages_newest_first_with_filters(http: httpx.Client) -> None:
    ids = [
        http.post("/v1/tasks/add/jobs", json={"x": i}, headers={"Prefer": "wait=10"}).json()["id"]
        for i in range(5)
    ]
    http.post("/v1/tasks/boom/jobs", json={}, headers={"Prefer": "wait=10"})
    first = http.get("/v1/jobs", params={"task": "add", "limit": 3}).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:3]
    second = http.get(
        "/v1/jobs", params={"task": "add", "limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][3:]
    assert second["next_cursor"] is None
    failed = http.get("/v1/jobs", params={"state": "failed"}).json()["jobs"]
    assert [j["task"] for j in failed] == ["boom"]
    assert_problem(http.get("/v1/jobs", params={"state": "bogus"}), 422, "validation-failed")
    assert_problem(http.get("/v1/jobs", params={"limit": "x"}), 422, "validation-failed")


def test_tasks_lists_schemas(http: httpx.Client) -> None:
    tasks = {t["name"]: t for t in http.get("/v1/tasks").json()["tasks"]}
    assert tasks["add"]["params_schema"]["required"] == ["x"]
    assert tasks["add"]["description"] == "Add two integers."


def test_idempotency_key(http: httpx.Client) -> None:
    headers = {"Idempotency-Key": "k1"}
    a = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers=headers)
    b = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    conflict = http.post("/v1/tasks/add/jobs", json={"x": 2}, headers=headers)
    assert_problem(conflict, 422, "idempotency-conflict")


def test_supersede_cancels_the_previous_job(http: httpx.Client) -> None:
    first = http.post("/v1/tasks/hold/jobs?supersede=s", json={"gate": "s1"}).json()["id"]
    second = http.post("/v1/tasks/hold/jobs?supersede=s", json={"gate": "s2"}).json()["id"]
    until(lambda: http.get(f"/v1/jobs/{first}").json()["state"] == "cancelled")
    assert http.get(f"/v1/jobs/{second}").json()["state"] in ("queued", "running")
    http.post(f"/v1/jobs/{second}/cancel")


def test_error_cases_are_problems(http: httpx.Client) -> None:
    assert_problem(http.post("/v1/tasks/nope/jobs", json={}), 404, "task-not-found")
    assert_problem(http.get("/v1/jobs/NOPE"), 404, "job-not-found")
    assert_problem(http.get("/v1/nothing/here"), 404, "not-found")
    assert_problem(http.get("/elsewhere"), 404, "not-found")
    r = http.put("/v1/jobs")
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "GET"
    assert_problem(http.post("/v1/jobs/X/result"), 405, "method-not-allowed")
    assert_problem(http.post("/v1/tasks/add/jobs", content=b"{not json"), 400, "malformed-json")
    assert_problem(http.post("/v1/tasks/add/jobs", content=b"\xff\xfe"), 400, "malformed-json")
    big = b'{"x": 1, "pad": "' + b"a" * 2000 + b'"}'
    assert_problem(http.post("/v1/tasks/add/jobs", content=big), 413, "payload-too-large")
    chunks = (b"a" * 300 for _ in range(5))  # chunked: no Content-Length to trust
    assert_problem(http.post("/v1/tasks/add/jobs", content=chunks), 413, "payload-too-large")
    assert_problem(http.post("/v1/tasks/add/jobs", json=[1]), 422, "validation-failed")
    assert_problem(http.get("/v1/jobs/X", params={"wait": "soon"}), 422, "validation-failed")


def test_validation_lists_one_error_per_field(http: httpx.Client) -> None:
    body = assert_problem(
        http.post("/v1/tasks/add/jobs", json={"x": "one", "y": "two", "z": 3}),
        422,
        "validation-failed",
    )
    assert sorted(e["field"] for e in body["errors"]) == ["x", "y", "z"]
    assert all(e["message"] for e in body["errors"])
    missing = assert_problem(http.post("/v1/tasks/add/jobs", json={}), 422, "validation-failed")
    assert [e["field"] for e in missing["errors"]] == ["x"]


def test_store_unavailable_is_503_with_retry_after(
    http: httpx.Client, uw: Underway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("database is restarting", retry_after=7)

    monkeypatch.setattr(uw.store, "get", down)
    r = http.get("/v1/jobs/ANY")
    assert_problem(r, 503, "store-unavailable")
    assert r.headers["retry-after"] == "7"


def test_unexpected_error_is_a_bare_500_problem(
    http: httpx.Client, uw: Underway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret path /etc/underway/key")

    monkeypatch.setattr(uw.store, "list_jobs", broken)
    r = http.get("/v1/jobs")
    body = assert_problem(r, 500, "internal-error")
    assert "secret" not in r.text and "RuntimeError" not in body["detail"]


def test_healthz_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    http.post("/v1/tasks/add/jobs", json={"x": 1}, headers={"Prefer": "wait=10"})
    text = http.get("/metrics").text
    assert 'underway_jobs{state="succeeded"} 1.0' in text
    assert 'underway_http_requests_total{route="submit_job",status="200"} 1.0' in text
    http.post("/v1/tasks/boom/jobs", json={}, headers={"Prefer": "wait=10"})
    text = http.get("/metrics").text
    assert 'underway_task_jobs{state="succeeded",task="add"} 1.0' in text
    assert 'underway_task_jobs{state="failed",task="boom"} 1.0' in text
    assert 'underway_task_jobs{state="queued",task="add"} 0.0' in text
    assert 'underway_job_outcomes_total{outcome="succeeded",task="add"} 1.0' in text
    assert 'underway_job_outcomes_total{outcome="failed",task="boom"} 1.0' in text
    assert 'underway_job_run_seconds_bucket{le="+Inf",task="add"} 1.0' in text
    assert 'underway_job_queue_wait_seconds_count{task="boom"} 1.0' in text
    # Scraped again: each finished job is counted once.
    again = http.get("/metrics").text
    assert 'underway_job_outcomes_total{outcome="succeeded",task="add"} 1.0' in again


def test_mounted_under_a_prefix(uw: Underway, gates: Gates) -> None:
    async def home(request: Any) -> JSONResponse:
        return JSONResponse({"app": "host"})

    host = Starlette(routes=[Route("/", home), Mount("/jobs", app=asgi(uw))])
    uw.start()
    with serve_asgi(host) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").json() == {"app": "host"}
        r = client.post("/jobs/v1/tasks/add/jobs", json={"x": 4}, headers={"Prefer": "wait=10"})
        assert r.headers["location"] == f"/jobs/v1/jobs/{r.json()['id']}"
        assert client.get(r.headers["location"]).json()["result"] == 5
        assert_problem(client.get("/jobs/v1/missing"), 404, "not-found")
        assert client.get("/jobs/v1/openapi.json").json()["servers"] == [{"url": "/jobs"}]
