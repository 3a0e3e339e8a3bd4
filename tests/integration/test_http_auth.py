"""Bearer tokens, the host application's hook, and owner isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from tests.support.http_server import Gates, api_server, register_test_tasks
from underway import ConfigurationError, Underway
from underway.http.auth import Authenticator, load_tokens

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def url(uw: Underway, gates: Gates) -> Iterator[str]:
    with api_server(uw, tokens=TOKENS) as base:
        yield base


def client(url: str, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def test_missing_or_unknown_token_is_401(url: str) -> None:
    for token in (None, "nope"):
        with client(url, token) as http:
            for r in (http.get("/v1/jobs"), http.post("/v1/tasks/add/jobs", json={"x": 1})):
                assert r.status_code == 401
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["code"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
    with httpx.Client(base_url=url, headers={"Authorization": "Basic dG9rLWFsaWNl"}) as http:
        assert http.get("/v1/jobs").status_code == 401


def test_health_is_public_and_metrics_need_a_token(url: str) -> None:
    with client(url, None) as http:
        assert http.get("/healthz").status_code == 200
        r = http.get("/metrics")
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    with client(url, "tok-alice") as http:
        assert http.get("/metrics").status_code == 200


def test_another_owners_job_is_404_everywhere(url: str) -> None:
    with client(url, "tok-alice") as alice, client(url, "tok-bob") as bob:
        job = alice.post("/v1/tasks/hold/jobs", json={"gate": "own"}).json()
        assert job["owner"] == "alice"
        job_id = job["id"]
        for r in (
            bob.get(f"/v1/jobs/{job_id}"),
            bob.get(f"/v1/jobs/{job_id}/result"),
            bob.get(f"/v1/jobs/{job_id}/output"),
            bob.get(f"/v1/jobs/{job_id}/events"),
            bob.post(f"/v1/jobs/{job_id}/cancel"),
            bob.delete(f"/v1/jobs/{job_id}"),
        ):
            assert r.status_code == 404, r.text
            assert r.json()["code"] == "job-not-found"
        assert bob.get("/v1/jobs").json()["jobs"] == []
        assert [j["id"] for j in alice.get("/v1/jobs").json()["jobs"]] == [job_id]
        assert alice.get(f"/v1/jobs/{job_id}").json()["state"] in ("queued", "running")
        assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 202


def test_idempotency_keys_are_per_owner(url: str) -> None:
    with client(url, "tok-alice") as alice, client(url, "tok-bob") as bob:
        headers = {"Idempotency-Key": "same"}
        a = alice.post("/v1/tasks/add/jobs", json={"x": 1}, headers=headers).json()
        b = bob.post("/v1/tasks/add/jobs", json={"x": 2}, headers=headers).json()
        assert a["id"] != b["id"]
        assert b["owner"] == "bob"


def test_tokens_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens"
    path.write_text("# operators\nt1=alice\n\nt2 = bob  # comment\n")
    assert load_tokens(path) == {"t1": "alice", "t2": "bob"}
    assert load_tokens(str(path)) == {"t1": "alice", "t2": "bob"}
    monkeypatch.setenv("UNDERWAY_TOKENS", "token1=alice,token2=bob")
    assert load_tokens() == {"token1": "alice", "token2": "bob"}
    auth = Authenticator()
    assert auth.from_header("Bearer token2") == "bob"
    assert auth.from_header("bearer token1") == "alice"
    assert auth.from_header("Bearer token3") is None
    monkeypatch.delenv("UNDERWAY_TOKENS")
    assert Authenticator().anonymous
    with pytest.raises(ConfigurationError):
        load_tokens(tmp_path / "missing")
    path.write_text("just-a-token\n")
    with pytest.raises(ConfigurationError) as caught:
        load_tokens(path)
    assert "just-a-token" not in str(caught.value)


def test_environment_tokens_reach_the_server(
    uw: Underway, gates: Gates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNDERWAY_TOKENS", "envtok=carol")
    with api_server(uw) as base, client(base, "envtok") as http:
        job = http.post("/v1/tasks/add/jobs", json={"x": 1}).json()
        assert job["owner"] == "carol"
        with client(base, None) as anonymous:
            assert anonymous.get("/v1/jobs").status_code == 401


def test_hook_for_an_application_that_knows_its_user(uw: Underway, gates: Gates) -> None:
    async def user_from_session(request: Request) -> Any:
        return request.headers.get("x-user")  # stands in for a session lookup

    with api_server(uw, auth=user_from_session) as base:
        with httpx.Client(base_url=base, headers={"X-User": "dave"}) as dave:
            job = dave.post("/v1/tasks/add/jobs", json={"x": 1}).json()
            assert job["owner"] == "dave"
        with httpx.Client(base_url=base, headers={"X-User": "erin"}) as erin:
            assert erin.get(f"/v1/jobs/{job['id']}").status_code == 404
        with httpx.Client(base_url=base) as nobody:
            assert nobody.get("/v1/jobs").status_code == 401


def test_sync_hook(uw: Underway, gates: Gates) -> None:
    with api_server(uw, auth=lambda request: "frank") as base, httpx.Client(base_url=base) as http:
        assert http.post("/v1/tasks/add/jobs", json={"x": 1}).json()["owner"] == "frank"


def test_open_api_without_tokens_sees_everything(uw: Underway, gates: Gates) -> None:
    with api_server(uw) as base, httpx.Client(base_url=base) as http:
        job = http.post("/v1/tasks/add/jobs", json={"x": 1}).json()
        assert job["owner"] is None
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_cross_site_browser_requests_cannot_change_jobs(uw: Underway, gates: Gates) -> None:
    # An open API (no tokens), as `underway serve` on loopback: a page of another site
    # must not be able to start, cancel or delete jobs through the visitor's browser.
    with api_server(uw) as base, httpx.Client(base_url=base, timeout=30) as http:
        host = base.split("//", 1)[1]
        refused = [
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{host}"},
        ]
        for headers in refused:
            r = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers=headers)
            assert r.status_code == 403, headers
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "cross-site-request"
        assert http.get("/v1/jobs").json()["jobs"] == []  # nothing was queued
        allowed = [
            {},  # not a browser
            {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"},
            {"Origin": "http://evil.example", "X-Underway": "1"},  # needs a preflight
        ]
        for headers in allowed:
            r = http.post("/v1/tasks/add/jobs", json={"x": 1}, headers=headers)
            assert r.status_code == 202, headers
        # Reads stay open to any origin's simple requests: they change nothing.
        assert http.get("/v1/jobs", headers={"Origin": "http://evil.example"}).status_code == 200
