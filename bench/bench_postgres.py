"""underway against procrastinate and pgqueuer on one private PostgreSQL server.

    pip install -e '.[postgres,bench-postgres]'
    python bench/bench_postgres.py [--jobs 2000] [--trips 200] [--procs 1,2] [--bulk 5000]
        [--rounds 1] [--no-idle-for SECONDS] [--nice N] [--server-time] [--phases]

Starts its own PostgreSQL server (tests/support/postgres_server.py) with
pg_stat_statements loaded, counting only while the bulk path's statements are
counted (it costs each statement some time); each queue gets a database of its own
on it. Measures, in one run, for each queue (a peer that is not installed is left
out):

- end to end: `--jobs` no-op jobs submitted one by one (one call each, from one
  client) to idle worker processes; jobs/s from the first submission to
  the last job recorded as done, and the CPU time all of it took per job, in all
  and by part: the client (this process), the worker processes and the PostgreSQL
  server's processes (read from /proc; a steadier figure than jobs/s on a shared
  machine; on 2 cores, a sum near 2 s per second of the run means the rate is bound
  by CPU, not by waiting); each timing starts on a quiet server (`quiesce`: a
  CHECKPOINT, and no autovacuum at work), so that no queue is timed beside the
  previous one's aftermath;
- round trip: one job at a time submitted to idle workers and waited for; p50/p90.
  underway waits with `handle.wait()`; the peers have no such call, so a trigger of
  the benchmark's own turns their "done" row into a NOTIFY that the client LISTENs
  for (one trigger and one notification per job: a little extra work for them);

and, to read the ratios against, the floors of the same run: a bare `SELECT 1`, a
one-row INSERT in autocommit into a logged table with a primary key (the least a
submission stored by the time it returns costs), a
NOTIFY answered by NOTIFY from a process that LISTENs (two wake-ups through the
server), a thread hand-off, and each queue's submissions with no worker running
(`--jobs` of them, into a database of their own): the end-to-end rate can be no
more than that, since jobs are submitted one by one from one client;

and `job.progress()`'s cost inside a running job on this store, beside the same
call on SQLite and a bare method call (the best of 3 interleaved runs each);

and for underway alone, statements per job on the bulk claim-and-finish path:
`--bulk` jobs queued with `submit_many` (500 at a time) for workers that wait idle,
and the rate at which they are done, from the first insert to the last end, with the
statements the server ran meanwhile counted by pg_stat_statements (the inserts, BEGIN
and COMMIT included; the bench's own polls left out); and the floor, a bare one-row
INSERT + DELETE round trip through psycopg.

Each queue runs in its best configuration for no-op work on this machine: each is
measured with every worker-process count of `--procs` (1 and 2: one per core, as
their documentation advises for CPU-bound work, or one for all, which serves
CPU-light work best here, for the peers too), and the table shows each queue's best
rate and best round trip, with the count that gave it. underway: `--slots` (8) slots
in all, shared among its processes, its defaults otherwise. procrastinate: an
`async def` task, `concurrency=8` per process, LISTEN/NOTIFY on (its default), jobs
kept (its default, as underway does).
pgqueuer: its asyncpg driver, an `async def` entrypoint, `batch_size=10` for the
end-to-end run; for the round trip `batch_size=1`, since with a larger batch its
completion log buffer holds a lone job's end for up to ~0.1 s (its flush timeout).
Ratios are underway / peer: above 1 for jobs/s and below 1 for latency mean underway
is faster.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from tests.crash.crash_app import build_app  # noqa: E402
from tests.support.postgres_server import PostgresServer, with_schema  # noqa: E402
from underway import Job, State, Underway  # noqa: E402
from underway.cli.common import NICE  # noqa: E402
from underway.stores.postgres import PostgresStore  # noqa: E402

PEERS = ("procrastinate", "pgqueuer")
PROCRASTINATE_CONCURRENCY = 8
PGQUEUER_BATCH = 10
DONE_CHANNEL = "bench_done"


# -- the server -----------------------------------------------------------------------
def statements(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%bench poll%'"
        ).fetchone()
    return int(row[0]) if row else 0


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def track(url: str, on: bool, *, planning: bool = False) -> None:
    """Have pg_stat_statements count statements (every session, at its next one), or
    not: it is on only while `bulk_statements` counts, since it costs every statement
    some time, and so a queue that sends more statements per job more. `planning`:
    count the time spent planning them too (`server_time`)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET pg_stat_statements.track = {'top' if on else 'none'}")
        conn.execute(
            f"ALTER SYSTEM SET pg_stat_statements.track_planning = {'on' if planning else 'off'}"
        )
        conn.execute("SELECT pg_reload_conf()")


