"""`flask run` with embedded workers (`start_workers=True`), as a real process: Ctrl-C
and SIGTERM drain running jobs and hand the rest back; the dashboard is served."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port
from tests.support.wait import wait_for
from underway import State, Underway

ROOT = Path(__file__).resolve().parents[2]


class FlaskRun:
    def __init__(self, tmp_path: Path) -> None:
        self.store = f"sqlite:///{tmp_path / 'jobs.db'}"
        self.log = tmp_path / "flask.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERWAY_", "FLASK_"))}
        env.update(UNDERWAY_STORE=self.store, PYTHONUNBUFFERED="1")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "tests.integration.flask_run_app",
                 "run", "--port", str(port), "--no-reload"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self.healthy, timeout=20, what="flask run to answer")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/jobs/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def submit(self, count: int, pause: float) -> str:
        r = httpx.post(
            f"{self.url}/jobs/v1/tasks/steps/jobs", json={"count": count, "pause": pause}
        )
        assert r.status_code == 202, r.text
        job_id: str = r.json()["id"]
        return job_id

    def output_count(self, job_id: str) -> int:
        count: int = httpx.get(f"{self.url}/jobs/v1/jobs/{job_id}").json()["output_count"]
        return count

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flask_run(tmp_path: Path) -> Iterator[FlaskRun]:
    server = FlaskRun(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_flask_run_drains_and_hands_back(flask_run: FlaskRun, sig: int) -> None:
    short = flask_run.submit(count=6, pause=0.25)  # ends within the 3 s drain
    long = flask_run.submit(count=200, pause=0.1)  # does not: handed back
    waiting = flask_run.submit(count=1, pause=0)  # never started: both slots are busy
    wait_for(
        lambda: flask_run.output_count(short) >= 1 and flask_run.output_count(long) >= 1,
        timeout=15,
        what="both jobs to run",
    )
    flask_run.proc.send_signal(sig)
    assert flask_run.proc.wait(timeout=30) == 0, flask_run.log.read_text()
    log = flask_run.log.read_text()
    assert "running jobs (2) get 3s to finish" in log and "Traceback" not in log
    with Underway(flask_run.store) as uw:
        assert uw.get(short).state is State.SUCCEEDED
        handed_back = uw.get(long)
        assert handed_back.state is State.QUEUED, handed_back
        assert handed_back.error is not None and handed_back.error.type == "Shutdown"
        queued = uw.get(waiting)
        assert queued.state is State.QUEUED and queued.attempt == 0


def test_flask_serves_the_dashboard(flask_run: FlaskRun) -> None:
    page = httpx.get(f"{flask_run.url}/jobs/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta name="underway-api" content="/jobs">' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    script = httpx.get(f"{flask_run.url}/jobs/static/underway/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )
    assert httpx.get(f"{flask_run.url}/jobs").status_code == 308  # to /jobs/
