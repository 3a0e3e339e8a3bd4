"""The job model: states, records, events, and the in-task `Job` context.

Three objects, three names: the task's code receives a `Job` (progress, emit,
cancelled); the caller gets a handle (`underway.handle.JobHandle`); both read
`JobRecord`s, frozen snapshots of what the store holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from ._util import dumps, rfc3339, to_jsonable
from .errors import Cancelled, OutputTooLarge

if TYPE_CHECKING:
    from .command import CommandResult


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
    position: int | None = None  # 0-based place in its queue while queued
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

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)

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
        if self.meta.get("webhook"):
            data["webhook"] = self.meta["webhook"]
        return data


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

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.seq, "event": self.kind.value, "data": self.data, "at": rfc3339(self.at)}


MAX_OUTPUT_BYTES = 1 << 20  # one output item, serialised


class Job:
    """The context a task receives: report progress, emit output, honour cancellation.

    `progress()` only writes to memory; the worker flushes the latest snapshot to the
    store a few times a second. `emit()` and `log()` queue items that the worker writes
    in order, in batches. Every method is safe to call from any thread of the task.
    """

    # Plain attributes, not properties: progress() must cost well under a microsecond.
    __slots__ = (
        "id",
        "task",
        "params",
        "attempt",
        "_current",
        "_total",
        "_message",
        "_version",
        "_outbox",
        "_outbox_lock",
        "_cancel",
        "_max_output_bytes",
        "started",
        "stop_reason",
        "__weakref__",
    )

    def __init__(
        self,
        record: JobRecord,
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        self.id = record.id
        self.task = record.task
        self.params = record.params
        self.attempt = record.attempt
        self._current: float | None = record.progress.current
        self._total: float | None = record.progress.total
        self._message: str | None = record.progress.message
        self._version = 0
        self._outbox: list[tuple[EventKind, str]] = []
        self._outbox_lock = threading.Lock()
        self._cancel = threading.Event()
        self._max_output_bytes = max_output_bytes
        self.started = time.monotonic()
        self.stop_reason: str | None = None  # "cancel", "timeout" or "shutdown"

    # -- progress (lossy, latest wins) -------------------------------------------------
    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress; `total` and `message` keep their last value when None."""
        if total is not None:
            self._total = total
        if message is not None:
            self._message = message
        self._current = current
        self._version += 1

    def snapshot(self) -> tuple[int, float | None, float | None, str | None]:
        """(version, current, total, message) as last reported."""
        return self._version, self._current, self._total, self._message

    # -- output (lossless, ordered) ----------------------------------------------------
    def emit(self, item: Any) -> None:
        """Append one item to the job's output stream (a partial result, a token, a row)."""
        self._queue(EventKind.OUTPUT, item)

    def log(self, message: str) -> None:
        """Append a human-readable line to the job's event stream."""
        self._queue(EventKind.LOG, str(message))

    def _queue(self, kind: EventKind, item: Any) -> None:
        try:
            data = dumps(item)
        except (TypeError, ValueError):
            data = dumps(to_jsonable(item))
        if len(data) > self._max_output_bytes:
            raise OutputTooLarge(
                f"output item of {len(data)} bytes is over the limit of {self._max_output_bytes}"
            )
        with self._outbox_lock:
            self._outbox.append((kind, data))

    def take_outbox(self) -> list[tuple[EventKind, str]]:
        """Hand the queued items (serialised JSON) to the caller, in order."""
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
        return items

    def return_outbox(self, items: Sequence[tuple[EventKind, str]]) -> None:
        """Put items taken by `take_outbox` back in front (their write failed)."""
        with self._outbox_lock:
            self._outbox[:0] = items

    def put_raw(self, items: Sequence[tuple[EventKind, str]]) -> None:
        """Queue already serialised items (from a child process)."""
        with self._outbox_lock:
            self._outbox.extend(items)

    # -- cancellation ------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the job was asked to stop (cancel, timeout or shutdown)."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if the job was asked to stop."""
        if self._cancel.is_set():
            raise Cancelled()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleep up to `timeout` seconds, returning early (True) when cancelled."""
        return self._cancel.wait(timeout)

    def request_cancel(self, reason: str = "cancel") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._cancel.set()

    # -- external programs -------------------------------------------------------------
    def run_command(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        """Run an external program as part of this job (see `underway.command.run_command`)."""
        from .command import run_command

        return run_command(self, argv, **kwargs)

    def __repr__(self) -> str:
        return f"<Job {self.task} {self.id}>"
