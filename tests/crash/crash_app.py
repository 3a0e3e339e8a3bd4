"""The app the crash tests run in real worker processes, and submit to.

    python -m tests.crash.crash_app STORE_URL [--lease S] [--workers N] [--janitor S]

Builds the app on STORE_URL, starts its embedded workers, prints `ready` and runs until
SIGTERM (or SIGINT); then stops them (running jobs get `--drain` seconds) and exits 0.
A process may also die before it prints `ready`: the poison task kills its own worker.

Only the public API is used (`Underway`, `uw.task`, `uw.start`, `uw.stop`), so the tests
keep working whatever the engine does inside.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

from underway import Job, Underway


def note(path: str, line: str) -> None:
    """Append one line to `path` and make it durable before going on (the task may be
    about to kill its own process)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def build_app(url: str, *, lease: float = 1.0, workers: int = 4) -> Underway:
    uw = Underway(url, lease=lease, workers=workers)

    @uw.task
    def noop() -> None:
        """A short job of the backlog the poison job hides in."""
        return None

    @uw.task
    def clock() -> float:
        """The time the job started, by the clock of its worker's machine (a benchmark
        splits round trips at it)."""
        return time.time()

    @uw.task(retries=0)
    def poison(starts: str) -> None:
        """Kills the worker process that runs it, after noting the start."""
        note(starts, str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    @uw.task(retries=3)
    def count_to_ten(job: Job, n: int, pause: float = 0.01, hold_at: int | None = None) -> int:
        """Emits 0..9 with small pauses between them. With `hold_at`, a first attempt
        holds before item `hold_at` until it is asked to stop (at most a minute), so
        that its process can be killed in the middle of it however long the test
        takes to get there."""
        for i in range(10):
            if i == hold_at and job.attempt == 1:
                job.wait_cancelled(60)
            job.emit(i)
            time.sleep(pause)
        return n

    @uw.task(retries=1, cancel_grace=60.0)
    def pid_stream(
        job: Job, log: str, gate: str, items: int = 20, pause: float = 0.05, hold_at: int = 5
    ) -> dict[str, Any]:
        """Emits {pid, i} items and reports progress naming its pid; deaf to stop
        requests, so a run that lost its lease still goes on to the end. A retry
        holds after item `hold_at` until the file `gate` exists (at most a minute)."""
        pid = os.getpid()
        note(log, f"start {pid} {job.attempt}")
        for i in range(items):
            job.emit({"pid": pid, "i": i})
            job.progress(i + 1, total=items, message=f"pid {pid}")
            time.sleep(pause)
            if job.attempt > 1 and i == hold_at:
                note(log, f"hold {pid}")
                deadline = time.monotonic() + 60
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
        note(log, f"done {pid}")
        return {"pid": pid}

    return uw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_app")
    parser.add_argument("url")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--janitor", type=float, default=0.2)
    parser.add_argument("--drain", type=float, default=10.0)
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    uw = build_app(args.url, lease=args.lease, workers=args.workers)
    uw.start(args.workers, janitor_interval=args.janitor)
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    uw.stop(drain=args.drain)
    uw.close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
