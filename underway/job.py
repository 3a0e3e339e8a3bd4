"""The in-task `Job` context: progress, output, cancellation.

Three objects, three names: the task's code receives a `Job` (progress, emit,
cancelled); the caller gets a handle (`underway.handle.JobHandle`); both read
`JobRecord`s (`underway.records`), frozen snapshots of what the store holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._util import dumps, to_jsonable
from .errors import Cancelled, OutputTooLarge
from .records import EventKind, JobRecord

if TYPE_CHECKING:
    from .command import CommandResult


MAX_OUTPUT_BYTES = 1 << 20  # one output item, serialised


class Job:
    """The context a task receives: report progress, emit output, honour cancellation.

    `progress()` only writes to memory; the worker flushes the latest snapshot to the
    store a few times a second, and the last one with the job's end. `emit()` and
    `log()` queue items that the worker writes in order, in batches. Every method is
    safe to call from any thread of the task.
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
        "_cancelled",
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
        # Most jobs are never asked to stop and never wait for it: the event is made
        # only for a job that waits (`wait_cancelled`); the flag answers the rest.
        self._cancelled = False
        self._cancel: threading.Event | None = None
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
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise `Cancelled` if the job was asked to stop."""
        if self._cancelled:
            raise Cancelled()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Sleep up to `timeout` seconds, returning early (True) when cancelled."""
        with self._outbox_lock:  # the job's one lock, for this too
            if self._cancel is None:
                self._cancel = threading.Event()
                if self._cancelled:
                    self._cancel.set()
            event = self._cancel
        return event.wait(timeout)

    def request_cancel(self, reason: str = "cancel") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        with self._outbox_lock:
            self._cancelled = True
            event = self._cancel
        if event is not None:
            event.set()

    # -- external programs -------------------------------------------------------------
    def run_command(self, argv: Sequence[str], **kwargs: Any) -> CommandResult:
        """Run an external program as part of this job (see `underway.command.run_command`)."""
        from .command import run_command

        return run_command(self, argv, **kwargs)

    def __repr__(self) -> str:
        return f"<Job {self.task} {self.id}>"
