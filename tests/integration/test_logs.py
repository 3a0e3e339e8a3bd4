"""Operators' logs: every job transition is one line on the `underway` logger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.wait import wait_for
from underway import State

APP = """
from underway import Job, Underway

uw = Underway()


@uw.task(retries=2, retry_backoff=0.01)
def flaky(job: Job) -> str:
    if job.attempt < 3:
        raise RuntimeError(f"attempt {job.attempt} broke")
    return "ok"
"""


def test_worker_logs_each_transition_as_json(tmp_path: Path) -> None:
    (tmp_path / "logapp.py").write_text(APP)
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "UNDERWAY_STORE": store}
    proc = subprocess.Popen(
        [sys.executable, "-m", "underway", "worker", "logapp:uw", "--store", store,
         "--log-format", "json", "--log-level", "info"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        sys.path.insert(0, str(tmp_path))
        try:
            from logapp import uw as app  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(tmp_path))
        app.configure(store=store)
        handle = app.submit("flaky")
        wait_for(lambda: app.get(handle.id).state is State.SUCCEEDED, timeout=20, what="the job")
        app.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("job_id") == handle.id]
    messages = [line["message"] for line in mine]
    assert any("queued -> running" in m for m in messages)
    failures = [line for line in mine if "-> queued" in line["message"]]
    assert [f["attempt"] for f in failures] == [1, 2]
    assert all(f["level"] == "warning" and "RuntimeError" in f["message"] for f in failures)
    assert "attempt 2 broke" in failures[1]["message"]
    done = [line for line in mine if "-> succeeded" in line["message"]]
    assert len(done) == 1 and done[0]["attempt"] == 3 and done[0]["task"] == "flaky"
    assert " in " in done[0]["message"]  # the attempt's duration