def server_time(server: PostgresServer, args: argparse.Namespace) -> list[tuple[float, str]]:
    """One more end-to-end run of underway (one worker process of `--slots` slots, a
    fresh database) with pg_stat_statements counting: the server's time per job (its
    planning and execution) of each statement underway sent, most first (the
    statement's first words). Apart from the rounds: counting costs every statement
    some time."""
    url = with_schema(database(server.url, "underway_server_time"), "bench")
    queue = UnderwayQueue(url)
    try:
        with underway_workers(url, 1, args.slots) as pids:
            track(server.url, True, planning=True)
            reset(server.url)
            try:
                end_to_end(queue, args.jobs, pids, server)
            finally:
                track(server.url, False)
    finally:
        queue.close()
    with psycopg.connect(server.url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT sum(total_plan_time + total_exec_time), "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 60) "
            "FROM pg_stat_statements WHERE query NOT ILIKE '%%pg_stat_statements%%' "
            "AND query NOT ILIKE '%%bench poll%%' AND query NOT ILIKE '%%pg_reload_conf%%' "
            "GROUP BY ROLLUP (2) ORDER BY 2 NULLS FIRST, 1 DESC"
        ).fetchall()
    total, rows = rows[0], rows[1:]
    top = sorted(rows, key=lambda r: r[0], reverse=True)[:5]
    return [(float(ms) / 1e3 / args.jobs, text or "all") for ms, text in [total, *top]]


def phases(server: PostgresServer, args: argparse.Namespace) -> dict[str, float]:
    """underway's round trip split where the job starts: `args.trips` round trips to one
    idle worker process of `--slots` slots, each a job that returns the time it started
    (the worker's clock, this machine's). Medians, in seconds: the submission, from its
    return to the job's start, from the start to `wait()`'s return, and the whole."""
    url = with_schema(database(server.url, "underway_phases"), "bench")
    uw = build_app(url)
    rows = []
    try:
        uw.count()
        with underway_workers(url, 1, args.slots):
            for n in range(args.trips + 50):
                t0 = time.time()
                job = uw.submit("clock")
                t1 = time.time()
                started = job.wait(timeout=10)
                t2 = time.time()
                if n >= 50:  # the first ones warm up
                    rows.append((t1 - t0, started - t1, t2 - started, t2 - t0))
    finally:
        uw.close()
    names = ("submission", "to the start", "start to wait's return", "all")
    return {name: statistics.median(r[k] for r in rows) for k, name in enumerate(names)}


def database(server_url: str, name: str) -> str:
    """A fresh database on the server; its URL."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def bare_round_trip(url: str, n: int = 500) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE bare (id int)")
        started = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO bare VALUES (%s)", (i,))
            conn.execute("DELETE FROM bare WHERE id = %s", (i,))
        return (time.perf_counter() - started) / n


def insert_round_trip(url: str, n: int = 2000) -> float:
    """Seconds per one-row INSERT, in autocommit, into a logged table with a text primary
    key, through psycopg: the least a submission that is stored when it returns costs
    (one statement, one commit), the job's own columns and indexes aside."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_insert")
        conn.execute("CREATE TABLE bench_insert (id text PRIMARY KEY, task text, data text)")
        try:
            started = time.perf_counter()
            for i in range(n):
                conn.execute("INSERT INTO bench_insert VALUES (%s, 'noop', '{}')", (f"{i:026d}",))
            return (time.perf_counter() - started) / n
        finally:
            conn.execute("DROP TABLE bench_insert")


def select_round_trip(url: str, n: int = 500) -> float:
    """p50 of a bare `SELECT 1` through psycopg: the least a statement costs."""
    with psycopg.connect(url, autocommit=True) as conn:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


PONG = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
conn.execute("LISTEN bench_ping")
print("ready", flush=True)
while True:
    note = next(iter(conn.notifies(stop_after=1)))
    if note.payload == "stop":
        break
    conn.execute("SELECT pg_notify('bench_pong', %s)", (note.payload,))
