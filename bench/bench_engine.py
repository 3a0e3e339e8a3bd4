"""Engine benchmarks: throughput, progress() cost, latency, and a large store.

Run by hand: `python bench/bench_engine.py [--jobs 20000] [--only throughput,...]`.
`--only floor` runs underway against a minimal durable queue of the same shape, the
leanest durable queue, the least queue that keeps underway's promises (see
`bench_floor`) and `ThreadPoolExecutor(2)` one by one, interleaved: the machine's
floor for the embedded rows of the peers table, and their goal's baseline, with
underway's CPU a job end to end beside its two sides' apart
(the submissions with no worker running, then two slots draining those jobs), the
cores it kept busy and the garbage collector's time in its collections.
`--only latency` also times the round trip with every thread of the process on one
core, which shows what the hand-offs between threads cost across cores.
`--only phases` splits an embedded round trip into its parts (submit, start, the
end's write, the waiter's wake-up) and prints its CPU against its wall time.
`--only lock` runs the embedded end-to-end shape with each thread's wait for the
store's write lock, its time holding it, and the part of that in SQLite's statements.
`--only tail` times the round trip's tail (p99, p99.9) with the store's checkpoint
thread and, interleaved, with SQLite's own checkpoints in the committing connection.
Each figure is printed with a ratio to a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import timeit
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from underway import Job, State, Underway
from underway.records import JobRecord
from underway.stores.sqlite import SQLiteStore


def noop() -> None:
    return None


def bench_throughput(n: int, folder: str) -> None:
    with ThreadPoolExecutor(2) as pool:
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(n)]
        wait(futures)
        base = n / (time.perf_counter() - start)

    uw = Underway(f"sqlite:///{folder}/throughput.db", workers=2)
    uw.task(name="noop")(noop)
    uw.store.count()  # open (and create) the file outside the timing
    uw.start()
    start = time.perf_counter()
    handles = [uw.submit("noop") for _ in range(n)]
    submitted = time.perf_counter() - start
    for handle in handles:
        assert uw.wait(handle.id, timeout=300).state is State.SUCCEEDED
    elapsed = time.perf_counter() - start
    uw.close()
    rate = n / elapsed
    print(
        f"throughput: {rate:,.0f} jobs/s end to end ({n:,} no-op jobs, 2 thread workers, "
        f"SQLite file; submissions ran at {n / submitted:,.0f}/s beside the workers); "
        f"ThreadPoolExecutor {base:,.0f}/s; ratio {rate / base:.3f}; goal >= 5,000 jobs/s"
    )
    bench_drain(n, folder)


def bench_drain(n: int, folder: str) -> None:
    """The two halves apart: submitting alone, then workers alone on the full queue."""
    uw = Underway(f"sqlite:///{folder}/drain.db", workers=2)
    uw.task(name="noop")(noop)
    uw.store.count()
    start = time.perf_counter()
    handles = [uw.submit("noop") for _ in range(n)]
    submit_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    uw.start()
    for handle in handles:
        uw.wait(handle.id, timeout=300)
    drain_rate = n / (time.perf_counter() - start)
    uw.close()
    print(
        f"  apart: submitting alone {submit_rate:,.0f} jobs/s; 2 thread workers alone on a "
        f"full queue {drain_rate:,.0f} jobs/s"
    )


def bench_progress() -> None:
    job = Job(JobRecord(id="x", task="t", params={}))

    class Plain:
        def progress(self, current: float, total: float | None = None) -> None:
            pass

    plain = Plain()
    n = 2_000_000
    base = min(timeit.repeat(lambda: plain.progress(1, 10), number=n, repeat=3)) / n
    cost = min(timeit.repeat(lambda: job.progress(1, 10), number=n, repeat=3)) / n
    print(
        f"progress(): {cost * 1e9:.0f} ns per call; bare method call {base * 1e9:.0f} ns; "
        f"ratio {cost / base:.2f}; goal <= 1 us and <= 10x"
    )

    # Store writes per second for a job calling progress() in a tight loop.
    with tempfile.TemporaryDirectory() as folder:
        uw = Underway(f"sqlite:///{folder}/p.db", workers=1)
        stop = threading.Event()

        @uw.task
        def spin(job: Job) -> int:
            i = 0
            while not stop.is_set():
                i += 1
                job.progress(i, total=10**9)
            return i

        uw.start()
        handle = uw.submit("spin")
        deadline = time.monotonic() + 5
        while handle.state is not State.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        first = len(uw.store.events(handle.id))
        time.sleep(3.0)
        writes = len(uw.store.events(handle.id)) - first
        stop.set()
        calls = handle.wait(10)
        seconds = time.monotonic() - t0
        uw.close()
    print(
        f"progress store writes: {writes / 3.0:.1f}/s while the task called progress() "
        f"{calls / seconds:,.0f} times/s; goal <= 10/s"
    )


def _embedded_round_trips(uw: Underway, n: int) -> list[float]:
    """Start `uw`'s embedded slots, time `n` submit-then-wait round trips of a no-op
    (seconds each, after a warm-up), and close it."""
    uw.start()
    for _ in range(50):  # warm up
        uw.submit("noop").wait(5)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        uw.submit("noop").wait(5)
        samples.append(time.perf_counter() - t)
    uw.close()
    return samples


def _round_trips(folder: str, name: str, n: int) -> tuple[list[float], list[float]]:
    """Submit-then-wait of a no-op, one at a time, with 2 embedded slots; and the same
    through a `ThreadPoolExecutor(1)` (seconds each)."""
    uw = Underway(f"sqlite:///{folder}/{name}.db", workers=2)
    uw.task(name="noop")(noop)
    samples = _embedded_round_trips(uw, n)
    with ThreadPoolExecutor(1) as pool:
        base = []
        for _ in range(n):
            t = time.perf_counter()
            pool.submit(noop).result()
            base.append(time.perf_counter() - t)
    return samples, base


def bench_latency(folder: str, n: int = 2000) -> None:
    samples, base = _round_trips(folder, "latency", n)
    p50 = statistics.median(samples)
    p99 = statistics.quantiles(samples, n=100)[98]
    b50 = statistics.median(base)
    print(
        f"latency submit->done: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms; "
        f"ThreadPoolExecutor round trip p50 {b50 * 1e3:.3f} ms; ratio {p50 / b50:.1f}; "
        f"goal p50 <= 0.5 ms"
    )
    # The same with every thread of the process on one core (threads inherit the
    # affinity of the thread that starts them): what the two hand-offs between
    # threads cost when the woken thread runs on the other core.
    if not hasattr(os, "sched_setaffinity"):
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        return
    os.sched_setaffinity(0, {min(cpus)})
    try:
        one, one_base = _round_trips(folder, "latency_one_core", n)
    finally:
        os.sched_setaffinity(0, cpus)
    o50 = statistics.median(one)
    print(
        f"latency with every thread on one core: p50 {o50 * 1e3:.3f} ms "
        f"({o50 / p50:.2f} of the above); ThreadPoolExecutor round trip "
        f"p50 {statistics.median(one_base) * 1e3:.3f} ms"
    )


def _tail_round_trips(path: str, n: int, thread: bool) -> list[float]:
    """Submit-then-wait round trips, with the store's checkpoint thread or (`thread`
    False) with SQLite's automatic checkpoint in the committing connection instead."""
    uw = Underway(f"sqlite:///{path}", workers=2)
    uw.task(name="noop")(noop)
    store = uw.store
    if not thread:
        assert isinstance(store, SQLiteStore) and store._checkpointer is not None
        store._checkpointer.close()
        store._checkpointer = None
        store._db.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default
    return _embedded_round_trips(uw, n)


