"""Configuration from the environment, on every entry point: `Underway()`, `serve`,
`worker` and the job commands. An argument or option wins over the environment,
which wins over the default."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.integration.test_cli import APP, Running, cli, cli_env
from tests.support.services import free_port
from tests.support.wait import wait_for
from underway import State, Underway


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def jobs_in(url: str) -> list[str]:
    with Underway(url) as uw:
        return [r.id for r in uw.list_jobs().jobs]


# -- Underway() --------------------------------------------------------------------------
def test_underway_reads_the_store_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    from_env = sqlite_url(tmp_path / "env.db")
    monkeypatch.setenv("UNDERWAY_STORE", from_env)
    with Underway() as uw:
        assert uw.where == from_env
        uw.store  # noqa: B018
    assert (tmp_path / "env.db").is_file()
    with Underway("memory://") as uw:  # the argument wins
        assert uw.where == "memory://"
    monkeypatch.delenv("UNDERWAY_STORE")
    with Underway() as uw:  # the default
        assert uw.where == "sqlite:///underway.db"


# -- serve -------------------------------------------------------------------------------
def serve(tmp_path: Path, *args: str, name: str, **env: str) -> tuple[Running, str]:
    port = free_port()
    server = Running(
        ["serve", *args, "--port", str(port), "--drain", "0"],
        cwd=tmp_path,
        name=name,
        env=cli_env(**env),
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.proc.poll() is None, f"the server exited: {server.err}"
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=15, what="the server's /healthz")
    return server, url


def run_one_job(url: str) -> str:
    r = httpx.post(f"{url}/v1/tasks/count/jobs", json={"to": 1, "pause": 0})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    wait_for(
        lambda: httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "succeeded",
        what="the job to succeed",
    )
    return job_id


def test_serve_takes_app_and_store_from_the_environment(tmp_path: Path) -> None:
    env_store = sqlite_url(tmp_path / "env.db")
    server, url = serve(tmp_path, name="env", UNDERWAY_APP=APP, UNDERWAY_STORE=env_store)
    try:
        assert f"store {env_store}" in server.err
        job_id = run_one_job(url)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.err
    assert jobs_in(env_store) == [job_id]

    option_store = sqlite_url(tmp_path / "option.db")
    server, url = serve(
        tmp_path, APP, "--store", option_store, name="option", UNDERWAY_STORE=env_store
    )
    try:
        job_id = run_one_job(url)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.err
    assert jobs_in(option_store) == [job_id]
    assert job_id not in jobs_in(env_store)


# -- worker and the job commands ---------------------------------------------------------
def test_worker_and_job_commands_take_app_and_store_from_the_environment(
    tmp_path: Path,
) -> None:
    env_store = sqlite_url(tmp_path / "env.db")
    env = cli_env(UNDERWAY_APP=APP, UNDERWAY_STORE=env_store)
    worker = Running(["worker", "--workers", "1"], cwd=tmp_path, name="worker", env=env)
    try:
        # The README's line, as written, once UNDERWAY_APP names the app.
        done = cli("submit", "count", "to=2", "pause=0", "--follow", cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[:2] == ["1", "2"]
        listed = cli("jobs", "--json", cwd=tmp_path, env=env)
        assert listed.returncode == 0 and '"state": "succeeded"' in listed.stdout
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.err
    assert f"on {env_store}" in worker.err
    [job_id] = jobs_in(env_store)
    assert done.stdout.count(job_id) == 1

    # --store beats UNDERWAY_STORE on a job command, and on the worker.
    other = sqlite_url(tmp_path / "other.db")
    queued = cli("submit", "count", "to=1", "pause=0", "--store", other, cwd=tmp_path, env=env)
    assert queued.returncode == 0, queued.stderr
    assert jobs_in(other) == [queued.stdout.strip()]
    assert jobs_in(env_store) == [job_id]
    worker = Running(
        ["worker", "--store", other, "--workers", "1"], cwd=tmp_path, name="other", env=env
    )
    try:
        watched = cli("watch", queued.stdout.strip(), "--store", other, cwd=tmp_path, env=env)
        assert watched.returncode == 0, watched.stderr
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.err
    with Underway(other) as uw:
        assert uw.get(queued.stdout.strip()).state is State.SUCCEEDED
