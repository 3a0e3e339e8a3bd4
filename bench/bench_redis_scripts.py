"""Redis's own time in underway's scripts, per job, from a replay of a real run.

    python bench/bench_redis_scripts.py [--jobs 2000] [--rounds 5] [--against DIR]

Records a run in the peer harness's Redis shape (2 worker processes of one slot,
`--jobs` no-op jobs submitted one by one, then each waited for) on its own
redis-server: every command a client sent that changes data, in order, read off
`MONITOR` from before the workers start (the scripts' calls, and the few plain
commands beside them). Then replays them, `--rounds` times, on a second, idle
redis-server (emptied before each replay, with one client subscribed to every
channel, as the run's processes were), and reads from `INFO commandstats` how long
Redis spent in the scripts and in the commands they call. The same calls in the same
order each time: Redis's CPU for the scripts alone, with no network, no client and no
wait for a CPU. Interleaved with them, the same calls made to functions that do
nothing: what a script call with those arguments costs before its code runs.

Prints, per job (medians of the rounds): the scripts' time; the do-nothing calls'
time and the commands the scripts call (with their own time), each with its ratio to
the scripts'. The rest is the Lua code: its strings and tables, each command's way in
and out, replies turned into Lua values and the scripts' results into replies.

`--against DIR` replays the same calls, interleaved, with the scripts of another
checkout of underway (its `underway/stores/redis_scripts.py`; their arguments must be
the same) and prints this checkout's time as a ratio to that one's.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from tests.integration.redis_worker_app import build_app  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
from underway.stores import redis_scripts  # noqa: E402

_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("a"): 7, ord("b"): 8}


def _unquote(text: bytes) -> bytes:
    """One argument of a MONITOR line, as the client sent it."""
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] != 0x5C:
            out.append(text[i])
            i += 1
        elif text[i + 1] == ord("x"):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(_ESCAPES.get(text[i + 1], text[i + 1]))
            i += 2
    return bytes(out)


_END = b"bench_redis_scripts: the end of the run"

# Commands of the run not replayed: they read, wait, or manage the connection.
_NOT_REPLAYED = {
    b"MONITOR", b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING",
    b"INFO", b"CLIENT", b"HELLO", b"ECHO", b"FUNCTION", b"SCRIPT", b"SELECT", b"CONFIG", b"GET",
    b"HGETALL", b"HMGET", b"EXISTS", b"ZRANGE", b"ZCARD", b"TIME",
}  # fmt: skip


def record(url: str, jobs: int) -> list[list[bytes]]:
    """The commands of one harness-shaped run that change data, in the order Redis ran
    them, from before the workers start (an idle worker's registration decides where a
    submission goes); the scripts' own commands are left out (they are the scripts')."""
    calls: list[list[bytes]] = []
    monitor = redis.Redis.from_url(url).connection_pool.make_connection()
    monitor.send_command("MONITOR")
    assert monitor.read_response() in (b"OK", "OK")
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            try:
                line = bytes(monitor.read_response())
            except (redis.ConnectionError, OSError):
                return
            if b" lua] " in line[:60]:
                continue
            args = [_unquote(m) for m in _QUOTED.findall(line)]
            if args[:2] == [b"ECHO", _END]:
                return
            if args and args[0].upper() not in _NOT_REPLAYED:
                calls.append(args)

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    argv = [sys.executable, "-m", "tests.integration.redis_worker_app", url, "--workers", "1"]
    workers = [
        subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    uw = build_app(url, workers=1)
    try:
        for proc in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        uw.submit("noop").wait(timeout=10)
        handles = [uw.submit("noop") for _ in range(jobs)]
        for handle in handles:
            handle.wait(timeout=60)
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
        uw.close()
        with redis.Redis.from_url(url) as client:
            client.echo(_END)  # the run's last line on MONITOR
        reader.join(timeout=30)
        done.set()
        monitor.disconnect()
    return calls


def _do_nothing(calls: list[list[bytes]]) -> str:
    """A library of the recorded calls' functions, each returning at once."""
    names = {c[1].split(b"_", 2)[2].decode() for c in calls if c[0].upper() == b"FCALL"}
    return "#!lua name=bench_nothing\n" + "".join(
        f"redis.register_function('bench_nothing_{n}', function() return 0 end)\n"
        for n in sorted(names)
    )


