"""Webhooks to a real receiver: signed, retried with backoff, recorded, allow-listed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http_server import (
    Gates,
    Received,
    WebhookReceiver,
    api_server,
    register_test_tasks,
    until,
    webhook_receiver,
)
from underway import ConfigurationError, Underway
from underway.http.webhooks import WebhookDispatcher
from underway.webhooks import (
    InvalidSignature,
    SeenIds,
    StaleTimestamp,
    WebhookVerificationError,
    generate_secret,
    headers_for,
    secret_key,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver(statuses=[500, 503]) as r:
        yield r


@pytest.fixture
def http(uw: Underway, gates: Gates, receiver: WebhookReceiver) -> Iterator[httpx.Client]:
    options = {"backoff": 0.05, "max_attempts": 4, "recheck": 0.2}
    with (
        api_server(
            uw,
            callback_hosts=[f"127.0.0.1:{receiver.port}"],
            webhook_secret=SECRET,
            webhook_options=options,
        ) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def test_signed_delivery_after_retries(
    http: httpx.Client, receiver: WebhookReceiver, gates: Gates
) -> None:
    callback = f"{receiver.url}/hook?source=test"
    r = http.post("/v1/tasks/hold/jobs", params={"callback_url": callback}, json={"gate": "wh"})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert receiver.received == []  # nothing before the job finishes
    gates.open("wh")
    until(lambda: len(receiver.received) == 3, "three attempts (two failures, then 200)")
    for attempt, hit in enumerate(receiver.received, 1):
        assert hit.path == "/hook?source=test"
        assert verify(SECRET, hit.headers, hit.body, seen=None)["id"] == job_id
        assert hit.headers["webhook-id"] == f"{job_id}_{attempt}"
        assert hit.headers["underway-delivery-attempt"] == str(attempt)
        assert hit.json()["id"] == job_id
        assert hit.json()["state"] == "succeeded" and hit.json()["result"] == "released"
    with pytest.raises(InvalidSignature):
        verify("whsec_b3RoZXI=", receiver.received[0].headers, receiver.received[0].body)
    job = until(lambda: (j := http.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"]
                == "delivered" and j)  # fmt: skip
    attempts = job["webhook"]["attempts"]
    assert [a["status"] for a in attempts] == [500, 503, 200]
    assert [a["error"] for a in attempts] == ["HTTP 500", "HTTP 503", None]
    assert job["webhook"]["url"] == callback


def test_gives_up_after_max_attempts(uw: Underway, gates: Gates) -> None:
    with (
        webhook_receiver(statuses=[500] * 10) as receiver,
        api_server(
            uw,
            callback_hosts=["127.0.0.1"],
            webhook_secret=SECRET,
            webhook_options={"backoff": 0.02, "max_attempts": 3},
        ) as url,
        httpx.Client(base_url=url) as http,
    ):
        job = http.post(
            "/v1/tasks/add/jobs", params={"callback_url": receiver.url}, json={"x": 1}
        ).json()
        final = until(lambda: (j := http.get(f"/v1/jobs/{job['id']}").json())["webhook"]["state"]
                      == "failed" and j)  # fmt: skip
        assert len(final["webhook"]["attempts"]) == 3
        assert len(receiver.received) == 3


def test_host_not_on_allow_list_is_422_and_nothing_is_sent(
    http: httpx.Client, receiver: WebhookReceiver
) -> None:
    with webhook_receiver() as outsider:
        for url in (
            outsider.url,  # same host, other port
            f"http://localhost:{receiver.port}/",  # other name for an allowed address
            "http://169.254.169.254/latest/meta-data",
            f"ftp://127.0.0.1:{receiver.port}/",
            f"http://user:pw@127.0.0.1:{receiver.port}/",
            "not a url",
        ):
            r = http.post(
                "/v1/tasks/add/jobs",
                params={"callback_url": url},
                json={"x": 1},
                headers={"Prefer": "wait=5"},
            )
            assert r.status_code == 422, url
            assert r.json()["code"] == "validation-failed"
            assert r.json()["errors"][0]["field"] == "query.callback_url"
        assert http.get("/v1/jobs").json()["jobs"] == []  # no job was created either
        assert outsider.received == []


def test_no_callback_hosts_means_no_webhooks(uw: Underway, gates: Gates) -> None:
    with api_server(uw) as url, httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/tasks/add/jobs", params={"callback_url": "http://127.0.0.1/"}, json={"x": 1}
        )
        assert r.status_code == 422


def test_allow_list_needs_a_secret(uw: Underway) -> None:
    with pytest.raises(ConfigurationError):
        WebhookDispatcher(uw, allowed_hosts=["example.com"], secret=None)


def test_wildcard_hosts(uw: Underway) -> None:
    hooks = WebhookDispatcher(uw, allowed_hosts=["*.example.com", "api.test:8443"], secret=SECRET)
    assert hooks.check_url("https://hooks.example.com/a")
    assert hooks.check_url("https://api.test:8443/")
    for bad in ("https://example.com.evil.net/", "https://api.test/", "https://evilexample.com/"):
        with pytest.raises(Exception, match="callback_url"):
            hooks.check_url(bad)


def test_deliveries_left_unfinished_resume_after_a_restart(
    db_path: Path, receiver: WebhookReceiver
) -> None:
    # The first server gets only failures and stops before it gives up; a second
    # server on the same store finishes the delivery, counting the earlier attempts.
    options = {"backoff": 30.0, "max_attempts": 4, "recheck": 0.2}
    hosts = [f"127.0.0.1:{receiver.port}"]
    first = Underway(f"sqlite:///{db_path}")
    register_test_tasks(first)
    with (
        api_server(
            first, callback_hosts=hosts, webhook_secret=SECRET, webhook_options=options
        ) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        r = client.post(
            "/v1/tasks/add/jobs", params={"callback_url": f"{receiver.url}/hook"}, json={"x": 1}
        )
        job_id = r.json()["id"]
        until(lambda: len(receiver.received) == 1, "the first (failing) attempt")
        until(
            lambda: len(first.get(job_id).meta.get("webhook", {}).get("attempts", [])) == 1,
            "the attempt recorded on the job",
        )
    first.close()

    receiver.statuses.clear()  # the receiver is back
    second = Underway(f"sqlite:///{db_path}")
    register_test_tasks(second)
    try:
        with api_server(
            second, callback_hosts=hosts, webhook_secret=SECRET, webhook_options=options
        ):
            until(lambda: len(receiver.received) == 2, "the resumed delivery")
            until(
                lambda: second.get(job_id).meta.get("webhook", {}).get("state") == "delivered",
                "the delivery recorded as done",
            )
        hit = receiver.received[1]
        assert hit.headers["underway-delivery-attempt"] == "2"
        assert verify(SECRET, hit.headers, hit.body, seen=None)["id"] == job_id
    finally:
        second.close()


@contextmanager
def verifying_receiver() -> Iterator[tuple[str, list[tuple[int, str, Received]]]]:
    """A receiver as the README shows one: it calls `underway.webhooks.verify` and
    answers 204, or 400 naming the error. Yields its URL and what it answered."""
    answered: list[tuple[int, str, Received]] = []
    seen = SeenIds()  # this receiver's own memory of delivery ids

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                verify(SECRET, self.headers, body, seen=seen)
                status, why = 204, ""
            except WebhookVerificationError as exc:
                status, why = 400, type(exc).__name__
            answered.append((status, why, Received(self.path, dict(self.headers), body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answered
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def test_a_verifying_receiver_takes_deliveries_and_refuses_forgeries(uw: Underway) -> None:
    register_test_tasks(uw)
    with verifying_receiver() as (hook_url, answered):
        port = hook_url.rsplit(":", 1)[1]
        with (
            api_server(uw, callback_hosts=[f"127.0.0.1:{port}"], webhook_secret=SECRET) as url,
            httpx.Client(base_url=url, timeout=30) as client,
        ):
            r = client.post("/v1/tasks/add/jobs", params={"callback_url": hook_url}, json={"x": 1})
            job_id = r.json()["id"]
            until(lambda: answered, "the delivery")
        status, why, delivery = answered[0]
        assert (status, why) == (204, ""), why
        assert delivery.json()["id"] == job_id and delivery.json()["result"] == 2

        def send(headers: dict[str, str], body: bytes) -> tuple[int, str]:
            before = len(answered)
            httpx.post(hook_url, content=body, headers=headers)
            return answered[before][:2]

        sent = {k: v for k, v in delivery.headers.items() if k.lower().startswith("webhook-")}
        # The captured delivery, replayed as is.
        assert send(sent, delivery.body) == (400, "ReplayedDelivery")
        # A tampered body under the captured signature.
        tampered = delivery.body.replace(b'"result":2', b'"result":3')
        assert tampered != delivery.body
        assert send(sent, tampered) == (400, "InvalidSignature")
        # Properly signed, but an hour old (as an attacker cannot re-sign, this is how a
        # capture ages); and one from the future.
        for skew in (-3600, 3600):
            old = headers_for(SECRET, "fresh-id", delivery.body, int(time.time()) + skew)
            assert send(old, delivery.body) == (400, "StaleTimestamp")
        assert send({}, delivery.body) == (400, "MissingHeaders")
        # A new, properly signed delivery still goes through.
        fresh = headers_for(SECRET, "fresh-id", delivery.body)
        assert send(fresh, delivery.body) == (204, "")


def test_verify_and_seen_ids_units() -> None:
    body = b'{"id": "j"}'
    headers = headers_for(SECRET, "a", body, timestamp=1_000_000)
    assert verify(SECRET, headers, body, now=1_000_100, seen=None) == {"id": "j"}
    assert verify(SECRET, {k.upper(): v for k, v in headers.items()}, body, now=1_000_000,
                  seen=None) == {"id": "j"}  # fmt: skip
    with pytest.raises(StaleTimestamp):
        verify(SECRET, headers, body, tolerance=60, now=1_000_100, seen=None)
    # Several signatures (a key rotation): any one that matches will do.
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert verify(SECRET, rotated, body, now=1_000_000, seen=None) == {"id": "j"}
    seen = SeenIds(max_ids=2)
    assert not seen("a", 0) and seen("a", 0)
    assert not seen("b", 0) and not seen("c", 0)
    assert len(seen) == 2 and not seen("a", 0)  # the oldest went first
    with pytest.raises(ConfigurationError):
        secret_key("not base64!")
    assert generate_secret().startswith("whsec_")
    assert secret_key(generate_secret()) != secret_key(generate_secret())