"""


def notify_ping_pong(url: str, n: int = 300) -> float:
    """p50 of a NOTIFY answered by a NOTIFY from a process that LISTENs: two wake-ups
    through the server, and two statements."""
    pong = subprocess.Popen([sys.executable, "-c", PONG, url], stdout=subprocess.PIPE, text=True)
    try:
        assert pong.stdout is not None and pong.stdout.readline().strip() == "ready"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN bench_pong")
            times = []
            for i in range(n):
                started = time.perf_counter()
                conn.execute("SELECT pg_notify('bench_ping', %s)", (str(i),))
                for _ in conn.notifies(stop_after=1):
                    pass
                times.append(time.perf_counter() - started)
            conn.execute("SELECT pg_notify('bench_ping', 'stop')")
    finally:
        pong.wait(timeout=10)
        if pong.stdout is not None:
            pong.stdout.close()
    return statistics.median(times)


def thread_hand_off(n: int = 2000) -> float:
    """p50 of one thread waking another and being woken back, halved: one hand-off."""
    ping, pong = threading.Event(), threading.Event()

    def other() -> None:
        for _ in range(n):
            ping.wait()
            ping.clear()
            pong.set()

    thread = threading.Thread(target=other)
    thread.start()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        ping.set()
        pong.wait()
        pong.clear()
        times.append(time.perf_counter() - started)
    thread.join()
    return statistics.median(times) / 2


def count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (0 without /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """`cpu_seconds` of each of these processes that is still running."""
    return {pid: cpu_seconds([pid]) for pid in pids if Path(f"/proc/{pid}").exists()}


def server_pids(server: PostgresServer) -> list[int]:
    """The server's postmaster and its children (backends and helpers)."""
    try:
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


# -- worker processes -------------------------------------------------------------------
@contextmanager
def workers(argv: list[str], procs: int) -> Iterator[list[int]]:
    started = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    try:
        for proc in started:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # the peers print `ready` just before their loop LISTENs
        yield [proc.pid for proc in started]
    finally:
        for proc in started:
            proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


# underway's worker processes run at `underway worker`'s default niceness (`--nice`),
# as that command runs them; the peers' at the usual priority, as theirs do.
UNDERWAY_NICE = NICE


def underway_workers(url: str, procs: int, slots: int) -> Any:
    nice = ["nice", "-n", str(UNDERWAY_NICE)] if UNDERWAY_NICE else []
    argv = [*nice, sys.executable, "-m", "tests.crash.crash_app", url, "--lease", "30",
            "--workers", str(slots), "--janitor", "5"]  # fmt: skip
    return workers(argv, procs)


def peer_workers(peer: str, url: str, procs: int, batch: int) -> Any:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", peer, url,
            "--batch", str(batch)]  # fmt: skip
    return workers(argv, procs)


def run_procrastinate_worker(url: str) -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    print("ready", flush=True)
    app.run_worker(concurrency=PROCRASTINATE_CONCURRENCY, listen_notify=True)


def run_pgqueuer_worker(url: str, batch: int) -> None:
    import asyncpg
    from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
    from pgqueuer.adapters.persistence.queries import Queries
    from pgqueuer.qm import QueueManager

    async def main() -> None:
        # asyncpg, as its README shows: with the async psycopg driver a lone job here
        # waited 1-3 s to be picked and logged (its LISTEN loop holds the connection).
        conn = await asyncpg.connect(url)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Any) -> None:
            return None

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        print("ready", flush=True)
        await qm.run(batch_size=batch)
        await conn.close()

    asyncio.run(main())