def bench_tail(folder: str, n: int = 3000, rounds: int = 3) -> None:
    """The round trip's tail: a checkpoint (two fsyncs) in the committing connection
    every thousand pages stalls the submission or the end that crosses it."""
    for k in range(rounds):
        got = {}
        for thread in (True, False):
            samples = sorted(_tail_round_trips(f"{folder}/tail-{k}-{thread}.db", n, thread))
            got[thread] = [samples[int(len(samples) * q)] for q in (0.5, 0.99, 0.999)]
        on, off = got[True], got[False]
        print(
            f"round trip, checkpoint thread: p50 {on[0] * 1e3:.3f} p99 {on[1] * 1e3:.3f} "
            f"p99.9 {on[2] * 1e3:.3f} ms; checkpoints in the writer: p50 {off[0] * 1e3:.3f} "
            f"p99 {off[1] * 1e3:.3f} p99.9 {off[2] * 1e3:.3f} ms; ratios "
            f"{on[0] / off[0]:.2f} / {on[1] / off[1]:.2f} / {on[2] / off[2]:.2f}"
        )


def bench_phases(folder: str, n: int = 2000) -> None:
    """Where an embedded round trip's time goes: submit-then-wait of a no-op, one at a
    time, with 2 slots, split at the job's start (stamped by the task) and at the
    return of the store call that writes its end (the worker's next claim)."""
    uw = Underway(f"sqlite:///{folder}/phases.db", workers=2)
    stamps: dict[str, float] = {}

    @uw.task(name="stamp")
    def stamp() -> int:
        stamps["start"] = time.perf_counter()
        return 1

    store = uw.store
    apply_and_claim = store.apply_and_claim

    def timed(decisions: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = apply_and_claim(decisions, **kwargs)
        if decisions:
            stamps["write"], stamps["written"] = began, time.perf_counter()
        return out

    store.apply_and_claim = timed  # type: ignore[method-assign]
    uw.start()
    for _ in range(50):  # warm up
        uw.submit("stamp").wait(5)
    rows = []
    cpu = time.process_time()
    wall = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        handle = uw.submit("stamp")
        t1 = time.perf_counter()
        handle.wait(5)
        t2 = time.perf_counter()
        rows.append(
            (
                t1 - t0,
                stamps["start"] - t1,
                stamps["write"] - stamps["start"],
                stamps["written"] - stamps["write"],
                t2 - stamps["written"],
                t2 - t0,
            )
        )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    uw.close()
    names = ("submit", "to start", "run, to write", "end write", "to wait's return", "total")
    parts = ", ".join(
        f"{name} {statistics.median(r[k] for r in rows) * 1e6:.0f}" for k, name in enumerate(names)
    )
    print(f"round trip phases, medians in us: {parts}")
    print(f"CPU per round trip (all threads) {cpu / n * 1e6:.0f} us; wall {wall / n * 1e6:.0f} us")


def bench_large_store(folder: str, n: int = 100_000) -> None:
    uw = Underway(f"sqlite:///{folder}/large.db", workers=2)
    uw.task(name="noop")(noop)
    uw.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mid_rss = 0
    last = None
    for i in range(n):
        last = uw.submit("noop")
        if i == n // 2:
            gc.collect()
            mid_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert last is not None
    uw.wait(last.id, timeout=600)
    while uw.store.count(state=State.SUCCEEDED) < n:
        time.sleep(0.05)
    fill = time.perf_counter() - start
    gc.collect()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    some_id = uw.list_jobs(limit=1, cursor=last.id).jobs[0].id
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        uw.list_jobs(limit=50)
    list_ms = (time.perf_counter() - t) / reps * 1e3
    t = time.perf_counter()
    for _ in range(reps):
        uw.get(some_id)
    get_ms = (time.perf_counter() - t) / reps * 1e3
    t = time.perf_counter()
    for _ in range(reps):
        uw.list_jobs(limit=50, task="noop", state="succeeded")
    filtered_ms = (time.perf_counter() - t) / reps * 1e3
    uw.close()
    print(
        f"large store: {n:,} jobs run in {fill:.1f}s; list newest 50: {list_ms:.2f} ms, "
        f"filtered list: {filtered_ms:.2f} ms, get by id: {get_ms:.3f} ms (goal < 5 ms); "
        f"max RSS {rss0 / 1024:.0f} MB at start, {mid_rss / 1024:.0f} MB at half, "
        f"{rss1 / 1024:.0f} MB at the end"
    )


def _commit_seconds(path: str, n: int, *, text_key: bool = False) -> float:
    """Seconds per one-row INSERT committed on its own (WAL, synchronous=NORMAL). With
    an integer key it is the least a durable one-by-one submission costs (the
    harness's `SQLite commit NORMAL`); a text key adds its index's page."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(f"CREATE TABLE t (id {'TEXT' if text_key else 'INTEGER'} PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for i in range(n):
        db.execute("INSERT INTO t VALUES (?, '{}')", (f"{i:010d}" if text_key else i,))
    spent = (time.perf_counter() - start) / n
    db.close()
    return spent


def machine(folder: str) -> None:
    """Two costs that set this machine's floor, so figures from machines can be compared:
    a wake-up between two processes, and one committed SQLite write."""

    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    rounds = 5000
    child = os.fork()
    if child == 0:  # echo each byte back
        for _ in range(rounds):
            os.read(ping_r, 1)
            os.write(pong_w, b"x")
        os._exit(0)
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(ping_w, b"x")
        os.read(pong_r, 1)
    pipe_us = (time.perf_counter() - start) / rounds * 1e6
    os.waitpid(child, 0)
    for fd in (ping_r, ping_w, pong_r, pong_w):
        os.close(fd)
    commit_us = _commit_seconds(f"{folder}/machine.db", rounds, text_key=True) * 1e6
    print(f"machine: pipe round trip between two processes {pipe_us:.0f} us; "
          f"one-row SQLite commit (WAL) {commit_us:.0f} us")  # fmt: skip


def _end_and_claim(
    db: sqlite3.Connection, ended: list[tuple[str, Any]], most: int, returning: str
) -> list[Any]:
    """One transaction of a bench queue's worker: the ends of its last batch
    (`(result, id)` pairs), and up to `most` queued jobs claimed, oldest first."""
    db.execute("BEGIN IMMEDIATE")
    if ended:
        db.executemany("UPDATE q SET state = 'succeeded', result = ? WHERE id = ?", ended)
    rows = db.execute(
        "UPDATE q SET state = 'running' WHERE id IN (SELECT id FROM q "
        f"WHERE state = 'queued' ORDER BY id LIMIT {most}) RETURNING {returning}"
    ).fetchall()
    db.execute("COMMIT")
    return rows


def _bench_db(path: str) -> sqlite3.Connection:
    """A bench queue's connection: autocommit, shared by threads, WAL with
    `synchronous = NORMAL` (as underway's store)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


class FloorQueue:
    """A minimal durable SQLite job queue in Python, in underway's shape: one
    committed INSERT per submit, 2 worker threads that claim up to 16 queued jobs in
    one transaction and write the ends of the previous batch in it, a waiter per job
    woken by an Event. No events, progress, output, leases, attempts or fencing."""

    def __init__(self, path: str) -> None:
        self.db = _bench_db(path)
        self.db.execute(
            "CREATE TABLE q (id TEXT PRIMARY KEY, task TEXT, params TEXT, state TEXT, "
            "result TEXT, created REAL) WITHOUT ROWID"
        )
        self.db.execute("CREATE INDEX q_queued ON q (id) WHERE state = 'queued'")
        self.lock = threading.Lock()
        self.work = threading.Condition(threading.Lock())
        self.done: dict[str, tuple[threading.Event, list[object]]] = {}
        self.stopping = False
        self.count = 0
        self.threads = [threading.Thread(target=self._work) for _ in range(2)]
        for thread in self.threads:
            thread.start()

    def submit(self) -> str:
        self.count += 1
        job_id = f"{self.count:020d}"
        self.done[job_id] = (threading.Event(), [])
        with self.lock:
            self.db.execute(
                "INSERT INTO q VALUES (?, 'noop', '{}', 'queued', NULL, ?)", (job_id, time.time())
            )
        with self.work:
            self.work.notify()
        return job_id

    def wait(self, job_id: str) -> object:
        event, result = self.done[job_id]
        event.wait()
        return result[0]

    def _work(self) -> None:
        ended: list[tuple[str, str]] = []
        while not self.stopping:
            with self.lock:
                rows = _end_and_claim(self.db, ended, 16, "id, params")
            for result, job_id in ended:
                event, box = self.done[job_id]
                box.append(json.loads(result))
                event.set()
            ended = []
            if not rows:
                with self.work:
                    self.work.wait(0.01)
                continue
            for job_id, params in rows:
                value = noop(**json.loads(params))
                ended.append((json.dumps(value), job_id))

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join()
        self.db.close()


class _OneThread:
    """What the bench queues of one worker thread share: the write lock, the count of
    submissions (their ids), the thread, and the results, handed to their waiters
    under one Condition."""

    def __init__(self) -> None:
        self.ended = threading.Condition(threading.Lock())
        self.results: dict[int, object] = {}
        self.lock = threading.Lock()
        self.count = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._work)

    def _work(self) -> None:
        raise NotImplementedError

    def wait(self, job_id: int) -> object:
        with self.ended:
            while job_id not in self.results:
                self.ended.wait()
            return self.results.pop(job_id)

    def deliver(self, ended: list[tuple[int, str]]) -> None:
        """`(id, result as JSON)` pairs: their waiters wake."""
        with self.ended:
            for job_id, result in ended:
                self.results[job_id] = json.loads(result)
            self.ended.notify_all()


class LeanQueue(_OneThread):
    """The leanest durable SQLite job queue of `bench_floor`: one committed INSERT per
    submit (an integer key, three columns, no other index), one worker thread that
    claims up to 64 queued jobs in one transaction with the ends of the previous batch,
    and looks again every `poll` seconds when it found none (a submission wakes nobody:
    no hand-off between threads a job), its results handed to waiters under one
    Condition. The same one commit a submission as underway, and nothing else: no
    record, events, leases, attempts, fencing, priorities or prompt start (a job
    submitted to an idle queue waits up to `poll`)."""

    def __init__(self, path: str, poll: float = 0.001) -> None:
        self.db = _bench_db(path)
        self.db.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, state TEXT, result TEXT)")
        super().__init__()
        self.poll = poll
        self.thread.start()

    def submit(self) -> int:
        self.count += 1
        with self.lock:
            self.db.execute("INSERT INTO q VALUES (?, 'queued', NULL)", (self.count,))
        return self.count

    def _work(self) -> None:
        ended: list[tuple[str, int]] = []
        while not self.stopping:
            with self.lock:
                rows = _end_and_claim(self.db, ended, 64, "id")
            if ended:
                self.deliver([(job_id, result) for result, job_id in ended])
            ended = []
            if not rows:
                time.sleep(self.poll)
                continue
            for (job_id,) in rows:
                ended.append((json.dumps(noop()), job_id))

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        self.db.close()


