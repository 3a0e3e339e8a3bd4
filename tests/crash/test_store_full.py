"""Promises under a full store (SQLite on a small tmpfs filled to the brim; Redis out
of memory, or unable to save its snapshot on such a disk; PostgreSQL read-only):

- a job that finishes while the store cannot be written ends truthfully once space
  is back (succeeded, with its result and all its output), never `failed` with
  `WorkerLost` while its worker is alive, and it ran once;
- a submit while the store is full raises `StoreUnavailable`, and over HTTP answers
  503 `application/problem+json`, code `store-unavailable`, with `Retry-After`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import redis

from tests.crash.small_disk import fill, free, small_disk
from tests.support.http_server import serve_asgi
from tests.support.postgres_server import PostgresServer
from tests.support.redis_server import RedisServer
from tests.support.services import missing
from tests.support.wait import wait_for
from underway import Job, State, StoreUnavailable, Underway
from underway.http import asgi

pytestmark = [pytest.mark.slow]

LEASE = 1.0
FULL_FOR = 3 * LEASE  # the disk stays full well past the job's lease


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "disk") as folder:
        yield folder


def ends_truthfully(
    uw: Underway, make_full: Callable[[], object], give_room: Callable[[], object]
) -> list[str]:
    """A job that emits, ends while the store refuses writes for longer than its lease,
    and whose store takes writes again: what is wrong with its end (it must be
    succeeded, with its result and all its output, never lost while its worker lives,
    and run once), and with its worker after (it must go on working)."""
    started, go, returning = threading.Event(), threading.Event(), threading.Event()
    runs: list[int] = []

    @uw.task(retries=2)
    def finish_while_full(job: Job) -> dict[str, int]:
        runs.append(job.attempt)
        job.emit("before")
        started.set()
        if not go.wait(30):
            raise RuntimeError("the test never let the job go on")
        job.emit("after")
        returning.set()
        return {"answer": 42}

    @uw.task
    def noop() -> None:
        return None

    problems = []
    try:
        uw.start(1, janitor_interval=0.2)
        job = uw.submit("finish_while_full")
        assert started.wait(10), "the job did not start"
        wait_for(lambda: uw.output(job.id) == ["before"], what="the first item stored")
        make_full()
        # The store really is unwritable now.
        problems += _unavailable_to_submit(uw)
        go.set()
        assert returning.wait(10), "the job did not go on"
        full_until = time.monotonic() + FULL_FOR
        while time.monotonic() < full_until:  # a timed outage: pacing reads, no syncing
            seen = uw.get(job.id)
            if seen.state is not State.RUNNING:
                problems.append(f"while the store was full the job became {seen.state.value}")
                break
            time.sleep(0.2)
        give_room()

        final = uw.wait(job.id, timeout=20)
        if final.state is not State.SUCCEEDED:
            problems.append(
                f"the job ended {final.state.value} "
                f"({final.error.type if final.error else 'no error'}: "
                f"{final.error.message if final.error else ''}) while its worker was alive"
            )
        if final.result != {"answer": 42}:
            problems.append(f"the job's result is {final.result!r}")
        output = uw.output(job.id)
        if output != ["before", "after"]:
            problems.append(f"the job's output is {output!r}, not ['before', 'after']")
        if runs != [1]:
            problems.append(f"the job ran {len(runs)} times (attempts {runs})")
        # The worker lived on, and works after the outage.
        assert uw.submit("noop").wait(10) is None
    finally:
        go.set()
        uw.close()
    return problems


def test_a_job_that_ends_while_the_disk_is_full_ends_truthfully(disk: Path) -> None:
    uw = Underway(f"sqlite:///{disk / 'jobs.db'}", lease=LEASE)
    problems = ends_truthfully(uw, partial(fill, disk), partial(free, disk))
    assert not problems, "\n".join(problems)


def _unavailable_to_submit(uw: Underway, saying: str = "") -> list[str]:
    """What is wrong with a submission to a full store (it must be StoreUnavailable)."""
    try:
        uw.submit("noop")
    except StoreUnavailable as exc:
        return [] if saying in str(exc) else [f"StoreUnavailable says {exc}"]
    except Exception as exc:
        return [f"submit raised {type(exc).__module__}.{type(exc).__name__}: {exc}, "
                "not StoreUnavailable"]  # fmt: skip
    return ["submit succeeded on a full store: the setup is broken"]


def _unavailable_over_http(http: httpx.Client) -> list[str]:
    """What is wrong with the answer to a submission over HTTP to a full store (it must
    be 503 problem+json, code store-unavailable, with Retry-After)."""
    answer = http.post("/v1/tasks/noop/jobs", json={})
    body = answer.json() if answer.content else {}
    kind, after = answer.headers.get("content-type"), answer.headers.get("retry-after")
    if (
        answer.status_code == 503
        and kind == "application/problem+json"
        and body.get("code") == "store-unavailable"
        and after is not None
    ):
        return []
    return [f"POST answered {answer.status_code} {kind} code={body.get('code')!r} "
            f"retry-after={after!r}"]  # fmt: skip


def refuses_submissions(
    uw: Underway, make_full: Callable[[], object], give_room: Callable[[], object], saying: str = ""
) -> list[str]:
    """A store made full with a job queued in it: what is wrong with a submission then
    (it must be StoreUnavailable, and 503 problem+json over HTTP with Retry-After), with
    reading the queued job (it must answer), and with submitting once there is room
    again (it must work). `make_full` returns once the store refuses writes."""

    @uw.task
    def noop() -> None:
        return None

    problems: list[str] = []
    try:
        first = uw.submit("noop")  # the store exists and works
        with serve_asgi(asgi(uw)) as api, httpx.Client(base_url=api, timeout=10) as http:
            make_full()
            problems += _unavailable_to_submit(uw, saying)
            problems += _unavailable_over_http(http)
            seen = http.get(f"/v1/jobs/{first.id}")
            if seen.status_code != 200 or seen.json().get("state") != "queued":
                problems.append(f"GET of a queued job answered {seen.status_code}")
            give_room()
            # Room is back: submitting works again, in-process and over HTTP.
            wait_for(lambda: http.post("/v1/tasks/noop/jobs", json={}).status_code == 202,
                     what="submissions taken again")  # fmt: skip
            uw.submit("noop")
    finally:
        uw.close()
    return problems


def test_submitting_to_a_full_store_says_store_unavailable(disk: Path) -> None:
    uw = Underway(f"sqlite:///{disk / 'jobs.db'}")
    problems = refuses_submissions(uw, partial(fill, disk), partial(free, disk))
    assert not problems, "\n".join(problems)


# -- Redis: out of memory (`maxmemory`), or unable to save its snapshot (a full disk) --
class FullRedis:
    """A private redis-server whose data folder is a small tmpfs, made to refuse writes
    and to take them again. `memory` sets `maxmemory` below what it holds (with the
    `noeviction` policy, as a store of jobs needs: evicting would lose them); `disk`
    fills the tmpfs and has a snapshot fail there, after which Redis refuses writes
    until a snapshot succeeds (MISCONF)."""

    def __init__(self, how: str, folder: Path) -> None:
        self.how, self.folder = how, folder
        try:
            self.server = RedisServer(folder=folder)
        except FileNotFoundError:
            missing("redis-server")
        self.full = False

    def __enter__(self) -> FullRedis:
        self.server.start()
        self.admin = redis.Redis(port=self.server.port, decode_responses=True)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.full:
                self.give_room()
            self.admin.close()
        finally:
            self.server.close()

    def _snapshot(self, status: str) -> None:
        self.admin.bgsave()
        wait_for(
            lambda: self.admin.info("persistence")["rdb_last_bgsave_status"] == status,
            what=f"a snapshot's end ({status})",
        )

    def make_full(self) -> None:
        if self.how == "memory":
            self.admin.config_set("maxmemory-policy", "noeviction")
            self.admin.config_set("maxmemory", "1")
        else:
            self.admin.config_set("save", "3600 1")  # refusing writes needs a save point
            fill(self.folder)
            self._snapshot("err")
        self.full = True

    def give_room(self) -> None:
        if self.how == "memory":
            self.admin.config_set("maxmemory", "0")
        else:
            free(self.folder)
            self._snapshot("ok")
        self.full = False


# Redis refuses a function over `maxmemory` before it runs; a script (EVAL) it lets
# write past `maxmemory`, so only a full disk makes it refuse one.
FULL_REDIS = [("memory", "1"), ("disk", "1"), ("disk", "0")]
FULL_REDIS_IDS = ["memory-functions", "disk-functions", "disk-scripts"]


@pytest.mark.parametrize(("how", "functions"), FULL_REDIS, ids=FULL_REDIS_IDS)
def test_submitting_to_a_full_redis_says_store_unavailable(
    disk: Path, how: str, functions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that refuses writes is unavailable for them (503 over HTTP, with
    Retry-After), never a 500 or a redis-py error; reads still answer."""
    monkeypatch.setenv("UNDERWAY_REDIS_FUNCTIONS", functions)
    with FullRedis(how, disk) as full:
        problems = refuses_submissions(
            Underway(full.server.url), full.make_full, full.give_room, saying="refuses writes"
        )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("how", "functions"), FULL_REDIS, ids=FULL_REDIS_IDS)
