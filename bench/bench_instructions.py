"""Instructions per job on the embedded SQLite store's hot paths, counted by callgrind.

    python bench/bench_instructions.py [--jobs 2000] [--batches 1,16] [--repeat 2]
        [--redis | --floor | --lua-costs]

Wall-clock figures on a shared 2-core machine move by a third from run to run, which
hides a change of a few percent. `valgrind --tool=callgrind` counts the instructions a
process executes instead: for one thread doing the same work, two runs agree to within
~0.2%. Each path runs single-threaded in a child process under callgrind, once with
`--jobs` jobs and once without the part measured (start-up, imports, the store's
opening; and for the end + claim path, the queue's filling in bulk); the difference
over the jobs is what one job costs:

- submit: `uw.submit("noop")` on a store with no worker running (after one submission
  made in both runs, which opens the store);
- end + claim, batch B: a worker's store call that writes the ends of the B jobs it
  ran and claims the next B (`apply_and_claim`), draining a queue filled beforehand;
- worker: the whole of a job's way through an embedded worker with one slot (claim,
  run, end: the store call above and the worker's own bookkeeping), draining a queue
  filled beforehand, minus the same run that fills the queue and starts no worker;
- round trip: a job submitted to an embedded worker of two idle slots and waited for,
  one at a time (the peers harness's embedded round-trip row): the submission claims
  it for a waiting slot, the slot runs it and writes its end, the waiter wakes; every
  thread of the process counted, after 20 round trips made in the run without jobs
  too. The process's threads are serialised under callgrind, and its timers (the
  monitor's, the checkpoint's) tick by wall time, so this count moves a little more
  than the others.

With `--floor`, the peers harness's embedded end-to-end shape instead (jobs submitted
one by one to an embedded worker of 2 slots, then each waited for; every thread
counted) beside the same shape on `bench_engine.FloorQueue`, a minimal durable SQLite
queue in Python of underway's shape: what underway's bookkeeping costs over it. Each
count is also split by the library that ran the instructions (the interpreter,
libsqlite3, libc, ...), from callgrind's own file: what is Python's, what SQLite's.

With `--redis`, the same for the Redis store's side of it: redis-server itself runs
under callgrind (started on a free port, its once-a-second housekeeping only), this
process drives it, and what is counted is the server's work per job:

- submit: one `uw.submit("noop")`'s script call;
- end + claim, batch B: the script call that writes the ends of B jobs and claims the
  next B, draining a queue filled one by one beforehand;
- round trip: a job submitted to an idle `underway` worker process of one slot and
  waited for, one at a time (the submission claims the job for the worker and wakes
  it; the worker's call writes the end, finds nothing to claim and waits again), the
  path most jobs of the peers harness's Redis rows take; minus the same run with the
  worker and none of these jobs.

With `--lua-costs`, what pieces of the Redis store's Lua cost redis-server, each as
calls with 32 arguments (or reads of a job hash of 19 fields) minus the same server
without the calls: a script holding the claim's helpers with an empty body, an empty
script, and a function of a library holding the same helpers (what the library saves
a call); `HGETALL` of the hash into Lua, and with `cjson.encode`, `table.concat` or
`cmsgpack.pack` of it; an `HMGET` of 7 of its fields and a `cjson.encode` of a 13-item
list.

Needs Debian's `valgrind` (`apt-get install valgrind`). Prints one line per path.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_path(path: str, jobs: int, batch: int) -> None:
    """The work one measurement counts (in the child process, under callgrind)."""
    from underway import Underway

    if path == "end to end, floor":
        _floor_queue(jobs)
        return
    with tempfile.TemporaryDirectory() as folder:
        uw = Underway(f"sqlite:///{folder}/bench.db", workers=1 if path == "worker" else 2)

        @uw.task
        def noop() -> int:
            return 1

        if path == "round trip":
            uw.start()
            for _ in range(20 + jobs):
                uw.submit("noop").wait(600)
            uw.close()
            return
        if path == "end to end":
            uw.start()
            uw.submit("noop").wait(600)
            handles = [uw.submit("noop") for _ in range(jobs)]
            for handle in handles:
                handle.wait(600)
            uw.close()
            return
        if path == "submit":
            # One submission first, in the run with no jobs too: opening the store (its
            # schema, threads and first statements) is not any job's cost.
            uw.submit("noop")
            for _ in range(jobs):
                uw.submit("noop")
            uw.close()
            return
        for start in range(0, jobs, 500):
            uw.submit_many("noop", [{} for _ in range(min(500, jobs - start))])
        if path == "fill":
            uw.close()
            return
        if path in ("worker", "worker-fill"):
            last = uw.submit("noop")  # queued behind the others: it ends last
            if path == "worker":
                uw.start()
                last.wait(600)
            uw.close()
            return
        _drain(uw, batch)
        uw.close()


def _floor_queue(jobs: int) -> None:
    """The end-to-end path on `bench_engine.FloorQueue`, a minimal durable SQLite
    queue in Python of underway's shape (2 threads claiming up to 16)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_engine import FloorQueue

    with tempfile.TemporaryDirectory() as folder:
        queue = FloorQueue(f"{folder}/floor.db")
        queue.wait(queue.submit())
        ids = [queue.submit() for _ in range(jobs)]
        for job_id in ids:
            queue.wait(job_id)
        queue.close()


