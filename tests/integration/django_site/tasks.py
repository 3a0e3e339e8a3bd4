"""The test site's tasks, found at start-up by `underway.django`."""

from __future__ import annotations

from tests.support.http_server import Gates
from underway import Job
from underway.django import task

# Opened by the in-process tests; a subprocess never waits on them.
gates = Gates()


@task
def add(x: int, y: int = 1) -> int:
    """Add two integers."""
    return x + y


@task
def stepper(job: Job, steps: int, gate: str) -> dict[str, int]:
    """One output item and progress per step; step i waits for the gate `gate:i`."""
    for i in range(steps):
        event = gates.get(f"{gate}:{i}")
        while not event.wait(0.02):
            job.check_cancelled()
        job.emit({"i": i})
        job.progress(i + 1, total=steps)
    return {"steps": steps}
