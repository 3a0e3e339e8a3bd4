"""No-op jobs end to end on Redis, with 1, 2 and 4 worker processes.

    python bench/bench_redis.py [--jobs 20000] [--procs 1,2,4] [--slots 1] [--chunk 100]
        [--rounds 6] [--harness-only] [--alone]

Starts its own redis-server on a free port. For each worker count: the worker
processes (`tests.integration.redis_worker_app`) start idle, this process submits
the jobs one by one, and the clock stops when all have succeeded ("streaming").
Then the same with the jobs submitted in bulk (`submit_many`, `--chunk` at a time),
and with all jobs queued before the workers start ("draining"), which
shows the workers' side without the single submitting process as a bottleneck. Prints jobs/s,
Redis commands per job (from `INFO commandstats`, commands inside scripts included)
and client round trips per job (`total_reads_processed`), next to a bare redis-py
LPUSH + BRPOP round trip measured in the same run.

Then, in the peer harness's shape (2 worker processes x 1 slot; `--rounds` rounds of
2,000 no-op jobs, each round submitted with `submit()` one by one and then each job
waited for, after 300 round trips one at a time): jobs/s, the round trip p50, CPU per
job of each side (this process, the workers, redis-server; from /proc) and script
calls and publishes per job. Those tell the round's mode: each job's end is one
publish (to the submitter), and the publishes above that are jobs handed to idle
workers at their submission, each of which wakes its worker for itself alone; the
other jobs were claimed in batches by busy workers. On a 2-core machine rounds differ
by up to 2x in jobs/s, and CPU per job rises with the publishes per job; but the
wake-ups are not what limits the rate: with no job handed over at submission and
idle workers looking every 2 ms instead (no wake-up per job), jobs/s and CPU per job
stayed where they were. The client, the workers and redis-server together use both
cores (CPU per job times jobs/s is near 2 s a second). `submit/s` is the submissions'
own rate while the workers run (the harness's enqueue row): the end-to-end rate stays
close to it (each submission is a round trip, which shares single-threaded Redis and
the two cores with the workers' calls). Since busy workers let jobs gather while they
stream in (a claim that finds queued jobs is news of work; `Worker.linger`), they
claim several a call: script calls per job fell from about 1.9 to 1.25-1.3 and the
workers' CPU per job by about a third, which lifted the rate by about 15% on a 2-core
machine; what bounds it now is the submissions' own round trip.
Each round also prints the submissions' own wall times under that load (p50, p99, and
the part of their mean spent in submissions slower than 0.5 ms) and the scripts that
held Redis longer than 200 us (from SLOWLOG: how many per 1,000 jobs, and their mean):
a submission that arrives while Redis runs a worker's batch of claims and ends waits
for the whole script, so the mean is far above the median.
Under each round, a line splits the submissions' time by process: how long the
client, each worker and redis-server ran, and how long each waited for a CPU while
runnable (the scheduler's run-queue wait, from /proc/<pid>/task/*/schedstat), per
submission while the submissions ran; and Redis's time in the scripts per job, with the
part of it in the commands they call (`INFO commandstats`): the rest is the scripts'
own Lua, their arguments and replies, and the calls' way in and out.
`--harness-only` runs these rounds alone.

First, per operation ("what one job costs"): round trips and Redis commands per job
of a submit, a get, a claim with the end of the previous job (one at a time, and 16
at a time as a backlog is drained), and of a whole submit-then-wait with an idle
worker process, from one process's view and Redis's; Redis time is `usec` of
`INFO commandstats` (scripts and what they call), beside the part of it spent in the
commands the scripts call (the rest is the scripts' Lua code and the conversion of
their arguments and replies).

Then one-by-one submissions with no worker running, beside bare LPUSHes of a
200-byte value (about what Huey's enqueue sends), with the wall time and each side's
CPU per call: a process that submits jobs one by one gets them in no faster.
`--alone` runs this part alone, `--rounds` times.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.integration.redis_worker_app import build_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from underway import State  # noqa: E402


def counters(client: redis.Redis[str]) -> tuple[int, int]:
    """(commands, client reads) so far, not counting this call."""
    stats = client.info("commandstats")
    commands = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
    reads = int(client.info("stats")["total_reads_processed"])
    return commands, reads


# A script call, as the store makes it: a function of its library, or a script.
SCRIPT_CALLS = ("cmdstat_fcall", "cmdstat_evalsha", "cmdstat_eval")


def _script_stat(stats: dict[str, Any], field: str) -> float:
    return sum(float(stats.get(name, {}).get(field, 0)) for name in SCRIPT_CALLS)


def command_stats(client: redis.Redis[str]) -> tuple[int, int, int, int]:
    """(round trips, commands inside scripts, Redis usec, of which usec in those
    commands) so far, not counting INFO. The rest of a script's time is its own: the
    Lua code, and turning arguments and replies into Lua values and back."""
    stats = client.info("commandstats")
    trips = inner = usec = inner_usec = 0
    for name, value in stats.items():
        if name in ("cmdstat_info", "cmdstat_config|resetstat"):
            continue
        if name in SCRIPT_CALLS or name == "cmdstat_subscribe":
            trips += int(value["calls"])
            usec += int(value["usec"])
        else:
            inner += int(value["calls"])
            inner_usec += int(value["usec"])
    return trips, inner, usec, inner_usec


def per_operation(url: str, n: int = 2000) -> None:
    """Round trips, commands and Redis time per job of each store operation."""
    from underway import lifecycle
    from underway.records import Fence

    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    uw = build_app(url)
    store = uw.store
    tasks = uw.task_names
    rows: list[tuple[str, tuple[int, int, int, int]]] = []

    def measure(label: str, action: Any) -> None:
        client.config_resetstat()
        action()
        rows.append((label, command_stats(client)))

    def ends(records: list[Any]) -> list[Any]:
        now = time.time()
        return [
            lifecycle.ended(r, fence=Fence(worker="bench", attempt=r.attempt),
                            state=State.SUCCEEDED, result=1, now=now, keep_for=3600.0,
                            started_at=r.started_at)
            for r in records
        ]  # fmt: skip

    def drain_with(size: int) -> None:
        previous: list[Any] = []
        while True:
            _, claimed = store.apply_and_claim(
                ends(previous), worker="bench", tasks=tasks, limits={}, lease=30.0,
                now=time.time(), max_jobs=size,
            )  # fmt: skip
            if not claimed and not previous:
                return
            previous = claimed

    uw.enqueue("noop", {})
    drain_with(1)  # warm up script caches
    ids: list[str] = []
    measure("submit", lambda: ids.extend(uw.enqueue("noop", {}).id for _ in range(n)))
    measure("get, queued", lambda: [store.get(i) for i in ids])
    measure("claim + end, one at a time", lambda: drain_with(1))
    measure("get, finished", lambda: [store.get(i) for i in ids])
    for _ in range(n):
        uw.enqueue("noop", {})
    measure("claim + end, 16 at a time", lambda: drain_with(16))
    uw.close()
    client.flushdb()
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"]
    worker = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    uw = build_app(url)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for _ in range(50):
            uw.submit("noop").wait(timeout=10)
        rounds = n // 4
        measure(
            "submit + wait, idle worker (all)",
            lambda: [uw.submit("noop").wait(timeout=10) for _ in range(rounds)],
        )
    finally:
        _stop([worker])
        uw.close()
        client.close()
    print("per job: round trips (script calls and SUBSCRIBEs), commands run inside them, "
          "Redis time, and the part of it spent in those commands")  # fmt: skip
    print(f"{'operation':<34} {'trips':>6} {'commands':>9} {'redis us':>9} {'in them':>8}")
    for label, (trips, inner, usec, inner_usec) in rows:
        count = n // 4 if label.startswith("submit + wait") else n
        print(f"{label:<34} {trips / count:>6.2f} {inner / count:>9.1f} {usec / count:>9.1f} "
              f"{inner_usec / count:>8.1f}")  # fmt: skip


def _stop(workers: list[subprocess.Popen[str]]) -> None:
    """SIGTERM the worker processes, wait for them, close their pipes."""
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def bare_round_trips(client: redis.Redis[str], n: int) -> float:
    """LPUSH + BRPOP pairs per second: the floor of one hand-off through Redis."""
    started = time.perf_counter()
    for i in range(n):
        client.lpush("bench:bare", i)
        client.brpop(["bench:bare"], timeout=1)
    return n / (time.perf_counter() - started)


def drain(url: str, procs: int, jobs: int, slots: int) -> float:
    """Jobs/s of workers started on a full queue: the workers' side alone."""
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    uw = build_app(url)
    for _ in range(jobs):
        uw.enqueue("noop", {})
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url,
            "--workers", str(slots), "--janitor", "5", "--idle-start"]  # fmt: skip
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "loaded"
        started = time.perf_counter()
        for proc in workers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        while uw.store.count(state=State.SUCCEEDED) < jobs:
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
    finally:
        _stop(workers)
        uw.close()
        client.close()
    return jobs / elapsed