def instructions(path: str, jobs: int, batch: int) -> int:
    """Instructions the child process executed for `path` with `jobs` jobs."""
    return sum(instructions_by_object(path, jobs, batch).values())


def instructions_by_object(path: str, jobs: int, batch: int) -> dict[str, int]:
    """`instructions`, split by the file (the interpreter, a library) that ran them."""
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
             sys.executable, __file__, "--run", path, "--jobs", str(jobs),
             "--batches", str(batch)],
            cwd=ROOT, capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        split = _by_object(Path(folder) / "out")
    total = _collected(out.stderr)
    if sum(split.values()) != total:
        raise RuntimeError(f"callgrind's file holds {sum(split.values())}, it said {total}")
    return split


def _by_object(path: Path) -> dict[str, int]:
    """Self cost (instructions) by object file, from a callgrind output file: each
    cost line counts for the object of the function it is under (`ob=`); the lines
    after a `calls=` line are the call's inclusive cost, counted in the callee."""
    names: dict[str, str] = {}
    totals: dict[str, int] = {}
    current = "?"
    after_call = False
    with path.open(errors="replace") as lines:
        for line in lines:
            if line.startswith(("ob=", "cob=")):
                found = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if found is None:
                    continue
                if found.group(2):
                    names[found.group(1)] = found.group(2)
                if line.startswith("ob="):
                    current = names.get(found.group(1), "?")
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                fields = line.split()
                if len(fields) > 1:
                    totals[current] = totals.get(current, 0) + int(fields[1])
    return totals


def _short(name: str) -> str:
    """A library's name without its folder and version: libsqlite3, libpython3.11."""
    base = os.path.basename(name)
    return re.sub(r"(\.cpython-[^.]+)?\.so(\.[\d.]+)?$", "", base) or name


def _drain(uw: Any, batch: int) -> None:
    """Claim the queue's jobs `batch` at a time, writing each batch's ends with the next
    claim, as a worker's slot does with short jobs."""
    from underway import State, lifecycle
    from underway.records import Fence

    store, tasks = uw.store, uw.task_names
    previous: list[Any] = []
    while True:
        now = time.time()
        ends = [
            lifecycle.ended(r, fence=Fence(worker="bench", attempt=r.attempt),
                            state=State.SUCCEEDED, result=1, now=now, keep_for=3600.0,
                            started_at=r.started_at)
            for r in previous
        ]  # fmt: skip
        _, claimed = store.apply_and_claim(
            ends, worker="bench", tasks=tasks, limits={}, lease=30.0, now=now, max_jobs=batch
        )
        if not claimed and not previous:
            return
        previous = list(claimed)


def _collected(err: str) -> int:
    """The instructions callgrind counted, from what it wrote to stderr."""
    found = re.search(r"Collected : (\d+)", err)
    if found is None:
        raise RuntimeError(f"no count from callgrind:\n{err[-2000:]}")
    return int(found.group(1))


def _answering(client: Any, server: subprocess.Popen[str]) -> None:
    """Wait until redis-server, slow to start under valgrind, answers PING."""
    import redis

    deadline = time.monotonic() + 120
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("redis-server did not start under valgrind") from None
            time.sleep(0.1)


def _drive_redis(url: str, server: subprocess.Popen[str], path: str, jobs: int, batch: int) -> None:
    """The measured run against the server under callgrind, then its shutdown (which
    makes callgrind write its count)."""
    import redis

    from tests.integration.redis_worker_app import build_app

    client: redis.Redis[str] = redis.Redis.from_url(url)
    _answering(client, server)
    if path == "round trip":
        _round_trips(url, jobs)
    else:
        uw = build_app(url)
        uw.submit("noop")  # scripts loaded, connections open, in every run
        _drain(uw, 1)
        for _ in range(jobs):
            uw.submit("noop")
        if path == "drain":
            _drain(uw, batch)
        uw.close()
    try:
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    client.close()


