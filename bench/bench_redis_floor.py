"""underway on Redis beside three minimal Redis queues of the same shape, in one run.

    python bench/bench_redis_floor.py [--rounds 3] [--jobs 2000] [--kinds underway,bare]
        [--stopped]

Starts its own redis-server. Each round runs the queues in turn (`--kinds`, all six
by default) in the peer harness's Redis shape: 2 worker processes of one thread each;
300 round trips one at a time (submit, then wait for the result), then `--jobs` no-op
jobs submitted one by one while the workers run, then each waited for. It prints, per
queue, the end-to-end rate, the submissions' own rate (the harness's enqueue row), the
round trip p50, and the CPU per job of each side (this process, the workers,
redis-server; from /proc; and in brackets the submitting thread's own while it
submitted), with each other queue's figures as a ratio to underway's.

- underway: its Redis store (`tests.integration.redis_worker_app`, one slot).
- underway-store: the same, with each submission's record made before the clock starts
  (its parameters checked, its id and times, as `Underway.enqueue` makes them): a
  submission is then the store's part alone (`RedisStore.enqueue`: the listener's note,
  the call's arguments, the call, the news for this process's waiters). With the two
  kinds below, it splits the Python around a submission's call into the app's part and
  the store's, as they cost under the harness's load.
- underway-calls: the same store, workers and scripts, with each submission's script
  call made ready before the clock starts (its record, its arguments, the listener's
  note of it, as `RedisStore.enqueue` makes them): a submission is then the script call
  alone. What underway's submissions would do with no Python of their own around the
  call; its `submit/s` is the most that leaner client code could give them here.
- status: the least a Redis queue does that can say at any time what became of each
  job it accepted, with nothing else: a submission writes the job's hash (task,
  parameters, state, time, where to reply) and pushes its id in one script call; a
  worker's one script call writes the ends of the jobs it ran (state, result, and a
  publish of each to its submitter), then pops up to 16 ids and marks them running;
  when there are none it blocks in BRPOP for one and marks it with one HSET. Its calls
  are packed by hiredis and read back on one connection, as underway's store makes
  its script calls. No events, leases, attempts, indexes, fencing or lost-job
  recovery: a worker killed between its pop and its mark loses the job.
- bare: a queue that keeps nothing but the queue, in Huey's shape: a submission is one
  LPUSH of the message, a worker BRPOPs one message at a time and answers with one
  publish of the result. Nothing says what became of a job before its result comes.

- promises: `status` plus what underway's crash promises need at the least, still one
  script call a submission and one a worker's batch: a job's attempt is counted by
  the claim that starts it (so `retries=N` can mean at most N+1 starts), a claimed
  job holds a lease in an index (so a job whose worker died is found), an end is
  fenced (written only by the worker and attempt that hold the job), each transition
  appends an event to the job's log (the change stream), and the job is listed under
  its state. A worker that finds the queue empty moves the next id into a list of
  its own (BLMOVE) before it marks it, so a kill between the two loses nothing. No
  output, progress, priorities, delays, limits, idempotency or hand-over, and its
  claim returns ids and attempts, not the jobs' records (a no-op needs no parameters).

`--stopped` also times, in each round, the same submissions with that queue's two
workers stopped (SIGSTOP) until they are all in, then let go (SIGCONT) to run them:
what each queue's submissions allow alone here, where the harness's enqueue row times
them beside workers that take both cores' time (its `stopped/s` column; the ratio
line then compares these too).

A waiting submitter of any minimal queue hears its results on a channel of its own,
read by one thread, as underway's does. What the minimal queues do per job is the
floor of the harness's Redis rows on this machine: `bare` is what Huey pays, `status`
what any queue pays that answers "where is job X" from the moment it is accepted, and
`promises` about the least a queue pays that also keeps underway's crash promises
(attempts, leases, fencing, events): a floor for any design that keeps them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from bench_redis import _cpu  # noqa: E402  (this folder is on the path: a script's own)
from hiredis import pack_command  # noqa: E402

from tests.integration.redis_worker_app import build_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402

QUEUE = "floor:queue"
BATCH = 16


def noop() -> int:
    return 1


# -- the minimal queues' workers (`--worker KIND URL`, in their own processes) ----------
def bare_worker(client: redis.Redis[str]) -> None:
    while True:
        got = client.brpop([QUEUE], timeout=1)
        if got is None:
            continue
        job_id, reply = got[1].split("|", 1)
        client.publish(reply, f"{job_id}|{noop()}")


# The status queue's scripts: one call each, as underway's store makes its changes.
# ARGV: id, task, params, created_at, reply channel
SUBMIT = """
redis.call('HSET', 'floor:job:' .. ARGV[1], 'task', ARGV[2], 'params', ARGV[3],
           'state', 'queued', 'created_at', ARGV[4], 'reply', ARGV[5])
