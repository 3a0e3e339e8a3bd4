"""Why is my job waiting? The reason a queued job has not started, in words.

Checked in this order, the first that holds is the answer:

    scheduled          submitted with a delay: due at `until`
    retry-backoff      an attempt failed: the next one is due at `until`
    no-worker          no live worker serves the job's task (none started, or all
                       stopped): it waits until one does
    concurrency-limit  the task's `concurrency` limit is reached: it starts when a
                       running job of the task ends
    queue              due, served, under its limit: it waits for a free worker slot,
                       behind `position` jobs
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._util import rfc3339
from .records import POSITION_LIMIT, JobRecord, Waiting


def why_waiting(
    record: JobRecord,
    *,
    now: float,
    workers: Mapping[str, Sequence[str]] | None,
    limit: int | None,
    running: int | None,
) -> Waiting:
    """The reason `record` (queued) waits. `workers`: the live workers and their tasks
    (None: unknown); `limit`, `running`: the task's concurrency limit and how many of
    its jobs run now (None: no limit, or unknown)."""
    if record.run_at > now:
        if record.attempt > 0:
            return Waiting(
                reason="retry-backoff",
                message=f"attempt {record.attempt} failed; the next is due at "
                f"{rfc3339(record.run_at)}",
                until=record.run_at,
            )
        return Waiting(
            reason="scheduled",
            message=f"scheduled for {rfc3339(record.run_at)}",
            until=record.run_at,
        )
    if workers is not None and not any(record.task in tasks for tasks in workers.values()):
        return Waiting(
            reason="no-worker",
            message=f"no live worker serves task {record.task!r}: start one "
            "(underway worker, or embedded workers with uw.start())",
        )
    if limit is not None and running is not None and running >= limit:
        return Waiting(
            reason="concurrency-limit",
            message=f"task {record.task!r} runs at most {limit} at once, and {running} are running",
        )
    ahead = record.position
    if ahead is None:
        message = f"more than {POSITION_LIMIT:,} jobs ahead, waiting for a free worker slot"
    elif ahead == 0:
        message = "next in line, waiting for a free worker slot"
    else:
        message = f"{ahead} job{'s' if ahead != 1 else ''} ahead, waiting for a free worker slot"
    return Waiting(reason="queue", message=message)
