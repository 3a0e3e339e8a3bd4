"""The OpenAPI document, and schemathesis against it: no 5xx, every answer as documented."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.http_server import api_server
from underway import Job, Underway

TOKEN = {"Authorization": "Bearer tok"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def url(uw: Underway) -> Iterator[str]:
    # Quick tasks only: generated parameters must not leave jobs running for ever.
    @uw.task
    def add(x: int, y: int = 1) -> int:
        return x + y

    @uw.task
    def echo(job: Job, text: str, times: int = 1, tags: list[str] | None = None) -> list[str]:
        for _ in range(min(times, 5)):
            job.emit(text)
        return [text] * min(times, 5)

    @uw.task
    def boom(message: str = "boom") -> None:
        raise ValueError(message)

    with api_server(uw, tokens={"tok": "alice"}, max_wait=1.0) as base:
        yield base


def test_document_carries_every_task_schema(url: str) -> None:
    doc: dict[str, Any] = httpx.get(f"{url}/v1/openapi.json", headers=TOKEN).json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    add = doc["paths"]["/v1/tasks/add/jobs"]["post"]
    ref = add["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[ref.rsplit("/", 1)[1]]["required"] == ["x"]
    for name in ("Job", "Problem", "JobPage", "Progress"):
        assert name in schemas
    assert {"/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/jobs/{id}/cancel"} <= set(doc["paths"])
    assert doc["security"] == [{"bearer": []}]


def test_schemathesis_finds_no_server_errors_and_no_drift(url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{url}/v1/openapi.json", headers=TOKEN)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # eight fixed operations and one per task
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            # No replay or shrinking: schemathesis's generation adapts to earlier
            # answers, which hypothesis would take for a flaky strategy.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=url, headers=TOKEN, checks=CHECKS, timeout=10)

        check()
