"""The `underway` command line, run as a real subprocess against a store file and a
live server: following with a progress display, exit codes, Ctrl-C, SIGTERM, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import httpx
import pytest

from tests.support.services import free_port
from tests.support.wait import wait_for
from underway import State, Underway
from underway.cli.server import stop_workers
from underway.stores.sqlite_wake import wake_folder

APP = "underway.demo:uw"
ERROR = 3  # the command could not do its work


def cli_env(**extra: str) -> dict[str, str]:
    ignored = ("UNDERWAY_", "FORCE_COLOR", "TTY_INTERACTIVE")  # they change what rich prints
    env = {k: v for k, v in os.environ.items() if not k.startswith(ignored)}
    # A fixed width keeps rich's rendering predictable; unbuffered so files fill live.
    env.update(COLUMNS="100", PYTHONUNBUFFERED="1", **extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "underway", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


class Running:
    """A long-lived `underway ...` process whose output goes to files we can poll."""

    def __init__(self, args: list[str], *, cwd: Path, name: str, env: dict[str, str] | None = None):
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        self._out: IO[bytes] = self.out_path.open("wb")
        self._err: IO[bytes] = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "underway", *args],
            cwd=cwd,
            env=env or cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()
            self._err.close()


def start_server(
    cwd: Path, store: str, *args: str, name: str = "server", **env: str
) -> tuple[Running, str]:
    port = free_port()
    command = list(args) or ["serve", APP]
    server = Running(
        [*command, "--store", store, "--port", str(port), "--drain", "0"],
        cwd=cwd,
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


def record(store: str, job_id: str) -> Any:
    with Underway(store) as uw:
        return uw.get(job_id)


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with Underway(url) as uw:
        uw.store  # noqa: B018 - create the file, as a running app would have
    return url


@pytest.fixture
def worker(tmp_path: Path, store: str) -> Iterator[Running]:
    proc = Running(["worker", APP, "--store", store, "--workers", "2"], cwd=tmp_path, name="worker")
    yield proc
    assert proc.stop(signal.SIGTERM) == 0, proc.err
    assert "underway worker: stopped" in proc.err


def test_a_stopped_worker_and_server_leave_no_wake_up_socket(tmp_path: Path, store: str) -> None:
    """Other processes on the file would find and try a dead process's socket (and
    remove it), but a clean stop leaves nothing behind."""
    folder = Path(wake_folder(store.removeprefix("sqlite:///")))
    worker = Running(["worker", APP, "--store", store], cwd=tmp_path, name="worker")
    wait_for(lambda: list(folder.glob("*.s")), timeout=30, what="the worker's socket")
    assert worker.stop(signal.SIGTERM) == 0, worker.err
    assert not list(folder.glob("*.s")) if folder.exists() else True
    proc, _ = start_server(tmp_path, store)  # healthy: its store is open
    assert proc.stop(signal.SIGTERM) == 0, proc.err
    assert not folder.exists() or not list(folder.glob("*.s"))


NICE_APP = """
import os

from underway import Underway

uw = Underway()


@uw.task
def niceness() -> int:
    return os.nice(0)


@uw.task(executor="process")
def niceness_in_a_child() -> int:
    return os.nice(0)
