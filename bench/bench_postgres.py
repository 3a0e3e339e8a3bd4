"""No-op jobs end to end on PostgreSQL, with statements per job counted by the server.

    python bench/bench_postgres.py [--jobs 5000] [--procs 2] [--slots 4] [--trips 200]

Starts its own PostgreSQL server (tests/support/postgres_server.py) with
pg_stat_statements loaded. Measures, in one run and on one server:

- draining: `--jobs` no-op jobs queued with `submit_many`, then `--procs` worker
  processes (`tests.crash.crash_app`, `--slots` slots each) started; jobs/s from
  their start to the last success, and the statements the server ran per job
  (pg_stat_statements, BEGIN and COMMIT included);
- round trip: one job at a time submitted to idle workers and waited for; p50/p90;
- the floor: a bare one-row INSERT + DELETE round trip through psycopg.

Not yet here: the same figures for procrastinate and pgqueuer (issue 13 asks for
the ratios to them on the same server).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from tests.crash.crash_app import build_app  # noqa: E402
from tests.support.postgres_server import PostgresServer, with_schema  # noqa: E402
from underway import State  # noqa: E402


def statements(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%'"
        ).fetchone()
    return int(row[0]) if row else 0


def reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def bare_round_trip(url: str, n: int = 500) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE bare (id int)")
        started = time.perf_counter()
        for i in range(n):
            conn.execute("INSERT INTO bare VALUES (%s)", (i,))
            conn.execute("DELETE FROM bare WHERE id = %s", (i,))
        return (time.perf_counter() - started) / n


def spawn(url: str, procs: int, slots: int) -> list[subprocess.Popen[str]]:
    argv = [sys.executable, "-m", "tests.crash.crash_app", url, "--lease", "30",
            "--workers", str(slots), "--janitor", "5"]  # fmt: skip
    started = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    for proc in started:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return started


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def drain(base: str, jobs: int, procs: int, slots: int) -> tuple[float, float]:
    url = with_schema(base, "drain")
    uw = build_app(url)
    for start in range(0, jobs, 500):
        uw.submit_many("noop", [{} for _ in range(min(500, jobs - start))])
    reset(base)
    started = time.perf_counter()
    workers = spawn(url, procs, slots)
    while uw.count(state=State.SUCCEEDED) < jobs:
        time.sleep(0.01)
    took = time.perf_counter() - started
    stop(workers)
    sent = statements(base)
    uw.close()
    return jobs / took, sent / jobs


def round_trips(base: str, trips: int, procs: int, slots: int) -> list[float]:
    url = with_schema(base, "trips")
    uw = build_app(url)
    workers = spawn(url, procs, slots)
    times = []
    for _ in range(trips + 10):
        started = time.perf_counter()
        handle = uw.submit("noop")
        handle.wait(timeout=10)
        times.append(time.perf_counter() - started)
    stop(workers)
    uw.close()
    return times[10:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--trips", type=int, default=200)
    args = parser.parse_args()
    with PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        bare = bare_round_trip(server.url)
        rate, per_job = drain(server.url, args.jobs, args.procs, args.slots)
        trips = sorted(round_trips(server.url, args.trips, args.procs, args.slots))
    p50 = statistics.median(trips)
    p90 = trips[int(len(trips) * 0.9)]
    print(f"floor: bare INSERT + DELETE round trip {bare * 1e6:.0f} us")
    print(
        f"draining {args.jobs} no-op jobs, {args.procs} processes x {args.slots} slots: "
        f"{rate:,.0f} jobs/s; {per_job:.2f} statements per job (BEGIN/COMMIT included)"
    )
    print(
        f"round trip, idle workers: p50 {p50 * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms "
        f"({p50 / bare:.1f}x the bare round trip)"
    )


if __name__ == "__main__":
    main()