def _round_trips(url: str, jobs: int) -> None:
    """`jobs` jobs submitted one at a time to an idle worker process and waited for,
    after 20 that warm both sides up (made in the run without jobs too)."""
    from tests.integration.redis_worker_app import build_app

    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    uw = build_app(url, workers=1)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for _ in range(20 + jobs):
            uw.submit("noop").wait(timeout=60)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        uw.close()


def redis_instructions(path: str, jobs: int, batch: int) -> int:
    """Instructions redis-server executed while this process submitted `jobs` jobs and,
    for `drain`, claimed and ended them `batch` at a time; for `round trip`, while
    `jobs` round trips to an idle worker process ran (see `_round_trips`)."""
    from tests.support.services import free_port

    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
             "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", folder,
             "--save", "", "--appendonly", "no", "--hz", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _drive_redis(f"redis://127.0.0.1:{port}/0", server, path, jobs, batch)
            _, err = server.communicate(timeout=120)
        finally:
            if server.poll() is None:  # a failure on the way: no count, no server left
                server.kill()
                server.wait()
    return _collected(err)


def redis_main(jobs: int, batches: str, repeat: int) -> None:
    print(f"redis-server's instructions per job ({jobs} jobs, minus the same run without the part)")
    paths = [("submit", 1)] + [("end + claim", int(b)) for b in batches.split(",")]
    paths.append(("round trip", 1))
    for name, batch in paths:
        counts = []
        for _ in range(repeat):
            if name == "submit":
                full, empty = redis_instructions("fill", jobs, 1), redis_instructions("fill", 0, 1)
            elif name == "round trip":
                full = redis_instructions(name, jobs, 1)
                empty = redis_instructions(name, 0, 1)
            else:
                full = redis_instructions("drain", jobs, batch)
                empty = redis_instructions("fill", jobs, batch)
            counts.append((full - empty) / jobs)
        label = name if name != "end + claim" else f"{name}, batch {batch}"
        print(f"  {label:<22} " + " / ".join(f"{c:,.0f}" for c in counts))


_JOB_HASH = {
    "id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "task": "noop", "queue": "default", "priority": "0",
    "state": "succeeded", "params": "{}", "max_attempts": "1",
    "created_at": "1765061234.123456", "run_at": "1765061234.123456", "keep_for": "86400.0",
    "attempt": "1", "worker": "w-abcdef", "started_at": "1765061234.123999",
    "output_count": "0", "out_top": "1", "reply": "p-0123456789", "result": "null",
    "finished_at": "1765061234.124111", "expires_at": "1765147634.124111",
}  # fmt: skip


def _lua_count(load: Any, call: Any, n: int) -> int:
    """Instructions of a redis-server under callgrind that ran `load(client)` and then
    `call(client, loaded)` n times (and its own start and end)."""
    import redis

    from tests.support.services import free_port

    port = free_port()
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "redis-server",
         "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--hz", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client: redis.Redis[bytes] = redis.Redis(port=port)
    try:
        _answering(client, server)
        client.hset("j", mapping=_JOB_HASH)
        loaded = load(client)
        for _ in range(n):
            call(client, loaded)
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        _, err = server.communicate(timeout=120)
    finally:
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()
    return _collected(err)