"""


@pytest.mark.parametrize(("args", "lower"), [((), 5), (("--nice", "3"), 3), (("--nice", "0"), 0)])
def test_a_worker_runs_its_jobs_at_a_lower_cpu_priority(
    tmp_path: Path, store: str, args: tuple[str, ...], lower: int
) -> None:
    """`underway worker` leaves the CPU to the web processes first: its jobs, in its
    threads and in the processes it starts, run `--nice` steps (5 unless told) below
    the priority it was started at."""
    (tmp_path / "nice_app.py").write_text(NICE_APP)
    base = os.nice(0)
    worker = Running(["worker", "nice_app:uw", "--store", store, *args], cwd=tmp_path, name="w")
    try:
        with Underway(store) as uw:
            for name in ("niceness", "niceness_in_a_child"):  # what the worker runs them as
                uw.task(name=name)(lambda: 0)
            in_thread = uw.submit("niceness").wait(timeout=30)
            in_child = uw.submit("niceness_in_a_child").wait(timeout=30)
        assert (in_thread, in_child) == (base + lower, base + lower), worker.err
        assert (f"nice {base + lower}" in worker.err) == (lower > 0), worker.err
    finally:
        assert worker.stop(signal.SIGTERM) == 0, worker.err


@pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="the kernel groups no sessions here"
)
def test_a_worker_in_a_session_of_its_own_lowers_that_session_s_priority_too(
    tmp_path: Path, store: str
) -> None:
    """Linux weighs a session that a process manager started (an autogroup) as a whole
    against the others: the worker's own niceness would not count against the web's."""
    ours = Path("/proc/self/autogroup").read_text()  # empty where we are in no autogroup
    log = tmp_path / "worker.err"
    with log.open("wb") as err:
        worker = subprocess.Popen(
            [sys.executable, "-m", "underway", "worker", APP, "--store", store],
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(lambda: ", nice 5" in log.read_text(), timeout=30, what="the worker")
        assert Path(f"/proc/{worker.pid}/autogroup").read_text().split()[-1] == "5"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0, log.read_text()
    assert Path("/proc/self/autogroup").read_text() == ours  # ours: untouched


@pytest.fixture
def server(tmp_path: Path, store: str) -> Iterator[str]:
    """`underway demo` on a free port, with its embedded workers."""
    proc, url = start_server(tmp_path, store, "demo")
    assert f"dashboard at {url}/" in proc.err
    yield url
    assert proc.stop(signal.SIGINT) == 0, proc.err
    assert "Traceback" not in proc.err


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["submit", "nope", "--app", APP, "--store", "{store}"],
            "unknown task 'nope' (known tasks: batch_files, chat, count, fail, long_process, "
            "render)",
        ),
        (["submit", "count", "to", "--app", APP, "--store", "{store}"], "bad parameter 'to'"),
        (["submit", "count", "to=x", "--app", APP, "--store", "{store}"], "invalid parameters"),
        (["submit", "count", "--store", "{store}"], "needs --app"),
        (["show", "01NOSUCHJOB", "--store", "{store}"], "no job with id '01NOSUCHJOB'"),
        (["cancel", "01NOSUCHJOB", "--store", "{store}"], "no job with id '01NOSUCHJOB'"),
        (["delete", "01NOSUCHJOB", "--store", "{store}"], "no job with id '01NOSUCHJOB'"),
        (["jobs", "--store", "{tmp}/missing.db"], "no job store at"),
        (["submit", "count", "--app", APP, "--store", "sqlite:///{tmp}/no/dir.db"], "cannot open"),
        (["jobs", "--url", "http://127.0.0.1:{port}"], "cannot reach http://127.0.0.1:"),
        (["jobs", "--state", "lost", "--store", "{store}"], "underway jobs: Invalid value"),
        (["purge", "--older-than", "soon", "--store", "{store}"], "not a duration"),
        (["serve", "nosuchmodule:uw"], "cannot import 'nosuchmodule'"),
        (["serve", "underway.demo:nope"], "has no attribute 'nope'"),
        (["serve", APP, "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, store: str, args: list[str], message: str) -> None:
    values = {"store": store, "tmp": str(tmp_path), "port": str(free_port())}
    result = cli(*(a.format(**values) for a in args), cwd=tmp_path)
    assert result.returncode == ERROR, result
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


# -- a local store, with a dedicated worker process --------------------------------------
def test_local_store_follow_list_show_cancel_purge(
    tmp_path: Path, store: str, worker: Running
) -> None:
    local = ["--app", APP, "--store", store]
    done = cli("submit", "count", "to=3", "pause=0.05", "--follow", *local, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["1", "2", "3"]  # each output item as it came
    assert "100%" in lines[3] and "counted to 3" in lines[3]  # the bar's last state
    assert "succeeded" in lines[-1]

    failed = cli("submit", "fail", "after=1", "pause=0", "-f", *local, cwd=tmp_path)
    assert failed.returncode == 1
    assert "RuntimeError: the demo task failed on purpose after 1 steps" in failed.stdout

    queued = cli("submit", "long_process", "pause=30", *local, cwd=tmp_path)
    job_id = queued.stdout.strip()
    assert queued.returncode == 0 and len(job_id) == 26
    assert cli("cancel", job_id, "--store", store, cwd=tmp_path).returncode == 0
    watched = cli("watch", job_id, "--store", store, cwd=tmp_path)
    assert watched.returncode == 2, watched.stderr
    assert "cancelled" in watched.stdout

    table = cli("jobs", "--store", store, cwd=tmp_path)
    assert table.returncode == 0
    assert job_id in table.stdout and table.stdout.count("succeeded") == 1
    only_failed = cli("jobs", "--state", "failed", "--json", "--store", store, cwd=tmp_path)
    rows = [json.loads(line) for line in only_failed.stdout.splitlines()]
    assert [(r["task"], r["state"]) for r in rows] == [("fail", "failed")]

    shown = cli("show", rows[0]["id"], "--store", store, cwd=tmp_path)
    assert shown.returncode == 0
    assert "failed on purpose" in shown.stdout and "Traceback" in shown.stdout
    as_json = json.loads(cli("show", job_id, "--json", "--store", store, cwd=tmp_path).stdout)
    assert as_json["state"] == "cancelled" and as_json["params"]["pause"] == 30

    purged = cli("purge", "--older-than", "0s", "--store", store, cwd=tmp_path)
    assert purged.stdout.strip() == "purged 3 jobs"
    assert cli("jobs", "--store", store, cwd=tmp_path).stderr.strip() == "no jobs"


# -- a live server --------------------------------------------------------------------------
def test_remote_follow_shows_progress_and_output(tmp_path: Path, server: str) -> None:
    remote = ["--url", server]
    done = cli("submit", "long_process", "steps=4", "pause=0.05", "--follow", *remote, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:4] == ["1", "1 2", "1 2 3", "1 2 3 4"]
    assert "long_process succeeded" in done.stdout and "100%" in done.stdout

    failed = cli("submit", "fail", "after=1", "pause=0", "-f", *remote, cwd=tmp_path)
    assert failed.returncode == 1 and "failed on purpose" in failed.stdout

    listed = cli("jobs", "--task", "fail", *remote, cwd=tmp_path)
    assert "fail" in listed.stdout and "long_process" not in listed.stdout
    job_id = listed.stdout.splitlines()[1].split()[0]
    shown = json.loads(cli("show", job_id, "--json", *remote, cwd=tmp_path).stdout)
    assert shown["error"]["type"] == "RuntimeError"
    deleted = cli("delete", job_id, *remote, cwd=tmp_path)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"job {job_id} deleted"
    gone = cli("show", job_id, *remote, cwd=tmp_path)
    assert gone.returncode == ERROR and "no job with id" in gone.stderr

    refused = cli("purge", *remote, cwd=tmp_path)
    assert refused.returncode == ERROR and refused.stderr.startswith("error: purge works on")


def test_ctrl_c_with_yes_cancels_the_followed_job(tmp_path: Path, server: str) -> None:
    follower = Running(
        ["submit", "long_process", "steps=50", "pause=0.2", "-f", "--yes", "--url", server],
        cwd=tmp_path,
        name="follow",
    )
    wait_for(lambda: "1 2\n" in follower.out, timeout=15, what="the first output items")
    assert follower.stop(signal.SIGINT) == 2, follower.err
    last_line = follower.out.splitlines()[-1]
    assert last_line.endswith("cancelled")
    job_id = re.findall(r"job (\w{26})", last_line)[0]
    shown = json.loads(cli("show", job_id, "--json", "--url", server, cwd=tmp_path).stdout)
    assert shown["state"] == "cancelled" and shown["output_count"] < 50


def test_ctrl_c_without_a_terminal_to_ask_leaves_the_job_running(
    tmp_path: Path, server: str
) -> None:
    follower = Running(
        ["submit", "long_process", "steps=50", "pause=0.2", "-f", "--url", server],
        cwd=tmp_path,
        name="follow",
    )
    wait_for(lambda: "1 2\n" in follower.out, timeout=15, what="the first output items")
    assert follower.stop(signal.SIGINT) == 130
    assert "cancel job" in follower.err  # it asked, got no answer, and did not cancel
    job_id = re.findall(r"underway watch (\w{26})", follower.out)[0]
    shown = json.loads(cli("show", job_id, "--json", "--url", server, cwd=tmp_path).stdout)
    assert shown["state"] == "running" and not shown["cancel_requested"]
    assert cli("cancel", job_id, "--url", server, cwd=tmp_path).returncode == 0
    assert cli("watch", job_id, "--url", server, cwd=tmp_path).returncode == 2


def test_sigterm_on_serve_hands_the_job_back(tmp_path: Path, store: str) -> None:
    first, url = start_server(tmp_path, store, name="first")
    job_id = cli("submit", "long_process", "steps=5", "pause=0.3", "--url", url, cwd=tmp_path)
    job_id_text = job_id.stdout.strip()
    wait_for(
        lambda: record(store, job_id_text).output_count >= 1, timeout=15, what="the job to run"
    )
    assert first.stop(signal.SIGTERM) == 0, first.err
    assert "go back to the queue" in first.err and "Traceback" not in first.err
    handed_back = record(store, job_id_text)
    assert handed_back.state is State.QUEUED
    assert handed_back.error is not None and handed_back.error.type == "Shutdown"

    second, url = start_server(tmp_path, store, name="second")
    try:
        watched = cli("watch", job_id_text, "--url", url, cwd=tmp_path)
        assert watched.returncode == 0, watched.stderr
        assert "1 2 3 4 5" in watched.stdout
    finally:
        assert second.stop(signal.SIGINT) == 0


def test_tokens_allow_a_public_host(tmp_path: Path, store: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret=alice\n")
    proc, url = start_server(
        tmp_path, store, "serve", APP, "--host", "0.0.0.0", "--tokens-file", str(tokens)
    )
    try:
        denied = cli("jobs", "--url", url, cwd=tmp_path)
        assert denied.returncode == ERROR and len(denied.stderr.splitlines()) == 1
        allowed = cli("jobs", "--url", url, cwd=tmp_path, env=cli_env(UNDERWAY_TOKEN="s3cret"))
        assert allowed.returncode == 0 and allowed.stderr.strip() == "no jobs"
    finally:
        assert proc.stop(signal.SIGTERM) == 0


# -- Redis: an enqueue-only server and a dedicated worker process ------------------------
def test_serve_no_workers_on_redis_with_a_dedicated_worker(tmp_path: Path) -> None:
    from tests.support.redis_server import RedisServer
    from tests.support.services import missing

    try:
        redis_server = RedisServer()
    except FileNotFoundError:
        missing("redis-server")
    with redis_server:
        store = redis_server.url
        server, url = start_server(tmp_path, store, "serve", APP, "--no-workers")
        try:
            assert "no workers (enqueue only)" in server.err
            queued = cli("submit", "count", "to=2", "pause=0", "--url", url, cwd=tmp_path)
            job_id = queued.stdout.strip()
            assert queued.returncode == 0 and len(job_id) == 26
            # Nobody runs it: the server only enqueues.
            assert httpx.get(f"{url}/v1/jobs/{job_id}").json()["state"] == "queued"
            worker = Running(
                ["worker", APP, "--store", store, "--workers", "1"], cwd=tmp_path, name="rworker"
            )
            try:
                watched = cli("watch", job_id, "--url", url, cwd=tmp_path)
                assert watched.returncode == 0, watched.stderr
                assert watched.stdout.splitlines()[:2] == ["1", "2"]
            finally:
                assert worker.stop(signal.SIGTERM) == 0, worker.err
        finally:
            server.stop()


# -- the first hour: helpful failures --------------------------------------------------------
def test_an_app_that_raises_at_import_is_shown_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "brokenapp.py").write_text(
        "from underway import Underway\n\nuw = Underway()\nSETTING = {}['missing']\n"
    )
    result = cli("serve", "brokenapp:uw", cwd=tmp_path)
    assert result.returncode == ERROR
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{tmp_path / 'brokenapp.py'}:4: KeyError: 'missing'" in result.stderr


def test_a_busy_port_fails_before_any_job_runs(tmp_path: Path, store: str) -> None:
    queued = cli("submit", "count", "to=1", "pause=0", "--app", APP, "--store", store, cwd=tmp_path)
    job_id = queued.stdout.strip()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = cli("serve", APP, "--store", store, "--port", str(port), cwd=tmp_path)
    assert result.returncode == ERROR, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another server "
        "is running there? choose another with --port)"
    ]
    shown = record(store, job_id)
    assert shown.state is State.QUEUED and shown.attempt == 0


def test_follow_says_when_no_worker_takes_the_job(tmp_path: Path, store: str) -> None:
    follower = Running(
        ["submit", "count", "to=1", "--follow", "--app", APP, "--store", store],
        cwd=tmp_path,
        name="follow",
    )
    started = time.monotonic()
    wait_for(lambda: "no worker is taking jobs" in follower.out, timeout=10, what="the note")
    assert time.monotonic() - started < 6
    assert f"from store {store}" in follower.out and "underway worker" in follower.out
    assert follower.stop(signal.SIGINT) == 130


def test_a_ctrl_c_right_after_the_drain_notice_still_says_what_it_abandons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second Ctrl-C comes at the first moment it can: as soon as the notice that
    # invites it is written. It must be caught where it says what it leaves behind
    # (the subprocess test below hits that moment only now and then).
    uw = Underway(f"sqlite:///{tmp_path / 'jobs.db'}", workers=1)
    release = threading.Event()

    @uw.task
    def hold() -> None:
        release.wait(30)

    said: list[str] = []

    def echo(message: Any = None, **_: Any) -> None:
        said.append(str(message))
        if str(message).startswith("underway: stopping;"):
            raise KeyboardInterrupt  # Ctrl-C again, the moment the notice is out

    try:
        worker = uw.start()
        job_id = uw.submit("hold").id
        wait_for(lambda: worker.running_ids == [job_id], what="the job to run")
        monkeypatch.setattr(click, "echo", echo)
        with pytest.raises(KeyboardInterrupt):
            stop_workers(uw, worker, drain=60)
        assert said[0].startswith("underway: stopping; running jobs (1) get 60s")
        abandoned = (
            f"underway: interrupted again; abandoning 1 running job ({job_id}): they stay "
            "'running' until their lease expires"
        )
        assert any(message.startswith(abandoned) for message in said[1:]), said
    finally:
        release.set()
        uw.close()


def test_a_second_ctrl_c_says_what_it_abandons(tmp_path: Path, store: str) -> None:
    port = free_port()
    server = Running(
        ["serve", APP, "--store", store, "--port", str(port), "--drain", "60"],
        cwd=tmp_path,
        name="server",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert "underway: 6 tasks," in wait_for(lambda: server.err, what="the banner")
        wait_for(lambda: _healthy(url), timeout=15, what="the server's /healthz")
        job = httpx.post(f"{url}/v1/tasks/long_process/jobs", json={"steps": 100, "pause": 0.2})
        job_id = job.json()["id"]
        wait_for(lambda: record(store, job_id).output_count >= 1, timeout=15, what="the job")
        server.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "Ctrl-C again" in server.err, timeout=15, what="the drain notice")
        assert "running jobs (1) get 60s to finish" in server.err
    finally:
        code = server.stop(signal.SIGINT)
    assert code == 130, server.err
    assert (
        f"interrupted again; abandoning 1 running job ({job_id}): they stay 'running' until "
        "their lease expires (30s)"
    ) in server.err
    assert "Traceback" not in server.err
    assert record(store, job_id).state is State.RUNNING


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_jobs_table_keeps_age_on_the_line_with_a_long_task_name() -> None:
    from underway.cli.display import shorten_middle

    name = "flask-view:examples.flask_slow_view.app.create_app.<locals>.render"
    short = shorten_middle(name, 28)
    assert len(short) == 28 and short.startswith("flask-view:") and short.endswith(".render")
    assert shorten_middle("add", 28) == "add"