redis.call('LPUSH', 'floor:queue', ARGV[1])
"""
# ARGV: now, worker, most to claim, number of ends, then (id, result) pairs
# -> the ids claimed, each marked running
END_AND_CLAIM = """
local now, worker, most, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, 4 + 2 * n, 2 do
  local job = 'floor:job:' .. ARGV[i]
  redis.call('HSET', job, 'state', 'succeeded', 'result', ARGV[i + 1], 'finished_at', now)
  redis.call('PUBLISH', redis.call('HGET', job, 'reply'), ARGV[i] .. '|' .. ARGV[i + 1])
end
local ids = {}
if most > 0 then ids = redis.call('RPOP', 'floor:queue', most) or {} end
for _, id in ipairs(ids) do
  redis.call('HSET', 'floor:job:' .. id, 'state', 'running', 'worker', worker,
             'started_at', now)
end
return ids
"""

# The promises queue's scripts. ARGV: id, task, params, created_at, reply channel
P_SUBMIT = """
local job = 'floor:job:' .. ARGV[1]
redis.call('HSET', job, 'task', ARGV[2], 'params', ARGV[3], 'state', 'queued',
           'created_at', ARGV[4], 'reply', ARGV[5])
redis.call('RPUSH', 'floor:events:' .. ARGV[1], 'queued|' .. ARGV[4])
redis.call('ZADD', 'floor:state:queued', 0, ARGV[1])
redis.call('LPUSH', 'floor:queue', ARGV[1])
"""
# ARGV: now, worker, lease_until, most to claim, number of ends, then (id, attempt,
# result) triples, then the ids to mark (taken by BLMOVE into the worker's list)
# -> {ids claimed, their attempts}
P_END_AND_CLAIM = """
local now, worker, lease_until = ARGV[1], ARGV[2], ARGV[3]
local most, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local at = 6
for _ = 1, n do
  local id, attempt, result = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  local job = 'floor:job:' .. id
  local f = redis.call('HMGET', job, 'state', 'worker', 'attempt', 'reply')
  if f[1] == 'running' and f[2] == worker and f[3] == attempt then
    redis.call('HSET', job, 'state', 'succeeded', 'result', result, 'finished_at', now)
    redis.call('HDEL', job, 'worker')
    redis.call('ZREM', 'floor:leases', id)
    redis.call('ZREM', 'floor:state:running', id)
    redis.call('ZADD', 'floor:state:succeeded', 0, id)
    redis.call('RPUSH', 'floor:events:' .. id, 'succeeded|' .. now)
    redis.call('PUBLISH', f[4], id .. '|' .. result)
  end
