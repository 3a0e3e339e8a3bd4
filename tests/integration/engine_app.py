"""A small app for tests that run the engine in real worker processes.

`python -m tests.integration.engine_app` starts embedded workers on the store named
by UNDERWAY_TEST_STORE and runs until SIGTERM/SIGINT, then stops cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from underway import Job, Underway

uw = Underway(
    os.environ.get("UNDERWAY_TEST_STORE", "memory://"),
    lease=float(os.environ.get("UNDERWAY_TEST_LEASE", "30")),
)
RUN_LOG = os.environ.get("UNDERWAY_TEST_LOG", "")


@uw.task
def record_run(n: int) -> int:
    """Append "n pid" to the run log: the test counts how often each job ran."""
    fd = os.open(RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return n


@uw.task(retries=1)
def hang_once(job: Job, marker: str) -> str:
    """Hangs on its first attempt (so the test can kill the worker); returns on the next."""
    if job.attempt == 1:
        Path(marker).write_text(str(os.getpid()))
        job.wait_cancelled(600)
        job.check_cancelled()
    return f"attempt {job.attempt}"


@uw.task
def hang_always(job: Job, marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    job.wait_cancelled(600)
    job.check_cancelled()


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    uw.start(int(os.environ.get("UNDERWAY_TEST_WORKERS", "2")), janitor_interval=0.2)
    print("ready", flush=True)
    stop.wait()
    uw.stop(drain=5)
    uw.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