def test_a_job_that_ends_while_redis_is_full_ends_truthfully(
    disk: Path, how: str, functions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNDERWAY_REDIS_FUNCTIONS", functions)
    with FullRedis(how, disk) as full:
        problems = ends_truthfully(
            Underway(full.server.url, lease=LEASE), full.make_full, full.give_room
        )
    assert not problems, "\n".join(problems)


# -- PostgreSQL refusing writes: read-only, as a primary demoted after a failover is --
class ReadOnlyPostgres:
    """A private PostgreSQL server made to refuse writes (`default_transaction_read_only`
    for the whole cluster, which its sessions take at their next transaction) and to
    take them again."""

    def __init__(self) -> None:
        try:
            self.server = PostgresServer()
        except FileNotFoundError as exc:
            missing(f"PostgreSQL ({exc})")
        self.full = False

    def __enter__(self) -> ReadOnlyPostgres:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def _read_only(self, on: bool) -> None:
        import psycopg

        value = "on" if on else "off"
        with psycopg.connect(self.server.url, autocommit=True) as admin:
            admin.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
            admin.execute("SELECT pg_reload_conf()")

        # pg_reload_conf() only signals the postmaster, which rereads the file and signals
        # every session afterwards. A session started once it has done so shows the new
        # value, and by then every older session has its signal, which it takes before
        # its next command: the store's pooled connections included.
        def in_force() -> bool:
            with psycopg.connect(self.server.url, autocommit=True) as probe:
                row = probe.execute("SHOW default_transaction_read_only").fetchone()
            return row is not None and row[0] == value

        wait_for(in_force, what=f"default_transaction_read_only = {value} in force")
        self.full = on

    def make_full(self) -> None:
        self._read_only(True)

    def give_room(self) -> None:
        self._read_only(False)


def test_submitting_to_a_read_only_postgres_says_store_unavailable() -> None:
    with ReadOnlyPostgres() as pg:
        problems = refuses_submissions(
            Underway(pg.server.url), pg.make_full, pg.give_room, saying="refuses writes"
        )
    assert not problems, "\n".join(problems)


def test_a_job_that_ends_while_postgres_is_read_only_ends_truthfully() -> None:
    with ReadOnlyPostgres() as pg:
        problems = ends_truthfully(Underway(pg.server.url, lease=LEASE), pg.make_full, pg.give_room)
    assert not problems, "\n".join(problems)
