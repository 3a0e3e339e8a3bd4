"""Task functions for the process and subprocess executor tests.

Child processes import a task's function by module and name, so these live at the top
level of an importable module. Tests register them with their own app
(`uw.task(executor="process", ...)(tasks.square)`); `cube` shows the usual form, a
module-level `@app.task`.

Run as a script, this file checks that tasks defined in `__main__` work too: it
registers them on both child-process executors and prints their results as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

from underway import Job, Underway

module_app = Underway("memory://", workers=1)

LONG = 60.0  # far longer than any test waits: a task that gets this far was not stopped


@module_app.task(executor="process")
def cube(n: int) -> int:
    return n**3


def square(job: Job, n: int) -> dict[str, int]:
    job.progress(1, total=1)
    return {"square": n * n, "pid": os.getpid()}


def stream(job: Job, count: int) -> int:
    for i in range(count):
        job.emit({"i": i})
        if i % 100 == 0:
            job.log(f"at {i}")
        job.progress(i + 1, total=count, message=f"{i + 1}/{count}")
    return count


def count_up(n: int) -> Iterator[int]:
    yield from range(n)


async def async_square(job: Job, n: int) -> int:
    await asyncio.sleep(0)
    job.emit("awaited")
    return n * n


def cooperative(job: Job) -> str:
    job.emit("started")
    while not job.wait_cancelled(0.02):
        pass
    job.check_cancelled()
    return "not reached"


def stubborn(job: Job) -> str:
    job.emit({"started": os.getpid()})
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:  # ignores job.cancelled on purpose
        time.sleep(0.05)
    return "not stopped"


def stubborn_family(job: Job) -> str:
    """Ignores cancellation and SIGTERM, and so does a grandchild in its process group."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sh", "-c", f"trap '' TERM; exec sleep {LONG}"])
    job.emit({"child": os.getpid(), "grandchild": grandchild.pid})
    deadline = time.monotonic() + LONG
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return "not stopped"


def calls_sys_exit(job: Job, code: int) -> None:
    sys.exit(code)


def calls_os_exit(job: Job, code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


def aborts(job: Job) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raises(job: Job, message: str) -> None:
    raise ValueError(message)


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) is dead."""
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def prints(job: Job, text: str) -> str:
    # The child's stdout is not the channel to the worker: printing must not break it.
    print(text, flush=True)
    job.emit(text)
    return text


if __name__ == "__main__":
    app = Underway("memory://", workers=2)
    for kind in ("process", "subprocess"):
        app.task(name=f"square_{kind}", executor=kind)(square)
    app.start()
    try:
        results = {
            kind: app.submit(f"square_{kind}", n=7).wait(timeout=30)["square"]
            for kind in ("process", "subprocess")
        }
    finally:
        app.stop()
    print(json.dumps(results))