# -- what a queue offers the benchmark ------------------------------------------------
class Queue:
    """Submit one no-op job; wait for a job; count the jobs done."""

    name = ""

    def submit(self) -> Any:
        raise NotImplementedError

    def wait(self, job: Any) -> None:
        raise NotImplementedError

    def done(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class UnderwayQueue(Queue):
    name = "underway"
    no_idle_for: float | None = None  # `--no-idle-for`; None: the store's own

    def __init__(self, url: str) -> None:
        self.uw = build_app(url)
        self.uw.count()  # connected (and the schema checked) now, as the peers connect here
        store = self.uw.store
        if self.no_idle_for is not None and isinstance(store, PostgresStore):
            store.no_idle_for = self.no_idle_for

    def submit(self) -> Any:
        return self.uw.submit("noop")

    def wait(self, job: Any) -> None:
        job.wait(timeout=10)

    def done(self) -> int:
        return self.uw.count(state=State.SUCCEEDED)

    def close(self) -> None:
        self.uw.close()


class PeerQueue(Queue):
    """The peers' "done" comes from a trigger of ours (see the module's docstring)."""

    done_sql = ""

    def __init__(self, url: str) -> None:
        self.url = url
        self.listen = psycopg.connect(url, autocommit=True)
        self.listen.execute(f"LISTEN {DONE_CHANNEL}")

    def wait(self, job: Any) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for note in self.listen.notifies(timeout=deadline - time.monotonic(), stop_after=1):
                if note.payload == str(job):
                    return
        raise TimeoutError(f"{self.name} job {job} not done within 10 s")

    def done(self) -> int:
        return count(self.url, self.done_sql)

    def close(self) -> None:
        self.listen.close()


class ProcrastinateQueue(PeerQueue):
    name = "procrastinate"
    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"

    def __init__(self, url: str) -> None:
        import procrastinate

        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        @self.app.task(name="noop")
        async def noop() -> None:
            return None

        self.task = noop
        self.app.open()
        super().__init__(url)

    @staticmethod
    def install(url: str) -> None:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))
        with app.open():
            app.schema_manager.apply_schema()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION bench_done() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_notify('{DONE_CHANNEL}', NEW.id::text); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER bench_done AFTER UPDATE OF status ON procrastinate_jobs "
                "FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed')) "
                "EXECUTE FUNCTION bench_done()"
            )

    def submit(self) -> Any:
        return self.task.defer()

    def close(self) -> None:
        super().close()
        self.app.close()


class PgqueuerQueue(PeerQueue):
    name = "pgqueuer"
    done_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"

    def __init__(self, url: str) -> None:
        from pgqueuer.adapters.drivers.psycopg import SyncPsycopgDriver
        from pgqueuer.adapters.persistence.queries import SyncQueries

        self.conn = psycopg.connect(url, autocommit=True)
        self.queries = SyncQueries(SyncPsycopgDriver(self.conn))
        super().__init__(url)

    @staticmethod
    def install(url: str) -> None:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.adapters.persistence.queries import Queries

        async def install() -> None:
            conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
            await Queries(PsycopgDriver(conn)).install()
            await conn.close()

        asyncio.run(install())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION bench_done() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"PERFORM pg_notify('{DONE_CHANNEL}', NEW.job_id::text); RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER bench_done AFTER INSERT ON pgqueuer_log FOR EACH ROW "
                "WHEN (NEW.status IN ('successful', 'exception', 'canceled', 'deleted')) "
                "EXECUTE FUNCTION bench_done()"
            )

    def submit(self) -> Any:
        (job_id,) = self.queries.enqueue("noop", None)
        return job_id

    def close(self) -> None:
        super().close()
        self.conn.close()


# -- the measurements -------------------------------------------------------------------
PROGRESS_CALLS = 200_000


def progress_cost(url: str) -> float:
    """Seconds per `job.progress()` call, timed inside a job running on the store at
    `url` (the store is written apart, by the worker's monitor)."""
    uw = Underway(url, workers=1)

    @uw.task
    def spin(job: Job) -> float:
        started = time.perf_counter()
        for i in range(PROGRESS_CALLS):
            job.progress(i + 1, total=PROGRESS_CALLS)
        return (time.perf_counter() - started) / PROGRESS_CALLS

    uw.start()
    try:
        return float(uw.submit("spin").wait(timeout=120))
    finally:
        uw.stop()
        uw.close()


def progress_costs(url: str, rounds: int = 3) -> tuple[float, float, float]:
    """The best of `rounds` interleaved runs, in seconds per call: `job.progress()` on
    PostgreSQL, on SQLite, and a bare method call of the same shape."""

    class Plain:
        def progress(self, current: float, total: float | None = None) -> None:
            pass

    plain = Plain()
    postgres, sqlite, bare = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            postgres.append(progress_cost(url))
            sqlite.append(progress_cost(f"sqlite:///{folder}/progress.db"))
            started = time.perf_counter()
            for i in range(PROGRESS_CALLS):
                plain.progress(i + 1, total=PROGRESS_CALLS)
            bare.append((time.perf_counter() - started) / PROGRESS_CALLS)
    return min(postgres), min(sqlite), min(bare)


