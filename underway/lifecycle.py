"""The lifecycle: given a job and what happened to it, what it becomes.

Every state change of a job is decided here, once, for every store: the next state,
the attempt count, the retry time, and the exact events to append. Stores apply a
`Decision` atomically, and only while its guard holds (the job is in an expected
state, still held under the fencing token it was claimed with); they hold no policy.

What can happen to a job, and the function that decides it:

    submitted                   -> `submitted`     queued
    claimed by a worker         (the store's claim: running, attempt + 1)
    its code ended              -> `ended`         succeeded | failed | cancelled,
                                                   or queued again for a retry
    handed back unstarted       -> `released`      queued, its attempt given back
    its worker stopped renewing -> `lost`          queued while attempts remain, else
                                                   failed (WorkerLost) or cancelled
    cancel asked                -> `cancel`        cancelled while queued; a flag
                                                   while running

An attempt is counted when a worker claims the job, before its code can start, so
`retries=N` means at most N+1 starts whatever kills the worker; only a job its
worker hands back knowing it never started (`released`) gets its attempt back.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._util import dumps, rfc3339
from .records import Decision, ErrorInfo, EventKind, Fence, JobRecord, State

__all__ = [
    "Decision",
    "Fence",
    "cancel",
    "ended",
    "lost",
    "released",
    "retries",
    "retry_delay",
    "submitted",
    "running_event",
    "log_applied",
    "log_submitted",
    "log_claimed",
]

log = logging.getLogger("underway.jobs")

ACTIVE_STATES = frozenset({State.QUEUED, State.RUNNING})
RUNNING = frozenset({State.RUNNING})
QUEUED = frozenset({State.QUEUED})

Events = tuple[tuple[EventKind, str], ...]


def _state_event(data: dict[str, Any]) -> tuple[EventKind, str]:
    return (EventKind.STATE, dumps(data))


_SUBMITTED: Events = (_state_event({"state": State.QUEUED.value}),)
_STATE_EVENTS = {s: _state_event({"state": s.value}) for s in State}


def _public_error(error: ErrorInfo | None) -> dict[str, Any] | None:
    return None if error is None else {"type": error.type, "message": error.message}


def submitted() -> Events:
    """The events of a new job."""
    return _SUBMITTED


def running_event(attempt: int) -> dict[str, Any]:
    """The `state` event of a claim (stores write it with the claim itself)."""
    return {"state": State.RUNNING.value, "attempt": attempt}


def _terminal_events(state: State, result_json: str, error: ErrorInfo | None) -> Events:
    # Built from pieces: a job's end is the hottest decision (each no-op job has one).
    done = (
        f'{{"state":"{state.value}","result":{result_json},'
        f'"error":{dumps(error.to_dict()) if error else "null"}}}'
    )
    return (_STATE_EVENTS[state], (EventKind.DONE, done))


def _terminal(
    record: JobRecord,
    state: State,
    *,
    result: Any = None,
    result_json: str | None = None,
    error: ErrorInfo | None,
    now: float,
    expect: frozenset[State],
    fence: Fence | None,
    keep_for: float | None = None,
    started_at: float | None = None,
    lease_before: float | None = None,
) -> Decision:
    if result_json is None:
        result_json = dumps(result)
    return Decision(
        job_id=record.id,
        expect=expect,
        fence=fence,
        lease_before=lease_before,
        state=state,
        result=result,
        result_json=result_json,
        error=error,
        started_at=started_at,
        finished_at=now,
        expires_at=now + (record.keep_for if keep_for is None else keep_for),
        events=_terminal_events(state, result_json, error),
    )


def _requeue(
    record: JobRecord,
    *,
    reason: str,
    run_at: float,
    error: ErrorInfo | None,
    fence: Fence,
    attempt: int | None = None,
    lease_before: float | None = None,
) -> Decision:
    data: dict[str, Any] = {
        "state": State.QUEUED.value,
        "reason": reason,
        "attempt": record.attempt if attempt is None else attempt,
    }
    if reason != "released":
        data["retry_at"] = rfc3339(run_at)
        data["error"] = _public_error(error)
    return Decision(
        job_id=record.id,
        expect=RUNNING,
        fence=fence,
        lease_before=lease_before,
        state=State.QUEUED,
        attempt=attempt,
        run_at=run_at,
        error=error,
        events=(_state_event(data),),
    )


def retry_delay(
    attempt: int, backoff: float, backoff_max: float, jitter: Callable[[], float] = random.random
) -> float:
    """Exponential backoff after failed attempt number `attempt`, with +-25% jitter so
    that the retries of a burst spread out."""
    delay = min(backoff * 2.0 ** (attempt - 1), backoff_max)
    return float(delay * (0.75 + jitter() / 2))


def retries(record: JobRecord, state: State, error: ErrorInfo | None) -> bool:
    """Does this end of an attempt send the job back to the queue? A failure other
    than a timeout, while attempts remain."""
    return (
        state is State.FAILED
        and error is not None
        and error.type != "Timeout"
        and record.attempt < record.max_attempts
    )


def ended(
    record: JobRecord,
    *,
    fence: Fence,
    state: State,
    result: Any = None,
    error: ErrorInfo | None = None,
    now: float,
    keep_for: float,
    started_at: float | None,
    backoff: float = 1.0,
    backoff_max: float = 300.0,
    result_json: str | None = None,
    progress: str | None = None,
) -> Decision:
    """The job's code ended under `fence` with `state` (succeeded, failed, cancelled).

    A failure other than a timeout, with attempts left, goes back to the queue after a
    backoff (at once when the worker stopped during it); everything else is final.
    `progress`: the job's last progress snapshot (JSON), not yet written, written with
    the end (its `progress` event first)."""
    if retries(record, state, error):
        assert error is not None
        run_at = now
        if error.type != "Shutdown":
            run_at += retry_delay(record.attempt, backoff, backoff_max)
        decision = _requeue(record, reason="retry", run_at=run_at, error=error, fence=fence)
    else:
        decision = _terminal(
            record,
            state,
            result=result,
            result_json=result_json,
            error=error,
            now=now,
            expect=RUNNING,
            fence=fence,
            keep_for=keep_for,
            started_at=started_at,
        )
    if progress is None:
        return decision
    return replace(
        decision, progress=progress, events=((EventKind.PROGRESS, progress), *decision.events)
    )


def released(record: JobRecord, *, fence: Fence, now: float) -> Decision:
    """The worker hands back a job it claimed but never started: due now, and the
    attempt the claim counted is given back."""
    return _requeue(
        record,
        reason="released",
        run_at=now,
        error=record.error,
        fence=fence,
        attempt=max(0, record.attempt - 1),
    )


def lost(record: JobRecord, *, now: float) -> Decision:
    """The job's lease ran out before `now`: its worker is gone (or cut off)."""
    fence = Fence(worker=record.worker or "", attempt=record.attempt)
    error = ErrorInfo(
        type="WorkerLost", message=f"worker {record.worker} stopped renewing its lease"
    )
    if record.cancel_requested:
        return _terminal(
            record,
            State.CANCELLED,
            error=error,
            now=now,
            expect=RUNNING,
            fence=fence,
            lease_before=now,
        )
    if record.attempt < record.max_attempts:
        return _requeue(
            record, reason="lost", run_at=now, error=error, fence=fence, lease_before=now
        )
    return _terminal(
        record, State.FAILED, error=error, now=now, expect=RUNNING, fence=fence, lease_before=now
    )