class PromisesQueue(_OneThread):
    """The least a durable SQLite queue does that keeps underway's promises, in its
    shape: a submission is one committed INSERT (its first event is its row, as
    underway's is), and starts promptly (it wakes the worker when it waits for work);
    one worker thread claims up to 16 queued jobs in one transaction with the ends of
    its previous batch, counting each job's attempt at its claim (so `retries=N`
    can mean at most N+1 starts) and giving it a lease (so a job whose worker died is
    found), writes each end under its fence (the worker and the attempt that hold the
    job), and appends an event of each claim and end to the jobs' log; the results go
    to waiters under one Condition. No priorities, delays, limits, progress, output or
    records for waiters, and no lost-job janitor (its index is kept, which is what a
    claim and an end pay for it)."""

    WORKER = "w1"

    def __init__(self, path: str, lease: float = 30.0) -> None:
        self.db = _bench_db(path)
        self.db.execute(
            "CREATE TABLE q (id INTEGER PRIMARY KEY, task TEXT, params TEXT, state TEXT, "
            "attempt INTEGER, worker TEXT, lease_until REAL, result TEXT, created REAL, "
            "finished REAL)"
        )
        self.db.execute("CREATE INDEX q_queued ON q (id) WHERE state = 'queued'")
        self.db.execute("CREATE INDEX q_lease ON q (lease_until) WHERE state = 'running'")
        self.db.execute(
            "CREATE TABLE ev (job INTEGER, seq INTEGER, kind TEXT, data TEXT, at REAL, "
            "PRIMARY KEY (job, seq)) WITHOUT ROWID"
        )
        super().__init__()
        self.lease = lease
        self.work = threading.Condition(threading.Lock())
        self.idle = False
        self.submitted = 0  # submissions committed
        self.thread.start()

    def submit(self) -> int:
        self.count += 1
        with self.lock:
            self.db.execute(
                "INSERT INTO q (id, task, params, state, attempt, created) "
                "VALUES (?, 'noop', '{}', 'queued', 0, ?)",
                (self.count, time.time()),
            )
        self.submitted += 1
        if self.idle:  # set before the worker's last look: a wake-up is never lost
            with self.work:
                self.work.notify()
        return self.count

    def _work(self) -> None:
        ended: list[tuple[str, float, int, int]] = []
        while not self.stopping:
            now = time.time()
            seen = self.submitted
            with self.lock:
                db = self.db
                db.execute("BEGIN IMMEDIATE")
                if ended:
                    db.executemany(
                        "UPDATE q SET state = 'succeeded', result = ?, finished = ?, "
                        "worker = NULL, lease_until = NULL "
                        f"WHERE id = ? AND state = 'running' AND worker = '{self.WORKER}' "
                        "AND attempt = ?",
                        ended,
                    )
                    db.executemany(
                        "INSERT INTO ev VALUES (?, 3, 'end', ?, ?)",
                        [(job_id, result, now) for result, _, job_id, _ in ended],
                    )
                rows = db.execute(
                    f"UPDATE q SET state = 'running', attempt = attempt + 1, "
                    f"worker = '{self.WORKER}', lease_until = ? WHERE id IN (SELECT id "
                    "FROM q WHERE state = 'queued' ORDER BY id LIMIT 16) "
                    "RETURNING id, params, attempt",
                    (now + self.lease,),
                ).fetchall()
                if rows:
                    db.executemany(
                        "INSERT INTO ev VALUES (?, 2, 'running', ?, ?)",
                        [(job_id, str(attempt), now) for job_id, _, attempt in rows],
                    )
                db.execute("COMMIT")
            if ended:
                self.deliver([(job_id, result) for result, _, job_id, _ in ended])
            ended = []
            if not rows:
                with self.work:
                    self.idle = True
                    if self.submitted == seen and not self.stopping:
                        self.work.wait(0.05)
                    self.idle = False
                continue
            for job_id, params, attempt in rows:
                value = noop(**json.loads(params))
                ended.append((json.dumps(value), time.time(), job_id, attempt))

    def close(self) -> None:
        self.stopping = True
        with self.work:
            self.work.notify()
        self.thread.join()
        self.db.close()


