"""Building records and driving jobs for the store contract tests.

State changes go the way the engine makes them: `underway.lifecycle` decides, the
store applies the decision (`store.apply`) and says whether its guard held.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from underway import lifecycle
from underway._util import dumps, new_id
from underway.records import Decision, ErrorInfo, EventKind, Fence, JobRecord, Progress, State
from underway.stores import Store

WORKER = "worker-a"
LEASE = 30.0
BOOM = ErrorInfo(type="Boom", message="it broke")
NOT_HELD: tuple[set[str], set[str]] = (set(), set())  # what `renew` answers for no live lease


def record(task: str = "t", *, now: float | None = None, **changes: Any) -> JobRecord:
    at = time.time() if now is None else now
    fields: dict[str, Any] = {
        "id": new_id(),
        "task": task,
        "params": {"n": 1},
        "created_at": at,
        "run_at": at,
        "keep_for": 3600.0,
    }
    fields.update(changes)
    return JobRecord(**fields)


def enqueue(store: Store, rec: JobRecord) -> tuple[JobRecord, bool, list[str]]:
    """`store.enqueue` with the events of a new job, as the engine calls it."""
    return store.enqueue(rec, lifecycle.submitted())


def submit(store: Store, task: str = "t", **changes: Any) -> JobRecord:
    stored, created, _ = enqueue(store, record(task, **changes))
    assert created
    return stored


def claim(
    store: Store,
    tasks: Sequence[str] = ("t",),
    *,
    worker: str = WORKER,
    now: float | None = None,
    lease: float = LEASE,
    limits: dict[str, int] | None = None,
    max_jobs: int = 1,
) -> list[JobRecord]:
    return store.claim(
        worker=worker,
        tasks=list(tasks),
        limits=limits or {},
        lease=lease,
        now=time.time() if now is None else now,
        max_jobs=max_jobs,
    )


def claim_one(
    store: Store,
    task: str = "t",
    *,
    worker: str = WORKER,
    now: float | None = None,
    lease: float = LEASE,
) -> JobRecord:
    got = claim(store, [task], worker=worker, now=now, lease=lease)
    assert len(got) == 1, got
    return got[0]


def fence(claimed: JobRecord) -> Fence:
    """The fence a worker holds `claimed` under (the record its claim returned)."""
    assert claimed.worker is not None
    return Fence(worker=claimed.worker, attempt=claimed.attempt)


def ended(
    claimed: JobRecord,
    *,
    state: State = State.SUCCEEDED,
    result: Any = None,
    error: ErrorInfo | None = None,
    now: float | None = None,
    keep_for: float = 3600.0,
    started_at: float | None = None,
    fence_: Fence | None = None,
    progress: Progress | None = None,
) -> Decision:
    """The lifecycle's decision for the end of `claimed`'s code (a failure without
    an error is a `Boom`), with the job's last `progress` when given."""
    if error is None and state is State.FAILED:
        error = BOOM
    return lifecycle.ended(
        claimed,
        fence=fence(claimed) if fence_ is None else fence_,
        state=state,
        result=result,
        error=error,
        now=time.time() if now is None else now,
        keep_for=keep_for,
        started_at=started_at,
        progress=None if progress is None else dumps(progress.to_dict()),
    )


def finish(
    store: Store,
    claimed: JobRecord,
    *,
    state: State = State.SUCCEEDED,
    result: Any = None,
    error: ErrorInfo | None = None,
    now: float | None = None,
    keep_for: float = 3600.0,
    started_at: float | None = None,
    fence_: Fence | None = None,
) -> JobRecord | None:
    """End `claimed` (the record its claim returned) under its fence; the job as it
    is then, or None when the store refused the decision."""
    at = time.time() if now is None else now
    decision = ended(
        claimed,
        state=state,
        result=result,
        error=error,
        now=at,
        keep_for=keep_for,
        started_at=started_at,
        fence_=fence_,
    )
    (applied,) = store.apply([decision], at)
    return store.get(claimed.id) if applied else None


def cancel(store: Store, job_id: str, now: float | None = None) -> JobRecord | None:
    """Ask for a cancel as the engine does: decide on the job as it is now, apply.
    The job afterwards; None when it is unknown."""
    at = time.time() if now is None else now
    current = store.get(job_id)
    if current is None:
        return None
    decision = lifecycle.cancel(current, now=at)
    if decision is not None:
        (applied,) = store.apply([decision], at)
        assert applied, decision
    return store.get(job_id)


def recover(store: Store, now: float) -> list[JobRecord]:
    """Recover the jobs whose lease ran out before `now` (`lifecycle.lost`); the jobs
    the store moved, as they are afterwards."""
    expired = store.expired(now)
    decisions = [lifecycle.lost(r, now=now) for r in expired]
    applied = store.apply(decisions, now)
    moved = [store.get(r.id) for r, ok in zip(expired, applied, strict=True) if ok]
    return [r for r in moved if r is not None]


def release(store: Store, records: Sequence[JobRecord], now: float | None = None) -> list[bool]:
    """Hand claimed, never started jobs back (`lifecycle.released`), each under the
    fence its claim gave; whether each applied."""
    at = time.time() if now is None else now
    decisions = [lifecycle.released(r, fence=fence(r), now=at) for r in records]
    return store.apply(decisions, at)


def output_item(value: Any) -> tuple[EventKind, str]:
    return (EventKind.OUTPUT, json.dumps(value))


def log_item(message: str) -> tuple[EventKind, str]:
    return (EventKind.LOG, json.dumps(message))
