"""`underway.client.Client` against a live server: the engine's handle API and errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.http_server import Gates, api_server, register_test_tasks, until
from underway import (
    IdempotencyConflict,
    JobActive,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobNotFound,
    State,
    TaskNotFound,
    Underway,
    ValidationError,
)
from underway.client import Client, Unauthorized


@pytest.fixture
def gates(uw: Underway) -> Gates:
    return register_test_tasks(uw)


@pytest.fixture
def client(uw: Underway, gates: Gates) -> Iterator[Client]:
    with api_server(uw, tokens={"tok": "alice"}) as url, Client(url, token="tok") as c:
        yield c


def test_submit_wait_and_read(client: Client) -> None:
    job = client.submit("add", x=2, y=5)
    assert job.wait(timeout=10) == 7
    assert job.state is State.SUCCEEDED
    assert job.result == 7
    assert job.done
    assert job.record.owner == "alice"
    assert client.get(job.id).result == 7
    assert client.job(job.id).record.task == "add"
    assert [t["name"] for t in client.tasks()] == ["add", "noop", "boom", "stepper", "hold"]


def test_enqueue_with_server_side_wait(client: Client) -> None:
    record = client.enqueue("add", {"x": 1}, wait=10)
    assert record.state is State.SUCCEEDED and record.result == 2


def test_events_output_and_progress(client: Client, gates: Gates) -> None:
    for i in range(3):
        gates.open(f"cl:{i}")
    job = client.submit("stepper", steps=3, gate="cl")
    kinds = [e.kind.value for e in job.events(timeout=30)]
    assert kinds[0] == "state" and kinds[-1] == "done"
    assert job.output() == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert job.output(after=2) == [{"i": 2}]
    assert job.progress.percent == 100.0
    later = list(client.events(job.id, after=3))
    assert later[0].seq == 4


def test_failures_raise_the_engine_exceptions(client: Client, gates: Gates) -> None:
    failing = client.submit("boom", message="bad luck")
    with pytest.raises(JobFailed) as failed:
        failing.wait(timeout=10)
    assert failed.value.record.error is not None
    assert failed.value.record.error.message == "bad luck"
    with pytest.raises(JobFinished):
        failing.cancel()

    held = client.submit("hold", gate="cc")
    with pytest.raises(JobActive):
        held.delete()
    held.cancel()
    with pytest.raises(JobCancelled):
        held.wait(timeout=10)
    held.delete()
    with pytest.raises(JobNotFound) as missing:
        client.get(held.id)
    assert missing.value.job_id == held.id

    with pytest.raises(TaskNotFound) as unknown:
        client.submit("nope")
    assert unknown.value.name == "nope" and "add" in unknown.value.known
    with pytest.raises(ValidationError) as invalid:
        client.submit("add", x="one", z=1)
    assert sorted(e["field"] for e in invalid.value.errors) == ["x", "z"]
    client.submit("add", idempotency_key="k", x=1)
    with pytest.raises(IdempotencyConflict):
        client.submit("add", idempotency_key="k", x=2)


def test_wait_timeout(client: Client) -> None:
    job = client.submit("hold", gate="slow")
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.3)
    job.cancel()


def test_list_jobs_pages(client: Client) -> None:
    ids = [client.enqueue("add", {"x": i}, wait=10).id for i in range(3)]
    page = client.list_jobs(task="add", limit=2)
    assert [r.id for r in page.jobs] == ids[::-1][:2]
    rest = client.list_jobs(task="add", limit=2, cursor=page.next_cursor)
    assert [r.id for r in rest.jobs] == ids[:1] and rest.next_cursor is None
    assert len(client.list_jobs(state="succeeded").jobs) == 3


def test_bad_token(uw: Underway, gates: Gates) -> None:
    with (
        api_server(uw, tokens={"tok": "alice"}) as url,
        Client(url, token="wrong") as c,
        pytest.raises(Unauthorized),
    ):
        c.tasks()


def test_cancel_running_job_then_state(client: Client) -> None:
    job = client.submit("hold", gate="run")
    until(lambda: job.state is State.RUNNING)
    assert job.cancel().cancel_requested
    until(lambda: job.state is State.CANCELLED)