def _cpu_seconds() -> float:
    """CPU time this process has used so far, user and system, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Collections:
    """The garbage collector's work while it is installed: wall seconds in its
    collections (the thread that collects holds the GIL meanwhile, so every other
    thread waits too) and how many of each generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.counts = [0, 0, 0]
        self._started = 0.0

    def __enter__(self) -> _Collections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.counts[info["generation"]] += 1


def _pool_one_by_one(n: int) -> float:
    """`ThreadPoolExecutor(2)`, a no-op submitted and its result awaited one at a time
    (jobs/s): the peer harness's baseline for the embedded row (its `floor.py`)."""
    with ThreadPoolExecutor(2) as pool:
        pool.submit(noop).result()  # threads started outside the timing
        start = time.perf_counter()
        for _ in range(n):
            pool.submit(noop).result()
        return n / (time.perf_counter() - start)


def bench_floor(n: int, folder: str, rounds: int = 3) -> None:
    """underway (embedded SQLite, 2 slots) against `FloorQueue` and against
    `ThreadPoolExecutor(2)` one by one, interleaved: `n` no-op jobs submitted one by
    one, then waited for in order, as the peers table runs them. The peers table's
    goal for this row is half the pool's rate. The minimal durable queue shows what
    a queue of underway's shape (slots woken for work, batched claims) reaches with
    nothing of its bookkeeping; `LeanQueue`, what a queue that commits each submission
    and does nothing else (one thread that polls) reaches on this machine; and
    `PromisesQueue`, what a queue reaches that also keeps underway's promises (attempts
    counted at the claim, leases, fenced ends, events, prompt start)."""
    ours: list[float] = []
    floor: list[float] = []
    lean: list[float] = []
    promises: list[float] = []
    pool: list[float] = []
    commits: list[float] = []
    our_cpu: list[float] = []
    floor_cpu: list[float] = []
    submit_cpu: list[float] = []
    drain_cpu: list[float] = []
    collected: list[float] = []
    generations = [0, 0, 0]
    for r in range(rounds):
        uw = Underway(f"sqlite:///{folder}/floor-uw-{r}.db", workers=2)
        uw.task(name="noop")(noop)
        uw.store.count()
        uw.start()
        with _Collections() as collections:
            cpu, start = _cpu_seconds(), time.perf_counter()
            handles = [uw.submit("noop") for _ in range(n)]
            for handle in handles:
                handle.wait(300)
            ours.append(n / (time.perf_counter() - start))
            our_cpu.append((_cpu_seconds() - cpu) / n)
        collected.append(collections.seconds / n)
        generations = [a + b for a, b in zip(generations, collections.counts, strict=True)]
        uw.close()
        # The same two sides apart: the submissions with no worker running, then the
        # two slots draining those jobs; the last is waited for first (it ends about
        # last), so that, as above, most waits find their job ended.
        uw = Underway(f"sqlite:///{folder}/floor-parts-{r}.db", workers=2)
        uw.task(name="noop")(noop)
        uw.store.count()
        cpu = _cpu_seconds()
        handles = [uw.submit("noop") for _ in range(n)]
        submit_cpu.append((_cpu_seconds() - cpu) / n)
        cpu = _cpu_seconds()
        uw.start()
        handles[-1].wait(300)
        for handle in handles:
            handle.wait(300)
        drain_cpu.append((_cpu_seconds() - cpu) / n)
        uw.close()
        queue = FloorQueue(f"{folder}/floor-q-{r}.db")
        cpu, start = _cpu_seconds(), time.perf_counter()
        ids = [queue.submit() for _ in range(n)]
        for job_id in ids:
            queue.wait(job_id)
        floor.append(n / (time.perf_counter() - start))
        floor_cpu.append((_cpu_seconds() - cpu) / n)
        queue.close()
        for kind, rates in ((LeanQueue, lean), (PromisesQueue, promises)):
            one = kind(f"{folder}/floor-{kind.__name__}-{r}.db")
            start = time.perf_counter()
            numbers = [one.submit() for _ in range(n)]
            for number in numbers:
                one.wait(number)
            rates.append(n / (time.perf_counter() - start))
            one.close()
        pool.append(_pool_one_by_one(20 * n))
        commits.append(_commit_seconds(f"{folder}/floor-c-{r}.db", n))
    a, b, c = statistics.median(ours), statistics.median(floor), statistics.median(pool)
    d, e = statistics.median(lean), statistics.median(promises)
    commit = statistics.median(commits)
    ca, cb = statistics.median(our_cpu), statistics.median(floor_cpu)
    cs, cd = statistics.median(submit_cpu), statistics.median(drain_cpu)
    print(
        f"floor: underway {a:,.0f} jobs/s, a minimal durable queue {b:,.0f} jobs/s "
        f"({n:,} no-op jobs one by one, medians of {rounds}); ratio {a / b:.2f}\n"
        f"  CPU per job (all the process's threads): underway {ca * 1e6:.0f} us, the "
        f"minimal durable queue {cb * 1e6:.0f} us; ratio {ca / cb:.2f}\n"
        f"  underway's two sides apart: submitting alone {cs * 1e6:.0f} us of CPU a job, "
        f"2 slots draining those jobs {cd * 1e6:.0f} us; {(cs + cd) * 1e6:.0f} us together "
        f"against {ca * 1e6:.0f} end to end, where the process kept {a * ca:.2f} cores busy; "
        f"the garbage collector {statistics.median(collected) * 1e6:.1f} us a job end to "
        f"end (collections of generations 0/1/2 in the {rounds} rounds: "
        f"{'/'.join(map(str, generations))})\n"
        f"  against ThreadPoolExecutor(2) one by one ({c:,.0f}/s): underway {a / c:.1%}, "
        f"the minimal durable queue {b / c:.1%}, the leanest durable queue {d:,.0f}/s "
        f"{d / c:.1%}, the least queue that keeps underway's promises {e:,.0f}/s {e / c:.1%} "
        f"(goal of the peers table: 50%)\n"
        f"  a bare one-row commit {commit * 1e6:.1f} us: submissions committed one by one "
        f"top out at {1 / commit:,.0f}/s ({1 / commit / c:.0%} of the pool) with no other work"
    )


