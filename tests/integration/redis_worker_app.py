"""A worker process for the Redis fault tests and the Redis benchmark.

    python -m tests.integration.redis_worker_app REDIS_URL [--log DIR] [--lease S]
        [--workers N] [--drain S] [--janitor S] [--idle-start]

Builds `Underway(REDIS_URL)` with a few tasks, starts its workers, prints `ready`,
and runs until SIGTERM (or SIGINT), then stops them (running jobs get `--drain`
seconds, then are handed back) and exits 0.

Tasks that take a `token` append `<event> <token> <pid>` lines to `<DIR>/runs.log`
(one small O_APPEND write each, so lines of several processes never interleave):
`start` when a run begins and `done` when it completes, so a test can count runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from underway import Job, Underway

LOG_NAME = "runs.log"


def build_app(
    url: str, *, lease: float = 30.0, workers: int = 4, log_dir: str | None = None
) -> Underway:
    uw = Underway(url, lease=lease, workers=workers)
    log_path = os.path.join(log_dir, LOG_NAME) if log_dir else None

    def note(event: str, token: int) -> None:
        if log_path is None:
            return
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {token} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    @uw.task
    def noop() -> None:
        return None

    @uw.task(retries=2)
    def record(token: int) -> int:
        note("start", token)
        note("done", token)
        return token

    @uw.task(retries=2, cancel_grace=5.0)
    def slow(job: Job, token: int, seconds: float = 1.0) -> dict[str, Any]:
        note("start", token)
        if job.wait_cancelled(seconds):
            note("stopped", token)
            job.check_cancelled()
        note("done", token)
        return {"token": token, "pid": os.getpid()}

    return uw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="redis_worker_app")
    parser.add_argument("url")
    parser.add_argument("--log", default=None)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--drain", type=float, default=30.0)
    parser.add_argument("--janitor", type=float, default=0.5)
    parser.add_argument(
        "--idle-start",
        action="store_true",
        help="print `loaded`, then start the workers when a line comes on stdin (benchmarks)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    uw = build_app(args.url, lease=args.lease, workers=args.workers, log_dir=args.log)
    if args.idle_start:
        uw.store.ping()
        print("loaded", flush=True)
        sys.stdin.readline()
    uw.start(janitor_interval=args.janitor)
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    uw.stop(drain=args.drain)
    uw.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
