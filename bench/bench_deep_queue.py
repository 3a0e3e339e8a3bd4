"""Reads of a deep queue: 100,000 queued jobs on SQLite.

Prints how long `GET /v1/jobs/{id}`'s engine call (`Underway.get`) and a 50-row list
take, each against the machine's floor in the same run: a bare primary-key SELECT of
one job row on the same file. Run: `python bench/bench_deep_queue.py`.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from underway import Underway

DEPTH = 100_000


def per_call_ms(fn: Callable[[], object], n: int) -> float:
    fn()
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - started) / n * 1000)
    return statistics.median(rounds)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep.db"
        uw = Underway(f"sqlite:///{path}")

        @uw.task
        def noop(n: int) -> None:
            return None

        front = uw.submit_many("noop", [{"n": 0}])[0]
        for start in range(1, DEPTH, 10_000):
            uw.submit_many("noop", [{"n": n} for n in range(start, min(DEPTH, start + 10_000))])
        uw.store.heartbeat("bench", ["noop"], time.time() + 600)
        newest = uw.list_jobs(limit=1).jobs[0]
        db = sqlite3.connect(path)
        floor = per_call_ms(
            lambda: db.execute("SELECT * FROM jobs WHERE id = ?", (newest.id,)).fetchone(), 200
        )
        rows = [
            ("get, deepest queued job", per_call_ms(lambda: uw.get(newest.id), 50)),
            ("get, first in line", per_call_ms(lambda: uw.get(front.id), 50)),
            ("list, newest 50", per_call_ms(lambda: uw.list_jobs(limit=50), 20)),
        ]
        print(f"{DEPTH:,} queued jobs on SQLite; floor: one-row SELECT {floor:.3f} ms")
        for name, ms in rows:
            print(f"{name:<26} {ms:7.3f} ms   {ms / floor:6.1f}x the floor")
        db.close()
        uw.close()


if __name__ == "__main__":
    main()
