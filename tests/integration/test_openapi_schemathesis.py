"""The OpenAPI document, and schemathesis against it: no 5xx, every answer as documented.

Schemathesis's own runner (its command line) drives every documented route of both
adapters, with tokens and without: every check (`--checks all`: server errors, status
codes, content types, headers, schemas, negative data rejected, positive data
accepted, unsupported methods with `Allow`, ignored auth), positive and negative
data, the coverage phase's boundary values and the fuzzing phase. Bounded to keep
the four runs around a minute on two cores.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask

from tests.support.http_server import api_server, serve_wsgi
from underway import Job, Underway
from underway.http.flask import UnderwayFlask

TOKEN = {"Authorization": "Bearer tok"}
MAX_EXAMPLES = 40  # per operation and phase
FIXED_OPERATIONS = 11  # the routes, /healthz, /metrics and the document itself
ROOT = Path(__file__).resolve().parents[2]
SEED = 20260601  # reproducible; a failure prints the case to replay


def register(uw: Underway) -> None:
    # Quick tasks only: generated parameters must not leave jobs running for ever.
    @uw.task
    def add(x: int, y: float = 1.0) -> float:
        return x + y

    @uw.task
    def echo(
        job: Job, text: str, times: int = 1, tags: list[str] | None = None, extra: Any = None
    ) -> list[str]:
        for _ in range(min(times, 5)):
            job.emit(text)
        return [text] * min(times, 5)

    @uw.task
    def boom(message: str = "boom") -> None:
        raise ValueError(message)


@contextmanager
def server(kind: str, uw: Underway, tokens: dict[str, str] | None) -> Iterator[str]:
    register(uw)
    options: dict[str, Any] = {
        "tokens": tokens or {},
        "max_wait": 1.0,
        "callback_hosts": ["127.0.0.1:9", "*.hooks.example"],  # nothing listens
        "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "webhook_options": {"max_attempts": 1, "timeout": 1.0},
    }
    if kind == "starlette":
        with api_server(uw, **options) as url:
            yield url
        return
    app = Flask(__name__)
    UnderwayFlask(uw, app, start_workers=True, **options)
    with serve_wsgi(app) as url:
        yield url
    uw.stop(drain=1)


@pytest.fixture
def url(uw: Underway) -> Iterator[str]:
    with server("starlette", uw, {"tok": "alice"}) as base:
        yield base


def test_document_carries_every_task_schema(url: str) -> None:
    doc: dict[str, Any] = httpx.get(f"{url}/v1/openapi.json", headers=TOKEN).json()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    add = doc["paths"]["/v1/tasks/add/jobs"]["post"]
    ref = add["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[ref.rsplit("/", 1)[1]]["required"] == ["x"]
    for name in ("Job", "Problem", "JobPage", "Progress", "ServerSentEvent"):
        assert name in schemas
    assert {"/v1/jobs/{id}", "/v1/jobs/{id}/events", "/v1/jobs/{id}/cancel"} <= set(doc["paths"])
    assert {"/healthz", "/metrics", "/v1/openapi.json"} <= set(doc["paths"])
    assert doc["security"] == [{"bearer": []}]
    events = doc["paths"]["/v1/jobs/{id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    last_event_id = next(p for p in events["parameters"] if p["name"] == "Last-Event-ID")
    assert last_event_id["schema"]["type"] == "integer"
    params = {p["name"]: p for p in add["parameters"]}
    assert re.fullmatch(params["callback_url"]["schema"]["pattern"], "")
    assert re.fullmatch(params["callback_url"]["schema"]["pattern"], "http://a.hooks.example/x")


def schemathesis_command() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("the schemathesis command is not installed")
    return found


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["starlette", "flask"])
@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "open"])
def test_schemathesis_finds_no_server_errors_and_no_drift(
    kind: str, tokens: bool, uw: Underway, tmp_path: Path
) -> None:
    command = schemathesis_command()
    headers = TOKEN if tokens else {}
    with server(kind, uw, {"tok": "alice"} if tokens else None) as base:
        doc = httpx.get(f"{base}/v1/openapi.json", headers=headers).json()
        assert len(doc["paths"]) + 0 >= FIXED_OPERATIONS - 2
        (tmp_path / "openapi.json").write_text(httpx.get(f"{base}/v1/openapi.json",
                                                         headers=headers).text)  # fmt: skip
        argv = [
            command, "run", str(tmp_path / "openapi.json"), "--url", base,
            "--checks", "all", "--mode", "all",
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
            "--workers", "1", "--request-timeout", "10",
            "--generation-database", "none", "--no-color",
            "--suppress-health-check", "all", "--warnings", "off",
        ]  # fmt: skip
        if tokens:
            # As the scheme's credentials, not a fixed header: the runner leaves them out
            # where it checks that auth is not ignored.
            (tmp_path / "schemathesis.toml").write_text('[auth.openapi.bearer]\nbearer = "tok"\n')
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
        }
        run = subprocess.run(
            argv, capture_output=True, text=True, timeout=200, cwd=tmp_path, env=env
        )
    summary = run.stdout[run.stdout.rfind("SUMMARY") :]
    print(summary)  # the counts, for the record (pytest -s)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", summary)
    assert tested is not None and int(tested.group(1)) == FIXED_OPERATIONS + 3
    generated = re.search(r"(\d+) generated", summary)
    assert generated is not None and int(generated.group(1)) > 300