class _TimedLock:
    """Stands in for the store's write lock (an RLock): how long each thread waited for
    it and held it, outermost acquisitions only."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.waited: dict[str, float] = {}
        self.held: dict[str, float] = {}
        self.local = threading.local()

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        started = time.perf_counter()
        got: bool = self.inner.acquire(*args, **kwargs)
        now = time.perf_counter()
        depth = getattr(self.local, "depth", 0)
        if depth == 0:
            name = threading.current_thread().name
            self.waited[name] = self.waited.get(name, 0.0) + now - started
            self.local.since = now
        self.local.depth = depth + 1
        return got

    def release(self) -> None:
        self.local.depth -= 1
        if self.local.depth == 0:
            name = threading.current_thread().name
            self.held[name] = self.held.get(name, 0.0) + time.perf_counter() - self.local.since
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _TimedDb:
    """Stands in for the store's write connection (or its cursor for statements that
    return nothing): each thread's time in its statements, in `spent` (shared)."""

    def __init__(self, db: Any, spent: dict[str, float] | None = None) -> None:
        self._db = db
        self.spent: dict[str, float] = {} if spent is None else spent

    def _timed(self, call: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args)
        finally:
            name = threading.current_thread().name
            self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started

    def execute(self, *args: Any) -> Any:
        return self._timed(self._db.execute, *args)

    def executemany(self, *args: Any) -> Any:
        return self._timed(self._db.executemany, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def bench_lock(folder: str, n: int = 4000) -> None:
    """The peers table's embedded end-to-end shape (no-op jobs submitted one by one to 2
    slots, then waited for), with each thread's wait for the store's write lock, its
    time holding it, and the part of that spent in SQLite's statements: one writer at
    a time, so the submitting thread waits while a slot writes a batch."""
    uw = Underway(f"sqlite:///{folder}/lock.db", workers=2)
    uw.task(name="noop")(noop)
    store = uw.store
    assert isinstance(store, SQLiteStore)
    store.count()
    lock, db = _TimedLock(store._lock), _TimedDb(store._db)
    plain = _TimedDb(store._plain, db.spent)
    store._lock, store._db, store._plain = lock, db, plain  # type: ignore[assignment]
    uw.start()
    for _ in range(200):
        uw.submit("noop").wait(10)
    lock.waited.clear()
    lock.held.clear()
    db.spent.clear()
    started = time.perf_counter()
    for handle in [uw.submit("noop") for _ in range(n)]:
        handle.wait(30)
    elapsed = time.perf_counter() - started
    uw.close()
    print(f"the store's write lock, {n:,} no-op jobs end to end at {n / elapsed:,.0f}/s "
          f"({elapsed / n * 1e6:.0f} us a job), per job:")  # fmt: skip
    for name in sorted(lock.held, key=lambda k: -lock.held[k]):
        print(f"  {name:<18} waited {lock.waited[name] / n * 1e6:5.1f} us, held "
              f"{lock.held[name] / n * 1e6:5.1f} us (in statements "
              f"{db.spent.get(name, 0.0) / n * 1e6:5.1f} us)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--only", default="throughput,progress,latency,large")
    args = parser.parse_args()
    which = set(args.only.split(","))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as folder:
        machine(folder)
        if "throughput" in which:
            bench_throughput(args.jobs, folder)
        if "progress" in which:
            bench_progress()
        if "latency" in which:
            bench_latency(folder)
        if "phases" in which:
            bench_phases(folder)
        if "tail" in which:
            bench_tail(folder)
        if "large" in which:
            bench_large_store(folder)
        if "floor" in which:
            bench_floor(min(args.jobs, 2000), folder)
        if "lock" in which:
            bench_lock(folder)


if __name__ == "__main__":
    main()