def latency(url: str, n: int = 300) -> tuple[float, float]:
    """Submit-to-done of one no-op job at a time with an idle worker process: (p50, p95) ms."""
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"]
    worker = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    uw = build_app(url)
    times: list[float] = []
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for i in range(n + 20):
            started = time.perf_counter()
            uw.submit("noop").wait(timeout=10)
            if i >= 20:  # after warming up
                times.append((time.perf_counter() - started) * 1000)
    finally:
        _stop([worker])
        uw.close()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.95)]


def _sched(pid: int) -> tuple[float, float]:
    """Seconds every thread of a process spent on a CPU, and waiting for one while
    runnable (the scheduler's run-queue wait): /proc/<pid>/task/*/schedstat."""
    run = wait = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                fields = f.read().split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


def _cpu(pid: int) -> float:
    """Seconds on a CPU of every thread of a process (scheduler's nanoseconds)."""
    return _sched(pid)[0]


def submission_alone(url: str, server_pid: int, n: int = 5000) -> None:
    """One-by-one submissions with no worker running, beside bare LPUSHes, in the same
    run: wall time, this process's CPU and redis-server's CPU per call. Jobs submitted
    one by one from one process come no faster than this, whatever the workers do."""
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    uw = build_app(url, workers=1)
    print(f"one by one with no worker running, per call ({n:,} calls; CPU from /proc)")
    print(f"{'call':<18} {'wall us':>8} {'client':>7} {'redis':>6}")
    try:
        for _ in range(200):
            uw.submit("noop")
            client.lpush("bench:bare", "x" * 200)
        calls = (
            ("submit()", lambda: uw.submit("noop")),
            ("LPUSH (200 B)", lambda: client.lpush("bench:bare", "x" * 200)),
        )
        walls = []
        for label, call in calls:
            own, server = time.process_time(), _cpu(server_pid)
            started = time.perf_counter()
            for _ in range(n):
                call()
            wall = (time.perf_counter() - started) / n * 1e6
            own = (time.process_time() - own) / n * 1e6
            server = (_cpu(server_pid) - server) / n * 1e6
            walls.append(wall)
            print(f"{label:<18} {wall:>8.0f} {own:>7.0f} {server:>6.0f}")
        print(f"submit() against a bare LPUSH: {walls[0] / walls[1]:.2f}x the wall time a call")
    finally:
        uw.close()
        client.flushdb()
        client.close()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# Commands that scripts do not call: the scripts themselves and the clients' own
