"""A worker process for the wake-channel tests: nothing but the channel wakes it.

`python -m tests.integration.wake_worker DB` runs two embedded worker slots on the
SQLite file DB with the fallback poll and the idle poll both an hour long, so a job
submitted by another process starts only if a datagram wakes an idle slot. It prints
"idle" each time a slot goes to sleep waiting for work, and stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from underway import Underway
from underway.stores.sqlite import SQLiteStore

HOUR = 3600.0


class _Store(SQLiteStore):
    def wait_for_work(self, seen: int, timeout: float) -> int:
        os.write(1, b"idle\n")  # one write: lines from two slots never interleave
        return super().wait_for_work(seen, timeout)


def pid() -> int:
    """The process that ran the job."""
    return os.getpid()


def main() -> None:
    uw = Underway(_Store(sys.argv[1], fallback_interval=HOUR))
    uw.task(pid)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    uw.start(2, idle_poll=HOUR)
    stop.wait()
    uw.stop(drain=5)
    uw.close()


if __name__ == "__main__":
    main()
