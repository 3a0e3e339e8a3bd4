"""underway next to Huey and Dramatiq, measured in the same run on this machine.

    pip install huey 'dramatiq[redis]'
    python bench/bench_peers.py [--jobs 10000]

No-op jobs submitted one by one until all have run:
- SQLite: underway with 2 embedded thread workers against Huey's SqliteHuey with a
  2-thread consumer polling every 1-10 ms (its defaults poll far less often);
- Redis: underway with 2 worker processes against Dramatiq with 2 processes of 8
  threads (its fastest setting here); each Dramatiq run counts its runs with INCR.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.integration.redis_worker_app import build_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from underway import State, Underway  # noqa: E402


def underway_sqlite(n: int, folder: str) -> float:
    uw = Underway(f"sqlite:///{folder}/underway.db", workers=2)
    uw.task(name="noop")(lambda: None)
    uw.store.count()
    uw.start()
    started = time.perf_counter()
    handles = [uw.submit("noop") for _ in range(n)]
    for handle in handles:
        assert uw.wait(handle.id, timeout=300).state is State.SUCCEEDED
    elapsed = time.perf_counter() - started
    uw.close()
    return n / elapsed


def huey_sqlite(n: int, folder: str) -> float:
    from huey import SqliteHuey

    huey = SqliteHuey(filename=f"{folder}/huey.db")

    @huey.task()
    def noop() -> int:
        return 1  # Huey keeps no result for None

    consumer = huey.create_consumer(
        workers=2, worker_type="thread", periodic=False, initial_delay=0.001, max_delay=0.01
    )
    consumer.start()
    started = time.perf_counter()
    results = [noop() for _ in range(n)]
    for result in results:
        assert result.get(blocking=True, timeout=300) == 1
    elapsed = time.perf_counter() - started
    consumer.stop()
    return n / elapsed


def underway_redis(url: str, n: int) -> float:
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"]
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        uw = build_app(url)
        started = time.perf_counter()
        for _ in range(n):
            uw.enqueue("noop", {})
        while uw.store.count(state=State.SUCCEEDED) < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        uw.close()
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    return n / elapsed


def dramatiq_redis(url: str, n: int) -> float:
    os.environ["PEERS_REDIS_URL"] = url
    folder = str(Path(__file__).resolve().parent / "peers")
    sys.path.insert(0, folder)
    import dramatiq_app  # type: ignore[import-not-found]

    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    command = [sys.executable, "-m", "dramatiq", "dramatiq_app", "--processes", "2",
               "--threads", "8"]  # fmt: skip
    workers = subprocess.Popen(
        command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        dramatiq_app.noop.send()  # wait until the workers run
        while int(client.get("peers:done") or 0) < 1:
            time.sleep(0.01)
        client.set("peers:done", 0)
        started = time.perf_counter()
        for _ in range(n):
            dramatiq_app.noop.send()
        while int(client.get("peers:done") or 0) < n:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=60)
        client.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    args = parser.parse_args()
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.rounds):  # alternating, so a busy neighbour hits both alike
        with tempfile.TemporaryDirectory() as folder:
            ours.append(underway_sqlite(args.jobs, folder))
            theirs.append(huey_sqlite(args.jobs, folder))
    report("SQLite, 2 thread workers", "Huey", ours, theirs)
    ours, theirs = [], []
    with RedisServer() as server:
        flush = redis.Redis.from_url(server.url)
        for _ in range(args.rounds):
            flush.flushdb()
            ours.append(underway_redis(server.url, args.jobs))
            flush.flushdb()
            theirs.append(dramatiq_redis(server.url, args.jobs))
        flush.close()
    report("Redis, 2 worker processes", "Dramatiq", ours, theirs)


def report(what: str, peer: str, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    rounds = ", ".join(f"{x:,.0f}/{y:,.0f}" for x, y in zip(ours, theirs, strict=True))
    print(f"{what}: underway {a:,.0f} jobs/s; {peer} {b:,.0f} jobs/s (medians); "
          f"ratio {a / b:.2f}; rounds {rounds}")  # fmt: skip


if __name__ == "__main__":
    main()
