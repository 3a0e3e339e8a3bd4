"""Building records for the store contract tests."""

from __future__ import annotations

import time
from typing import Any

from underway._util import new_id
from underway.records import ErrorInfo, EventKind, JobRecord, State
from underway.stores import Store

WORKER = "worker-a"
LEASE = 30.0


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


def submit(store: Store, task: str = "t", **changes: Any) -> JobRecord:
    stored, created = store.enqueue(record(task, **changes))
    assert created
    return stored


def claim_one(
    store: Store,
    task: str = "t",
    *,
    worker: str = WORKER,
    now: float | None = None,
    lease: float = LEASE,
) -> JobRecord:
    got = store.claim(
        worker=worker,
        tasks=[task],
        limits={},
        lease=lease,
        now=time.time() if now is None else now,
    )
    assert len(got) == 1, got
    return got[0]


def finish(
    store: Store,
    job_id: str,
    *,
    worker: str | None = WORKER,
    state: State = State.SUCCEEDED,
    result: Any = None,
    now: float | None = None,
    keep_for: float = 3600.0,
) -> JobRecord | None:
    """The job as finished, or None when `store.finish` reported it did not apply."""
    applied = store.finish(
        job_id,
        worker=worker,
        state=state,
        result=result,
        error=ErrorInfo(type="Boom", message="it broke") if state is State.FAILED else None,
        now=time.time() if now is None else now,
        keep_for=keep_for,
    )
    assert applied in (True, False)
    return store.get(job_id) if applied else None


def output_item(value: Any) -> tuple[EventKind, str]:
    import json

    return (EventKind.OUTPUT, json.dumps(value))
