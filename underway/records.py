"""Records: the frozen data every part of underway reads and writes.

`JobRecord` is the snapshot of one job that every API returns; `Event` one entry of
a job's ordered event stream; `Page` one page of a listing. This module imports
nothing of the engine, so stores, the HTTP layer and clients can all depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from ._util import dumps, rfc3339


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL: frozenset[State] = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
ACTIVE: frozenset[State] = frozenset({State.QUEUED, State.RUNNING})


@dataclass(frozen=True, kw_only=True)
class Progress:
    current: float | None = None
    total: float | None = None
    message: str | None = None
    eta_s: float | None = None  # seconds left, from the observed rate

    @property
    def percent(self) -> float | None:
        if self.current is None or not self.total:
            return None
        return max(0.0, min(100.0, round(100.0 * self.current / self.total, 2)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "total": self.total,
            "percent": self.percent,
            "message": self.message,
            "eta_s": self.eta_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Progress:
        if not data:
            return EMPTY_PROGRESS
        return cls(
            current=data.get("current"),
            total=data.get("total"),
            message=data.get("message"),
            eta_s=data.get("eta_s"),
        )


EMPTY_PROGRESS = Progress()


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    type: str  # exception class name, or Timeout / WorkerLost / Cancelled / ...
    message: str
    traceback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ErrorInfo | None:
        if not data:
            return None
        return cls(type=data["type"], message=data["message"], traceback=data.get("traceback"))


# Stores may stop counting the jobs ahead of a queued job here: past it, `position` is
# None and the job says "more than POSITION_LIMIT jobs ahead" (a deep queue's reads stay
# cheap; nobody needs the exact place of job 99,999).
POSITION_LIMIT = 10_000


@dataclass(frozen=True, kw_only=True)
class Waiting:
    """Why a queued job has not started (see `underway.waiting`)."""

    reason: str  # scheduled | retry-backoff | no-worker | concurrency-limit | queue
    message: str
    until: float | None = None  # when it becomes due (scheduled, retry-backoff)

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "until": rfc3339(self.until)}


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A frozen snapshot of one job, as every API returns it."""

    id: str
    task: str
    params: dict[str, Any]
    state: State = State.QUEUED
    progress: Progress = EMPTY_PROGRESS
    result: Any = None
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    attempt: int = 0  # runs started so far
    max_attempts: int = 1
    created_at: float = 0.0  # epoch seconds
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    output_count: int = 0
    position: int | None = None  # 0-based place in its queue while queued (see POSITION_LIMIT)
    owner: str | None = None
    queue: str = "default"
    priority: int = 0  # lower runs first
    run_at: float = 0.0  # not before (retry backoff)
    timeout: float | None = None
    keep_for: float = 86400.0
    idempotency_key: str | None = None
    supersede_key: str | None = None
    worker: str | None = None  # lease holder while running
    lease_until: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # callback_url, webhook attempts, ...
    waiting: Waiting | None = None  # why it has not started, while queued (`Underway.get`)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> JobRecord:
        """A record made of `values`, which names every field (`RECORD_FIELDS`) and
        becomes the record's own; the same as `JobRecord(**values)`, without the
        generated `__init__`'s one frozen assignment per field. Stores and `submit`
        make two or three records per job, on every job's path."""
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", values)
        return record

    def to_dict(self, *, include_owner: bool = True) -> dict[str, Any]:
        """The public JSON shape (DESIGN.md, "The job record")."""
        data: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "params": self.params,
            "state": self.state.value,
            "progress": self.progress.to_dict(),
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "cancel_requested": self.cancel_requested,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "expires_at": rfc3339(self.expires_at),
            "output_count": self.output_count,
            "position": self.position if self.state is State.QUEUED else None,
            "queue": self.queue,
        }
        if include_owner:
            data["owner"] = self.owner
        if self.waiting is not None and self.state is State.QUEUED:
            data["waiting"] = self.waiting.to_dict()
        if self.meta.get("webhook"):
            data["webhook"] = self.meta["webhook"]
        return data


RECORD_FIELDS: tuple[str, ...] = tuple(JobRecord.__dataclass_fields__)


class EventKind(StrEnum):
    STATE = "state"
    PROGRESS = "progress"
    OUTPUT = "output"
    LOG = "log"
    DONE = "done"


@dataclass(frozen=True, kw_only=True)
class Event:
    """One entry of a job's ordered event stream; `seq` starts at 1 and only grows."""

    seq: int
    kind: EventKind
    data: Any
    at: float
    attempt: int = 0  # the attempt it belongs to (0: before the first claim)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.seq, "event": self.kind.value, "data": self.data, "at": rfc3339(self.at)}


PER_ATTEMPT: frozenset[EventKind] = frozenset({EventKind.OUTPUT, EventKind.LOG, EventKind.PROGRESS})


def latest_segment(events: list[Event], since_attempt: int) -> list[Event]:
    """`events` without the output, log and progress of attempts before `since_attempt`
    (what a watcher that starts from the beginning is shown)."""
    if since_attempt <= 1:
        return events
    return [e for e in events if e.kind not in PER_ATTEMPT or e.attempt >= since_attempt]


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of a job listing, newest first; `next_cursor` continues it."""

    jobs: list[JobRecord]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Fence:
    """The token a worker holds a job under: its id and the attempt it claimed.

    A store refuses a worker's write whose fence is no longer the job's (the job was
    recovered, and maybe claimed again), so a worker that lost its lease changes
    nothing."""

    worker: str
    attempt: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """One state change the lifecycle decided; a store applies it atomically, or not
    at all when its guard does not hold.

    Guard: the job is in one of `expect`, held under `fence` (when given), and its
    lease ran out before `lease_before` (when given). Effect: `state`; `attempt` when
    not None; `cancel_requested` when not None; a move out of `running` clears the
    holder and its lease and writes `result`, `error` and `run_at` (queued) or
    `finished_at`, `expires_at` (terminal); `started_at`, when given, replaces the
    claim time with the moment the code really started; `progress`, when given (the
    job's last progress snapshot, as JSON), replaces its progress. Then `events` are
    appended in order."""

    job_id: str
    expect: frozenset[State]
    fence: Fence | None = None
    lease_before: float | None = None
    state: State
    attempt: int | None = None
    cancel_requested: bool | None = None
    run_at: float | None = None
    result: Any = None
    error: ErrorInfo | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    events: tuple[tuple[EventKind, str], ...] = ()
    result_json: str | None = None  # `result` as JSON, when the lifecycle encoded it
    progress: str | None = None

    def result_text(self) -> str | None:
        """`result` as JSON for the store (None for no result), encoded once."""
        if self.result is None:
            return None
        return self.result_json if self.result_json is not None else dumps(self.result)

    @property
    def moves(self) -> bool:
        """Does it leave `running` or `queued` (rather than only flag the job)?"""
        return self.state is not State.RUNNING