end
local ids = {}
for i = at, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then redis.call('DEL', 'floor:claiming:' .. worker) end
if most > 0 then
  for _, id in ipairs(redis.call('RPOP', 'floor:queue', most) or {}) do ids[#ids + 1] = id end
end
local attempts = {}
for k, id in ipairs(ids) do
  local job = 'floor:job:' .. id
  local attempt = redis.call('HINCRBY', job, 'attempt', 1)
  redis.call('HSET', job, 'state', 'running', 'worker', worker, 'started_at', now)
  redis.call('ZADD', 'floor:leases', lease_until, id)
  redis.call('ZREM', 'floor:state:queued', id)
  redis.call('ZADD', 'floor:state:running', 0, id)
  redis.call('RPUSH', 'floor:events:' .. id, 'running|' .. now)
  attempts[k] = attempt
end
return {ids, attempts}
"""


class Calls:
    """Commands on one connection, packed by hiredis and read back directly: the way
    underway's store calls its scripts, without the client library's per-call work."""

    def __init__(self, url: str) -> None:
        self.client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
        self.conn = self.client.connection_pool.get_connection()
        self.shas = {
            text: self.client.script_load(text)
            for text in (SUBMIT, END_AND_CLAIM, P_SUBMIT, P_END_AND_CLAIM)
        }

    def __call__(self, *args: Any) -> Any:
        self.conn.send_packed_command((pack_command(args),), check_health=False)
        return self.conn.read_response()

    def script(self, text: str, *args: Any) -> Any:
        return self(b"EVALSHA", self.shas[text], 0, *args)

    def close(self) -> None:
        self.client.connection_pool.release(self.conn)
        self.client.close()


def status_worker(url: str, name: str) -> None:
    calls = Calls(url)
    ended: list[str] = []  # id, result, id, result, ...
    while True:
        # The ends of the jobs run, and the next claim: one script call.
        ids = calls.script(END_AND_CLAIM, repr(time.time()), name, BATCH, len(ended) // 2, *ended)
        ended = []
        if not ids:
            got = calls(b"BRPOP", QUEUE, 1)
            if got is None:
                continue
            calls(b"HSET", f"floor:job:{got[1]}", "state", "running", "worker", name,
                  "started_at", repr(time.time()))  # fmt: skip
            ids = [got[1]]
        for job_id in ids:
            ended += (job_id, str(noop()))


def promises_worker(url: str, name: str) -> None:
    calls = Calls(url)
    ended: list[str] = []  # id, attempt, result, ...
    marks: list[str] = []
    while True:
        now = time.time()
        got = calls.script(P_END_AND_CLAIM, repr(now), name, repr(now + 30), BATCH,
                           len(ended) // 3, *ended, *marks)  # fmt: skip
        ended, marks = [], []
        ids, attempts = got
        if not ids:
            # The next id moves into this worker's own list, where a janitor would find
            # it if this worker died before its mark: then marked with the next call.
            taken = calls(b"BLMOVE", QUEUE, f"floor:claiming:{name}", "RIGHT", "LEFT", 1)
            if taken is not None:
                marks = [taken]
            continue
        for job_id, attempt in zip(ids, attempts, strict=True):
            ended += (job_id, str(attempt), str(noop()))


def run_worker(kind: str, url: str) -> None:
    client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
    client.ping()
    print("ready", flush=True)
    if kind == "bare":
        bare_worker(client)
    elif kind == "promises":
        promises_worker(url, f"{os.getpid()}")
    else:
        status_worker(url, f"{os.getpid()}")


# -- the minimal queues' client ---------------------------------------------------------
class FloorClient:
    """Submits jobs to one of the minimal queues and waits for their results, which a
    thread of its own reads from this client's channel."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.client: redis.Redis[str] = redis.Redis.from_url(url, decode_responses=True)
        self.channel = f"floor:reply:{os.getpid()}:{kind}"
        self.ids = itertools.count()
        self.results: dict[str, str] = {}
        self.closing = False
        self.arrived = threading.Condition()
        self.calls = Calls(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.channel)
        self.pubsub.get_message(timeout=1)  # the subscription's confirmation
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        try:
            for message in self.pubsub.listen():
                if message.get("type") != "message":
                    continue
                job_id, result = message["data"].split("|", 1)
                with self.arrived:
                    self.results[job_id] = result
                    self.arrived.notify_all()
        except Exception:
            if not self.closing:
                raise

    def submit(self) -> str:
        job_id = f"{next(self.ids):012d}"
        if self.kind == "bare":
            self.client.lpush(QUEUE, f"{job_id}|{self.channel}")
        else:
            text = P_SUBMIT if self.kind == "promises" else SUBMIT
            self.calls.script(text, job_id, "noop", "{}", repr(time.time()), self.channel)
        return job_id

    def wait(self, job_id: str, timeout: float) -> Any:
        with self.arrived:
            if not self.arrived.wait_for(lambda: job_id in self.results, timeout):
                raise TimeoutError(job_id)
            return self.results.pop(job_id)

    def close(self) -> None:
        self.closing = True
        self.pubsub.close()  # the listening thread's read fails, and it returns
        self.calls.close()
        self.client.close()


class UnderwayClient:
    def __init__(self, url: str) -> None:
        self.uw = build_app(url, workers=1)

    def submit(self) -> Any:
        return self.uw.submit("noop")

    def wait(self, handle: Any, timeout: float) -> Any:
        return handle.wait(timeout=timeout)

    def close(self) -> None:
        self.uw.close()


class UnderwayStoreClient(UnderwayClient):
    """underway with its submissions' records made before the clock starts, as
    `Underway.enqueue` makes them: each submission is then `RedisStore.enqueue` alone."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.store: Any = self.uw.store
        self.store.ping()
        self.pending: list[Any] = []

    def prepare(self, count: int) -> None:
        from underway import lifecycle
        from underway.app import _new_record

        task, self.events = self.uw.get_task("noop"), lifecycle.submitted()
        for _ in range(count):
            record = _new_record(task, task.check({}), now=time.time(), owner=None,
                                 priority=None, delay=None, meta={})  # fmt: skip
            self.pending.append(record)
        self.pending.reverse()

    def submit(self) -> Any:
        record = self.pending.pop()
        self.store.enqueue(record, self.events)
        return record.id

    def wait(self, handle: Any, timeout: float) -> Any:
        return self.uw.wait(handle, timeout=timeout)


class UnderwayCallsClient(UnderwayStoreClient):
    """underway with its submissions' script calls made before the clock starts (the
    record, the arguments, the listener's note of the job, as `RedisStore.enqueue` makes
    them): each submission is then the script call alone, on the store's connection.
    What underway's submissions would do with no Python of their own."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.conn = self.store._acquire()
        self.calls: list[tuple[str, bytes]] = []

    def prepare(self, count: int) -> None:
        from underway.stores import redis as rs
        from underway.stores import redis_scripts as scripts

        super().prepare(count)
        store = self.store
        assert store._functions, "a Redis with functions (7.0 or later)"
        head = rs._head("FCALL", scripts.ENQUEUE.function)
        for record in self.pending:  # (taken from the end, as the records would be)
            store._listener.submitted(record.id)
            args = store._submission(record, self.events)
            self.calls.append((record.id, b"*%d\r\n%b%b" % (args.count + 3, head, args.data)))
        self.pending = []

    def submit(self) -> Any:
        job_id, command = self.calls.pop()
        self.store._send(self.conn, command)
        return job_id

    def close(self) -> None:
        self.store._free.append(self.conn)
        super().close()