def _scripts_of(checkout: Path) -> Any:
    """Another checkout's `redis_scripts` module (it imports this checkout's keys)."""
    path = checkout / "underway" / "stores" / "redis_scripts.py"
    text = path.read_text().replace(
        "from .redis_keys import", "from underway.stores.redis_keys import"
    )
    module = types.ModuleType("other_redis_scripts")
    sys.modules[module.__name__] = module  # (its dataclasses look themselves up there)
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def _renamed(call: list[bytes], name: str) -> list[bytes]:
    """A recorded command, its function (if it calls one) taken from the library `name`."""
    if call[0].upper() != b"FCALL":
        return call
    function = call[1].split(b"_", 2)[2]
    return [call[0], f"{name}_".encode() + function, *call[2:]]


def replay(
    client: redis.Redis[bytes], calls: list[list[bytes]], library: str, name: str
) -> dict[str, float]:
    """Run `calls` with the functions of `library` (named `name`) on an emptied server;
    Redis's microseconds in the scripts, and the calls and microseconds of the commands
    the scripts call (`INFO commandstats`, which costs nothing per command: a slow log
    of every command would add its own work to the scripts' time)."""
    client.function_flush()
    client.function_load(library)
    client.flushall()
    client.config_resetstat()
    conn = client.connection_pool.get_connection()
    try:
        for start in range(0, len(calls), 50):
            chunk = [_renamed(c, name) for c in calls[start : start + 50]]
            conn.send_packed_command(conn.pack_commands(chunk))
            for _ in chunk:
                conn.read_response()
    finally:
        client.connection_pool.release(conn)
    stats = client.info("commandstats")
    ours = ("cmdstat_fcall", "cmdstat_function", "cmdstat_flushall", "cmdstat_config",
            "cmdstat_info", "cmdstat_hello", "cmdstat_ping")  # fmt: skip
    plain = collections.Counter(c[0].decode().lower() for c in calls if c[0].upper() != b"FCALL")
    inner = {k: v for k, v in stats.items() if not k.startswith(ours)}
    return {
        "scripts": float(stats["cmdstat_fcall"]["usec"]),
        # (the run's few plain commands, a few microseconds in all, counted in)
        "commands": sum(float(v["usec"]) for v in inner.values()),
        "command calls": sum(float(v["calls"]) for v in inner.values()) - sum(plain.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout of underway")
    args = parser.parse_args()
    with RedisServer() as live:
        calls = record(live.url, args.jobs)
    scripts = [c[1].decode().split("_", 2)[2] for c in calls if c[0].upper() == b"FCALL"]
    jobs = scripts.count("enqueue")
    kinds = collections.Counter(scripts)
    others = collections.Counter(c[0].decode() for c in calls if c[0].upper() != b"FCALL")
    print(f"recorded: {len(scripts):,} script calls for {jobs:,} jobs ({dict(kinds)}); "
          f"other commands {dict(others)}")  # fmt: skip
    libraries = {"this": redis_scripts._library("bench_this"), "nothing": _do_nothing(calls)}
    if args.against is not None:
        libraries["that"] = _scripts_of(args.against)._library("bench_that")
    runs: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with RedisServer() as idle:
        client: redis.Redis[bytes] = redis.Redis.from_url(idle.url)
        follower = client.pubsub()
        follower.psubscribe("*")
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                follower.get_message(timeout=0.5)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            for _ in range(args.rounds):
                for which, library in libraries.items():
                    runs[which].append(replay(client, calls, library, f"bench_{which}"))
        finally:
            stop.set()
            reader.join(timeout=5)
            follower.close()
            client.close()
    per_job: dict[str, dict[str, float]] = {}
    for which, got in runs.items():
        keys = sorted({k for r in got for k in r})
        per_job[which] = {k: statistics.median(r.get(k, 0.0) for r in got) / jobs for k in keys}
    print(f"Redis's time per job, µs (medians of {args.rounds} replays):")
    nothing = per_job.pop("nothing")["scripts"]
    for which, figures in per_job.items():
        scripts, commands = figures["scripts"], figures["commands"]
        print(
            f"  {which}: the scripts {scripts:.1f}; the same calls to functions that do "
            f"nothing {nothing:.1f} ({nothing / scripts:.2f}x); the "
            f"{figures['command calls']:.1f} commands the scripts call {commands:.1f} "
            f"({commands / scripts:.2f}x)"
        )
    if "that" in per_job:
        this, that = per_job["this"], per_job["that"]
        print(
            f"  this checkout against {args.against}: the scripts' time "
            f"{this['scripts'] / that['scripts']:.2f}x, their commands "
            f"{this['command calls'] / that['command calls']:.2f}x as many"
        )


if __name__ == "__main__":
    main()