def lua_costs_main(calls: int) -> None:
    from underway.stores import redis_scripts

    args = ["underway:v2:", "1.5"] + ["x"] * 30
    helpers = redis_scripts.APPLY_AND_CLAIM.text.split("local worker, lease_until")[0]
    library = (
        "#!lua name=bench\nlocal ARGV\n"
        + helpers.replace("local P = ARGV[1]", "local P = 'underway:v2:'").replace(
            "local NOW = ARGV[2]", "local NOW = '1'"
        )
        + "\nredis.register_function('f', function(_, a) ARGV = a; NOW = a[2]; return 1 end)\n"
    )

    def script(text: str) -> tuple[Any, Any]:
        return (lambda c: c.script_load(text), lambda c, sha: c.evalsha(sha, 0, *args))

    def read(body: str) -> tuple[Any, Any]:
        return (lambda c: c.script_load(body), lambda c, sha: c.evalsha(sha, 0))

    fields7 = "'started_at', 'run_at', 'cancel_requested', 'output_count', 'out_top', "
    fields7 += "'progress', 'meta'"
    pieces: list[tuple[str, tuple[Any, Any]]] = [
        ("script: the claim's helpers, empty body", script(helpers + "return 1")),
        ("script: empty", script("return 1")),
        ("function: the same helpers in its library",
         (lambda c: c.function_load(library), lambda c, _: c.fcall("f", 0, *args))),
        ("HGETALL of 19 fields into Lua", read("local r = redis.call('HGETALL', 'j') return 1")),
        ("  + cjson.encode", read("local r = redis.call('HGETALL', 'j') "
                                  "local d = cjson.encode(r) return 1")),
        ("  + table.concat", read("local r = redis.call('HGETALL', 'j') "
                                  "local d = table.concat(r, ',') return 1")),
        ("  + cmsgpack.pack", read("local r = redis.call('HGETALL', 'j') "
                                   "local d = cmsgpack.pack(r) return 1")),
        ("HMGET of 7 + cjson.encode of 13", read(
            f"local r = redis.call('HMGET', 'j', {fields7}) local d = cjson.encode("
            "{'succeeded', '1', 'null', false, '1.5', '2.5', r[1], r[2], r[3], r[4], r[5], "
            "r[6], r[7]}) return 1")),
        ("empty read script", read("return 1")),
    ]  # fmt: skip
    print(f"redis-server's instructions per call ({calls} calls, minus a server without them)")
    for label, (load, call) in pieces:
        each = (_lua_count(load, call, calls) - _lua_count(load, call, 0)) / calls
        print(f"  {label:<44} {each:>9,.0f}")


def floor_main(jobs: int, repeat: int) -> None:
    """The peers harness's embedded end-to-end shape (jobs submitted one by one to 2
    slots, then each waited for), every thread of the process counted, against the
    same shape on `bench_engine.FloorQueue`."""
    print(f"instructions per job end to end ({jobs} jobs, minus the same run with none)")
    for _ in range(repeat):
        split: dict[str, dict[str, float]] = {}
        for p in ("end to end", "end to end, floor"):
            full, empty = instructions_by_object(p, jobs, 1), instructions_by_object(p, 0, 1)
            split[p] = {
                _short(o): (full.get(o, 0) - empty.get(o, 0)) / jobs for o in full.keys() | empty
            }
        ours, floor = (sum(split[p].values()) for p in split)
        print(
            f"  underway {ours:,.0f}, a minimal durable queue {floor:,.0f}; "
            f"ratio {ours / floor:.2f}"
        )
        for p, label in (("end to end", "underway"), ("end to end, floor", "minimal")):
            parts = sorted(split[p].items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{name} {count:,.0f}" for name, count in parts if count >= 1000)
            print(f"    {label}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--batches", default="1,16", help="end + claim batch sizes")
    parser.add_argument("--repeat", type=int, default=2, help="counts per path (all shown)")
    parser.add_argument("--redis", action="store_true", help="count redis-server's side")
    parser.add_argument(
        "--floor", action="store_true", help="end to end against a minimal durable queue"
    )
    parser.add_argument(
        "--lua-costs", action="store_true", help="what pieces of the Redis store's Lua cost"
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lua_costs:
        lua_costs_main(args.jobs)
        return
    if args.redis:
        redis_main(args.jobs, args.batches, args.repeat)
        return
    if args.run:
        run_path(args.run, args.jobs, int(args.batches))
        return
    if args.floor:
        floor_main(args.jobs, args.repeat)
        return
    paths = [("submit", 1)] + [("end + claim", int(b)) for b in args.batches.split(",")]
    paths += [("worker", 0), ("round trip", 0)]
    print(f"instructions per job ({args.jobs} jobs, minus the same run with none)")
    for name, batch in paths:
        path = {"submit": "submit", "worker": "worker", "round trip": "round trip"}.get(
            name, "drain"
        )
        counts = []
        for _ in range(args.repeat):
            full = instructions(path, args.jobs, batch)
            # The drain's queue is filled in bulk first: that part is left out too.
            empty = instructions("fill", args.jobs, batch) if path == "drain" else 0
            if path == "worker":
                empty = instructions("worker-fill", args.jobs, batch)
            empty = empty or instructions(path, 0, batch)
            counts.append((full - empty) / args.jobs)
        label = name if name in ("submit", "worker", "round trip") else f"{name}, batch {batch}"
        print(f"  {label:<22} " + " / ".join(f"{c:,.0f}" for c in counts))


if __name__ == "__main__":
    main()