def quiesce(server: PostgresServer, wait: float = 30.0) -> None:
    """Let the server finish what the previous queue left it (a checkpoint of the pages
    it wrote, autovacuum of its tables) before the next timing starts, so that no
    queue is timed beside another's aftermath."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchone()
            if not row or not row[0]:
                return
            time.sleep(0.1)


def end_to_end(
    queue: Queue, jobs: int, workers: list[int], server: PostgresServer
) -> tuple[float, dict[str, float]]:
    """Jobs/s: `jobs` submitted one by one to running idle workers, until all are done;
    and the CPU seconds per job meanwhile of this process (`client`), the `workers`
    and the PostgreSQL server's processes (`server`: backends that started during the
    run included), and their sum (`cpu`)."""
    quiesce(server)
    client = time.process_time()
    before = cpu_by_pid(workers + server_pids(server))
    started = time.perf_counter()
    for _ in range(jobs):
        queue.submit()
    deadline = time.monotonic() + 120
    while queue.done() < jobs:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue.name}: {queue.done()} of {jobs} jobs done after 120 s")
        time.sleep(0.005)
    took = time.perf_counter() - started
    after = cpu_by_pid(workers + server_pids(server))
    spent = {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}
    parts = {
        "client": time.process_time() - client,
        "workers": sum(spent.get(pid, 0.0) for pid in workers),
        "server": sum(cpu for pid, cpu in spent.items() if pid not in workers),
    }
    per_job = {f"cpu_{name}": cpu / jobs for name, cpu in parts.items()}
    per_job["cpu"] = sum(parts.values()) / jobs
    return jobs / took, per_job


def submit_alone(queue: Queue, jobs: int) -> float:
    """Seconds per submission with no worker running: the client's own floor, and so
    the end-to-end rate's (jobs are submitted one by one)."""
    started = time.perf_counter()
    for _ in range(jobs):
        queue.submit()
    return (time.perf_counter() - started) / jobs


def round_trips(queue: Queue, trips: int) -> list[float]:
    times = []
    for _ in range(trips + 10):
        started = time.perf_counter()
        queue.wait(queue.submit())
        times.append(time.perf_counter() - started)
    return sorted(times[10:])


def bulk_statements(base: str, jobs: int, procs: int, slots: int) -> tuple[float, float]:
    """underway's bulk path: jobs/s of `jobs` queued by `submit_many` for idle workers,
    from the first insert until all are done, and the statements per job the server
    ran meanwhile (the workers' start-up is not timed)."""
    url = with_schema(base, "bulk")
    uw = build_app(url)
    uw.store.ping()  # the schema, before anything is counted
    poll = "SELECT /* bench poll */ count(*) FROM bulk.underway_jobs WHERE state = 'succeeded'"
    with underway_workers(url, procs, slots), psycopg.connect(base, autocommit=True) as conn:
        track(base, True)
        reset(base)
        started = time.perf_counter()
        for start in range(0, jobs, 500):
            uw.submit_many("noop", [{} for _ in range(min(500, jobs - start))])
        try:
            while conn.execute(poll).fetchone() != (jobs,):
                time.sleep(0.002)
            took = time.perf_counter() - started
            sent = statements(base)
        finally:
            track(base, False)
    uw.close()
    return jobs / took, sent / jobs