# -- the measurement --------------------------------------------------------------------
def one_round(
    kind: str, url: str, server_pid: int, jobs: int, stopped: bool = False
) -> dict[str, float]:
    """One queue in the harness's shape: its figures, and its CPU per job by side; with
    `stopped`, then the submissions' rate with the workers stopped meanwhile."""
    if kind.startswith("underway"):
        argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url,
                "--workers", "1"]  # fmt: skip
    else:
        argv = [sys.executable, __file__, "--worker", kind, url]
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    queue: Any = None
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        if kind == "underway":
            queue = UnderwayClient(url)
        elif kind in ("underway-store", "underway-calls"):
            queue = (UnderwayStoreClient if kind == "underway-store" else UnderwayCallsClient)(url)
            queue.prepare(300 + jobs * (2 if stopped else 1))  # each submission's, made first
        else:
            queue = FloorClient(kind, url)
        trips = []
        for _ in range(300):
            started = time.perf_counter()
            queue.wait(queue.submit(), 10)
            trips.append(time.perf_counter() - started)
        pids = [os.getpid(), *(p.pid for p in workers), server_pid]
        before = [_cpu(pid) for pid in pids]
        started, thread_started = time.perf_counter(), time.thread_time()
        handles = [queue.submit() for _ in range(jobs)]
        submitted = time.perf_counter() - started
        submitting = time.thread_time() - thread_started
        for handle in handles:
            queue.wait(handle, 30)
        elapsed = time.perf_counter() - started
        spent = [(_cpu(pid) - b) / jobs * 1e6 for pid, b in zip(pids, before, strict=True)]
        alone = _submitted_alone(queue, workers, jobs) if stopped else 0.0
    finally:
        if queue is not None:
            queue.close()
        for proc in workers:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return {
        "jobs/s": jobs / elapsed,
        "submit/s": jobs / submitted,
        "rt": statistics.median(trips) * 1e3,
        "client": spent[0],
        "submitting": submitting / jobs * 1e6,
        "workers": spent[1] + spent[2],
        "redis": spent[3],
        "stopped/s": alone,
    }