def cancel(record: JobRecord, *, now: float) -> Decision | None:
    """A cancel was asked: a queued job ends now; a running one is flagged (its worker
    stops it). None when there is nothing to do (finished, or flagged already)."""
    if record.state is State.QUEUED:
        error = ErrorInfo(type="Cancelled", message="cancelled before it started")
        return _terminal(record, State.CANCELLED, error=error, now=now, expect=QUEUED, fence=None)
    if record.state is State.RUNNING and not record.cancel_requested:
        return Decision(
            job_id=record.id,
            expect=RUNNING,
            fence=Fence(worker=record.worker or "", attempt=record.attempt),
            state=State.RUNNING,
            cancel_requested=True,
            events=((EventKind.LOG, dumps("cancel requested")),),
        )
    return None


# -- telling the operator ----------------------------------------------------------------
# A line's record, without what changes from line to line, per thread and origin: the
# stdlib's record spends most of its time finding out again what these are (the file's
# base name and module, the thread's name, the process's name and id).
_SAME = threading.local()
_forks = 0  # a forked child's records name its own process


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def _record(
    level: int, where: Callable[..., None], msg: str, args: tuple[Any, ...], fields: Any
) -> logging.LogRecord:
    """What `log.makeRecord(...)` makes for the line, for the stdlib's own record
    class: copied from this thread's first record of `level` from `where` (made again
    after a fork or when the thread was renamed), with the message, its arguments, its
    time and `fields` its own."""
    known: dict[Any, tuple[int, dict[str, Any]]] | None = getattr(_SAME, "records", None)
    if known is None:
        known = _SAME.records = {}
    key = (level, where)
    found = known.get(key)
    if (
        found is None
        or found[0] != _forks
        or found[1]["threadName"] != threading.current_thread().name
    ):
        code = where.__code__
        first = log.makeRecord(
            log.name, level, __file__, code.co_firstlineno, msg, args, None, code.co_name
        )
        found = known[key] = (_forks, dict(first.__dict__))
    data = dict(found[1])
    now = time.time()
    data["relativeCreated"] += (now - data["created"]) * 1000.0
    data["created"], data["msecs"] = now, int((now - int(now)) * 1000) + 0.0
    data["msg"], data["args"] = msg, args
    if "taskName" in data:  # Python 3.12+: the asyncio task the line is written in
        data["taskName"] = _task_name()
    data.update(fields)
    line = logging.LogRecord.__new__(logging.LogRecord)
    line.__dict__ = data
    return line