def measure(
    name: str,
    make: Callable[[str], Queue],
    spawn: Callable[[str, int], Any],
    url: str,
    alone: str,
    args: argparse.Namespace,
    server: PostgresServer,
) -> dict[str, Any]:
    """One queue: its submissions with no worker running (on the database `alone`),
    its end-to-end rate (workers in their throughput configuration), then its round
    trips (workers in their latency configuration)."""
    out: dict[str, Any] = {"name": name}
    queue = make(alone)
    try:
        quiesce(server)
        out["alone"] = submit_alone(queue, args.jobs)
    finally:
        queue.close()
    queue = make(url)
    try:
        with spawn(url, PGQUEUER_BATCH) as pids:
            out["rate"], cpu = end_to_end(queue, args.jobs, pids, server)
            out.update(cpu)
        with spawn(url, 1):
            trips = round_trips(queue, args.trips)
    finally:
        queue.close()
    out["p50"] = statistics.median(trips)
    out["p90"] = trips[int(len(trips) * 0.9)]
    print(
        f"  {name}: {out['rate']:,.0f} jobs/s ({cpu_text(out)} CPU per job); "
        f"round trip p50 {out['p50'] * 1e3:.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return out


CPU_PARTS = ("cpu", "cpu_client", "cpu_workers", "cpu_server")


def cpu_text(row: dict[str, Any]) -> str:
    """A run's CPU per job: the sum, then the client's, the workers' and the server's."""
    parts = " / ".join(f"{row[key] * 1e6:,.0f}" for key in CPU_PARTS[1:])
    return f"{row['cpu'] * 1e6:,.0f} us ({parts})"


def medians(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One queue's figures over its rounds: the median of each."""
    keys = [key for key in runs[0] if key != "name"]
    return {"name": name, **{key: statistics.median(run[key] for run in runs) for key in keys}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument(
        "--procs", default="1,2", help="worker processes: each count is measured; best shown"
    )
    parser.add_argument("--slots", type=int, default=8, help="underway's slots in all")
    parser.add_argument("--bulk", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1, help="turns of every queue; medians")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated; '' for none")
    parser.add_argument(
        "--no-idle-for",
        type=float,
        help="underway's submissions: PostgresStore.no_idle_for (0: every submission looks "
        "for an idle worker and announces its job, as before that window existed)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=NICE,
        help=f"underway's worker processes run this much below the usual CPU priority "
        f"(`underway worker --nice`, {NICE} unless told; 0: as the peers' run)",
    )
    parser.add_argument(
        "--server-time",
        action="store_true",
        help="one more underway run, its server time per job by statement (pg_stat_statements)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="underway's round trip split where the job starts (medians of --trips)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("PEER", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=PGQUEUER_BATCH, help=argparse.SUPPRESS)
    args = parser.parse_args()
    UnderwayQueue.no_idle_for = args.no_idle_for
    global UNDERWAY_NICE
    UNDERWAY_NICE = args.nice
    if args.worker:
        peer, url = args.worker
        if peer == "procrastinate":
            run_procrastinate_worker(url)
        else:
            run_pgqueuer_worker(url, args.batch)
        return

    peers = [p for p in args.peers.split(",") if p]
    for peer in list(peers):
        if importlib.util.find_spec(peer) is None:
            print(f"{peer} is not installed (pip install -e '.[bench-postgres]'): left out")
            peers.remove(peer)
    with PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        track(server.url, False)
        bare = bare_round_trip(server.url)
        insert = insert_round_trip(server.url)
        select = select_round_trip(server.url)
        ping_pong = notify_ping_pong(server.url)
        hand_off = thread_hand_off()
        procs = [int(p) for p in args.procs.split(",")]
        bulk_procs = max(procs)
        bulk_rate, per_job = bulk_statements(
            server.url, args.bulk, bulk_procs, max(1, args.slots // bulk_procs)
        )
        progress = progress_costs(with_schema(database(server.url, "underway_progress"), "bench"))
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for number in range(args.rounds):
            # The queues take turns, round after round, each on fresh databases: on a
            # shared machine the load changes from minute to minute.
            for count in procs:
                slots = max(1, args.slots // count)
                tag = f"{number}_{count}"
                url = with_schema(database(server.url, f"underway_bench_{tag}"), "bench")
                runs.setdefault(("underway", count), []).append(
                    measure(
                        f"underway x{count}",
                        UnderwayQueue,
                        lambda u, _batch, n=count, k=slots: underway_workers(u, n, k),
                        url,
                        with_schema(url, "alone"),
                        args,
                        server,
                    )
                )
                for peer in peers:
                    url = database(server.url, f"{peer}_bench_{tag}")
                    alone = database(server.url, f"{peer}_alone_{tag}")
                    make: Any = ProcrastinateQueue if peer == "procrastinate" else PgqueuerQueue
                    make.install(url)
                    make.install(alone)
                    runs.setdefault((peer, count), []).append(
                        measure(
                            f"{peer} x{count}",
                            make,
                            lambda u, batch, peer=peer, n=count: peer_workers(peer, u, n, batch),
                            url,
                            alone,
                            args,
                            server,
                        )
                    )
        times = server_time(server, args) if args.server_time else []
        split = phases(server, args) if args.phases else {}
    # Each queue in its best configuration: the process count of its best median
    # rate end to end, and (apart) of its best median round trip.
    by_config = {key: medians(key[0], measured) for key, measured in runs.items()}
    rows = []
    for name in ["underway", *peers]:
        configs = [(count, by_config[(name, count)]) for count in procs]
        fast_n, fast = max(configs, key=lambda c: c[1]["rate"])
        quick_n, quick = min(configs, key=lambda c: c[1]["p50"])
        rows.append(
            {
                "name": name,
                "alone": fast["alone"],
                "rate": fast["rate"],
                **{key: fast[key] for key in CPU_PARTS},
                "rate_procs": fast_n,
                "p50": quick["p50"],
                "p90": quick["p90"],
                "p50_procs": quick_n,
            }
        )
    ours = rows[0]
    print("each configuration (medians of its rounds):")
    for (name, count), row in by_config.items():
        print(
            f"  {name} x{count}: {row['rate']:,.0f} jobs/s ({cpu_text(row)} CPU "
            f"per job); round trip p50 {row['p50'] * 1e3:.2f} ms"
        )
    print(
        f"floors: bare INSERT + DELETE round trip {bare * 1e6:.0f} us; one-row INSERT into "
        f"a table with a primary key {insert * 1e6:.0f} us; SELECT 1 "
        f"{select * 1e6:.0f} us; NOTIFY answered by NOTIFY from a listening process "
        f"{ping_pong * 1e6:.0f} us; thread hand-off {hand_off * 1e6:.0f} us"
    )
    print(
        "submission alone (no worker running), us per job, and the end-to-end rate it "
        "allows: "
        + "; ".join(f"{r['name']} {r['alone'] * 1e6:.0f} ({1 / r['alone']:,.0f}/s)" for r in rows)
    )
    cores = os.cpu_count() or 1
    print(
        f"CPU per job in all (client, workers and server) and the end-to-end rate it allows "
        f"on {cores} cores, even if every side overlapped perfectly: "
        + "; ".join(
            f"{r['name']} {r['cpu'] * 1e6:,.0f} us ({cores / r['cpu']:,.0f}/s)"
            for r in rows
            if r["cpu"] > 0
        )
    )
    print(
        f"underway bulk: {args.bulk} jobs by submit_many, drained by {bulk_procs} processes "
        f"x {max(1, args.slots // bulk_procs)} slots: {bulk_rate:,.0f} jobs/s; "
        f"{per_job:.2f} statements per job "
        "(BEGIN/COMMIT included)"
    )
    print(
        f"job.progress() inside a running job: PostgreSQL {progress[0] * 1e9:.0f} ns per call, "
        f"SQLite {progress[1] * 1e9:.0f} ns (PostgreSQL/SQLite {progress[0] / progress[1]:.2f}); "
        f"a bare method call of the same shape {progress[2] * 1e9:.0f} ns"
    )
    if split:
        print(
            f"underway's round trip split where the job starts (one worker process x "
            f"{args.slots} slots, medians of {args.trips}): "
            + "; ".join(f"{name} {t * 1e6:.0f} us" for name, t in split.items())
        )
    if times:
        print(
            f"underway's server time per job by statement, planning and execution "
            f"({args.jobs} jobs end to end on a "
            f"fresh table, 1 worker process x {args.slots} slots, pg_stat_statements on): "
            + "; ".join(f"{t * 1e6:.1f} us {text!r}" for t, text in times)
        )
    print(
        f"each queue at {args.procs} worker process(es), best shown (x N: its process count); "
        f"{args.jobs} no-op jobs submitted one by one; "
        f"{args.trips} round trips to idle workers; medians of {args.rounds} rounds"
    )
    print(
        "| queue | jobs/s end to end | CPU per job (client / workers / server) | "
        "round trip p50 | p90 | "
        "jobs/s underway/peer | CPU underway/peer | p50 underway/peer |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        peer = row is not ours
        rate_ratio = f"{ours['rate'] / row['rate']:.2f}" if peer else ""
        cpu_ratio = f"{ours['cpu'] / row['cpu']:.2f}" if peer and row["cpu"] > 0 else ""
        p50_ratio = f"{ours['p50'] / row['p50']:.2f}" if peer else ""
        print(
            f"| {row['name']} | {row['rate']:,.0f} (x{row['rate_procs']}) | "
            f"{cpu_text(row)} | {row['p50'] * 1e3:.2f} ms (x{row['p50_procs']}) | "
            f"{row['p90'] * 1e3:.2f} ms | {rate_ratio} | "
            f"{cpu_ratio} | {p50_ratio} |"
        )


if __name__ == "__main__":
    main()