def _submitted_alone(queue: Any, workers: list[subprocess.Popen[str]], jobs: int) -> float:
    """`jobs` submissions' rate with the workers stopped until all are in; each job is
    then waited for, the workers let go."""
    for proc in workers:
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        handles = [queue.submit() for _ in range(jobs)]
        rate = jobs / (time.perf_counter() - started)
    finally:
        for proc in workers:
            os.kill(proc.pid, signal.SIGCONT)
    for handle in handles:
        queue.wait(handle, 30)
    return rate


KINDS = ("underway", "underway-store", "underway-calls", "promises", "status", "bare")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--kinds", default=",".join(KINDS), help="the queues to run, in turn")
    parser.add_argument(
        "--stopped", action="store_true", help="also time submissions with the workers stopped"
    )
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(*args.worker)
        return
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown queues: {', '.join(sorted(unknown))} (known: {', '.join(KINDS)})")
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with RedisServer() as server:
        print(f"harness shape: 2 worker processes x 1 thread, {args.jobs:,} jobs a round, "
              f"{args.rounds} rounds, the queues interleaved")  # fmt: skip
        head = f"{'queue':<14} {'jobs/s':>7} {'submit/s':>8} {'rt p50':>8} "
        head += f"{'client':>7} {'(subm)':>6} {'workers':>8} {'redis':>6} {'all':>5}"
        print(head + (f" {'stopped/s':>9}" if args.stopped else "") + "  (CPU us per job)")
        for _ in range(args.rounds):
            for kind in kinds:
                redis.Redis.from_url(server.url).flushdb()
                r = one_round(kind, server.url, server.pid, args.jobs, args.stopped)
                results[kind].append(r)
                print(f"{kind:<14} {r['jobs/s']:>7,.0f} {r['submit/s']:>8,.0f} "
                      f"{r['rt']:>6.2f}ms {r['client']:>7.0f} {r['submitting']:>6.0f} "
                      f"{r['workers']:>8.0f} {r['redis']:>6.0f} "
                      f"{r['client'] + r['workers'] + r['redis']:>5.0f}"
                      + (f" {r['stopped/s']:>9,.0f}" if args.stopped else ""),
                      flush=True)  # fmt: skip
    median = {
        kind: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for kind, rows in results.items()
    }
    ours = median.get("underway")
    print("medians, and underway's ratio to each minimal queue (jobs/s, submit/s, round "
          "trip" + (", stopped/s" if args.stopped else "") + "; round trip: below 1 is "
          "faster, the others above 1)")  # fmt: skip
    for kind in kinds:
        m = median[kind]
        line = (f"{kind:<14} {m['jobs/s']:>7,.0f} jobs/s {m['submit/s']:>7,.0f} submit/s "
                f"rt {m['rt']:.2f} ms")  # fmt: skip
        if args.stopped:
            line += f" {m['stopped/s']:>7,.0f} stopped/s"
        if ours is not None and kind != "underway":
            ratio = ours["submit/s"] / m["submit/s"]
            line += (f"  underway/{kind}: {ours['jobs/s'] / m['jobs/s']:.2f}, "
                     f"{ratio:.2f}, {ours['rt'] / m['rt']:.2f}")  # fmt: skip
            if args.stopped:
                line += f", {ours['stopped/s'] / m['stopped/s']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