def _task_name() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or not getattr(logging, "logAsyncioTasks", True):
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        return None
    return None if task is None else task.get_name()


def _emit(level: int, where: Callable[..., None], msg: str, *args: Any, fields: Any) -> None:
    """`log.log(level, msg, *args, extra=fields)`, with the record naming the function
    `where` of this module as its origin instead of finding its caller by walking the
    stack, which is a good share of what a line costs (and a worker writes two per
    job). Handlers, filters and levels apply as ever; an application's own record
    factory makes every record."""
    if logging.getLogRecordFactory() is logging.LogRecord:
        line = _record(level, where, msg, args, fields)
    else:
        code = where.__code__
        line = log.makeRecord(
            log.name, level, __file__, code.co_firstlineno, msg, args, None, code.co_name, fields
        )
    log.handle(line)


def log_submitted(record: JobRecord) -> None:
    """One line for a new job."""
    if log.isEnabledFor(logging.INFO):
        _emit(
            logging.INFO,
            log_submitted,
            "job %s %s: submitted -> queued",
            record.id,
            record.task,
            fields={"job_id": record.id, "task": record.task, "attempt": 0},
        )


def log_claimed(record: JobRecord, worker: str) -> None:
    """One line for a claim (queued -> running)."""
    if log.isEnabledFor(logging.INFO):
        _emit(
            logging.INFO,
            log_claimed,
            "job %s %s attempt %d/%d: queued -> running (worker %s)",
            record.id,
            record.task,
            record.attempt,
            record.max_attempts,
            worker,
            fields={"job_id": record.id, "task": record.task, "attempt": record.attempt},
        )


def log_applied(
    record: JobRecord, decision: Decision, applied: bool, *, duration: float | None = None
) -> None:
    """One line for a decision the store applied (or refused: the job was no longer
    where the decision expected it, e.g. held by another worker)."""
    if applied and decision.state is State.SUCCEEDED and not log.isEnabledFor(logging.INFO):
        return  # the common case, when nobody listens: cost nothing
    attempt = record.attempt if decision.attempt is None else decision.attempt
    fields = {"job_id": record.id, "task": record.task, "attempt": attempt}
    took = "" if duration is None else f" in {duration:.3f}s"
    if not applied:
        log.warning(
            "job %s %s attempt %d/%d: %s -> %s refused: the job changed meanwhile "
            "(held by another worker, finished or deleted)",
            record.id,
            record.task,
            record.attempt,
            record.max_attempts,
            record.state.value,
            decision.state.value,
            extra=fields,
        )
        return
    error = decision.error if decision.moves else None
    failed = decision.state is State.FAILED or (
        decision.state is State.QUEUED and error is not None and error.type != "Shutdown"
    )
    level = logging.WARNING if failed else logging.INFO
    if not log.isEnabledFor(level):
        return
    what = "cancel requested" if not decision.moves else f"-> {decision.state.value}"
    why = f": {error.type}: {error.message}" if error is not None else ""
    if decision.state is State.QUEUED and decision.run_at is not None:
        why += f" (due {rfc3339(decision.run_at)})"
    _emit(
        level,
        log_applied,
        "job %s %s attempt %d/%d: %s %s%s%s",
        record.id,
        record.task,
        attempt,
        record.max_attempts,
        record.state.value,
        what,
        took,
        why,
        fields=fields,
    )