# housekeeping (a worker's heartbeat HSET is counted as a script's; there are few).
NOT_IN_SCRIPTS = (
    *SCRIPT_CALLS,
    "cmdstat_function|",
    "cmdstat_config|",
    "cmdstat_slowlog|",
    "cmdstat_client|",
    "cmdstat_script|",
    "cmdstat_hello",
    "cmdstat_ping",
    "cmdstat_info",
    "cmdstat_subscribe",
    "cmdstat_unsubscribe",
    "cmdstat_select",
)
TAIL = 0.0005  # seconds: a submission slower than this is in the tail
LONG_SCRIPT = 200  # microseconds: a script longer than this is long (SLOWLOG)
SLOWLOG_KEEP = 100_000


def harness_rounds(url: str, server_pid: int, rounds: int, jobs: int = 2000) -> None:
    """The peer harness's Redis shape, with each side's CPU per job (see the docstring)."""
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"]
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    uw = build_app(url, workers=1)
    client.config_set("slowlog-log-slower-than", str(LONG_SCRIPT))
    client.config_set("slowlog-max-len", str(SLOWLOG_KEEP))
    print(f"harness shape: 2 worker processes x 1 slot, {jobs:,} jobs a round")
    print(f"{'jobs/s':>7} {'submit/s':>8} {'rt p50':>7} {'client':>7} {'workers':>8} "
          f"{'redis':>6} {'all':>5} {'scripts':>8} {'publish':>8} {'sub p50':>7} "
          f"{'sub p99':>7} {'tail':>5} {'long':>5} {'us':>5}")  # fmt: skip
    print("  (CPU in us per job; calls per job; a submission's wall time in us, and the "
          f"part of their mean spent in those over {TAIL * 1e6:.0f} us; scripts over "
          f"{LONG_SCRIPT} us in Redis per 1,000 jobs, and their mean)")  # fmt: skip
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for _ in range(rounds):
            trips = []
            for _ in range(300):
                started = time.perf_counter()
                uw.submit("noop").wait(timeout=10)
                trips.append(time.perf_counter() - started)
            trips.sort()
            client.config_resetstat()
            client.slowlog_reset()
            pids = [os.getpid(), *(p.pid for p in workers), server_pid]
            before = [_cpu(pid) for pid in pids]
            sched = [_sched(pid) for pid in pids]
            started = time.perf_counter()
            handles, each = [], []
            for _ in range(jobs):
                begun = time.perf_counter()
                handles.append(uw.submit("noop"))
                each.append(time.perf_counter() - begun)
            submitted = time.perf_counter() - started
            sched = [
                tuple((now - then) / jobs * 1e6 for now, then in zip(_sched(pid), was, strict=True))
                for pid, was in zip(pids, sched, strict=True)
            ]
            for handle in handles:
                handle.wait(timeout=30)
            elapsed = time.perf_counter() - started
            spent = [(_cpu(pid) - b) / jobs * 1e6 for pid, b in zip(pids, before, strict=True)]
            stats = client.info("commandstats")
            calls = {k: int(v["calls"]) / jobs for k, v in stats.items()}
            inner = [v for k, v in stats.items() if not k.startswith(NOT_IN_SCRIPTS)]
            long = [e["duration"] for e in client.slowlog_get(SLOWLOG_KEEP)
                    if _text(e["command"]).startswith(("FCALL", "EVALSHA"))]  # fmt: skip
            each.sort()
            print(f"{jobs / elapsed:>7,.0f} {jobs / submitted:>8,.0f} "
                  f"{trips[len(trips) // 2] * 1000:>6.2f}ms "
                  f"{spent[0]:>7.0f} {spent[1] + spent[2]:>8.0f} {spent[3]:>6.0f} "
                  f"{sum(spent):>5.0f} {_script_stat(stats, 'calls') / jobs:>8.2f} "
                  f"{calls.get('cmdstat_publish', 0):>8.2f} "
                  f"{each[jobs // 2] * 1e6:>7.0f} {each[jobs * 99 // 100] * 1e6:>7.0f} "
                  f"{sum(t for t in each if t > TAIL) / jobs * 1e6:>5.0f} "
                  f"{len(long) * 1000 / jobs:>5.0f} "
                  f"{sum(long) / max(1, len(long)):>5.0f}")  # fmt: skip
            print(f"    while submitting, per submission ({submitted / jobs * 1e6:.0f} us): "
                  + ", ".join(f"{name} ran {run:.0f} and waited for a CPU {wait:.0f}"
                              for name, (run, wait) in zip(
                                  ("client", "worker 1", "worker 2", "redis"), sched,
                                  strict=True))
                  + "; per job in all, Redis's scripts "
                  f"{_script_stat(stats, 'usec') / jobs:.0f} us, of "
                  f"which the {sum(int(v['calls']) for v in inner) / jobs:.1f} commands "
                  f"they call {sum(int(v['usec']) for v in inner) / jobs:.0f} us")  # fmt: skip
    finally:
        _stop(workers)
        uw.close()
        client.close()


def verify_exactly_once(store: Any, expected: int) -> None:
    """Every job succeeded on its first attempt: none was lost, none ran again."""
    seen = retried = 0
    cursor = None
    while True:
        page = store.list_jobs(limit=500, cursor=cursor)
        for record in page.jobs:
            seen += 1
            assert record.state is State.SUCCEEDED, record
            retried += record.attempt != 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected and retried == 0, (seen, expected, retried)


def run(
    url: str, procs: int, jobs: int, slots: int, chunk: int = 1
) -> tuple[float, float, float, float]:
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url,
            "--workers", str(slots), "--janitor", "5"]  # fmt: skip
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        uw = build_app(url)
        store = uw.store
        uw.enqueue("noop", {})  # warm up connections and script caches
        while store.count(state=State.SUCCEEDED) < 1:
            time.sleep(0.01)
        commands0, reads0 = counters(client)
        started = time.perf_counter()
        if chunk == 1:
            for _ in range(jobs):
                uw.enqueue("noop", {})
        else:
            for start in range(0, jobs, chunk):
                uw.enqueue_many("noop", [{}] * min(chunk, jobs - start))
        submitted = time.perf_counter() - started
        polls = 1
        while store.count(state=State.SUCCEEDED) < jobs + 1:
            polls += 1
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        commands1, reads1 = counters(client)
        verify_exactly_once(store, jobs + 1)
        uw.close()
    finally:
        _stop(workers)
        client.close()
    # The completion polls above cost a command and a round trip each; not the jobs'.
    return (
        jobs / elapsed,
        jobs / submitted,
        (commands1 - commands0 - polls) / jobs,
        max(0.0, (reads1 - reads0 - polls) / jobs),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--slots", type=int, default=1, help="worker slots per process")
    parser.add_argument("--chunk", type=int, default=100, help="jobs per submit_many call")
    parser.add_argument("--rounds", type=int, default=6, help="rounds in the harness's shape")
    parser.add_argument(
        "--harness-only", action="store_true", help="only the rounds in the harness's shape"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="only the submissions with no worker running, beside bare LPUSHes, --rounds times",
    )
    args = parser.parse_args()
    with RedisServer() as server:
        if args.alone:
            for _ in range(args.rounds):
                submission_alone(server.url, server.pid)
            return
        if args.harness_only:
            harness_rounds(server.url, server.pid, args.rounds)
            return
        per_operation(server.url)
        submission_alone(server.url, server.pid)
        harness_rounds(server.url, server.pid, args.rounds)
        client: redis.Redis[str] = redis.Redis.from_url(server.url, decode_responses=True)
        bare = bare_round_trips(client, 20_000)
        client.close()
        print(f"baseline: bare redis-py LPUSH+BRPOP round trip: {bare:,.0f}/s")
        print("streaming: jobs submitted one by one while the workers run "
              "(each run checks every job succeeded once, on its first attempt)")  # fmt: skip
        print(f"{'procs':>5} {'jobs/s':>9} {'submit/s':>9} {'cmds/job':>9} {'trips/job':>9} "
              f"{'vs bare':>8}")  # fmt: skip
        counts = [int(p) for p in args.procs.split(",")]
        for procs in counts:
            rate, submit_rate, commands, trips = run(server.url, procs, args.jobs, args.slots)
            print(f"{procs:>5} {rate:>9,.0f} {submit_rate:>9,.0f} {commands:>9.1f} {trips:>9.1f} "
                  f"{rate / bare:>8.2f}")  # fmt: skip
        print(f"streaming in bulk: submit_many calls of {args.chunk} jobs while the workers run")
        print(f"{'procs':>5} {'jobs/s':>9} {'submit/s':>9} {'cmds/job':>9} {'trips/job':>9} "
              f"{'vs bare':>8}")  # fmt: skip
        for procs in counts:
            rate, submit_rate, commands, trips = run(
                server.url, procs, args.jobs, args.slots, chunk=args.chunk
            )
            print(f"{procs:>5} {rate:>9,.0f} {submit_rate:>9,.0f} {commands:>9.1f} {trips:>9.1f} "
                  f"{rate / bare:>8.2f}")  # fmt: skip
        p50, p95 = latency(server.url)
        print(f"submit-to-done with an idle worker process: p50 {p50:.2f} ms, p95 {p95:.2f} ms")
        print("draining: workers started on a queue of all the jobs")
        print(f"{'procs':>5} {'jobs/s':>9} {'vs bare':>8}")
        for procs in counts:
            rate = drain(server.url, procs, args.jobs, args.slots)
            print(f"{procs:>5} {rate:>9,.0f} {rate / bare:>8.2f}")


if __name__ == "__main__":
    main()
