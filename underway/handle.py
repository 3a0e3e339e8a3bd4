"""JobHandle: what the caller holds after `submit` (id, state, wait, cancel, events)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import JobCancelled, JobFailed
from .job import ErrorInfo, Event, EventKind, JobRecord, Progress, State

if TYPE_CHECKING:
    from .app import Underway


class JobHandle:
    """A reference to one job. Attribute reads fetch the current record from the store."""

    def __init__(self, app: Underway, record: JobRecord) -> None:
        self._app = app
        self.id = record.id
        self.record = record  # the last snapshot read

    def refresh(self) -> JobRecord:
        self.record = self._app.get(self.id)
        return self.record

    @property
    def state(self) -> State:
        return self.refresh().state

    @property
    def progress(self) -> Progress:
        return self.refresh().progress

    @property
    def result(self) -> Any:
        return self.refresh().result

    @property
    def error(self) -> ErrorInfo | None:
        return self.refresh().error

    @property
    def done(self) -> bool:
        return self.refresh().finished

    def wait(self, timeout: float | None = None) -> Any:
        """The result once the job succeeded; raises JobFailed, JobCancelled, or
        TimeoutError when `timeout` seconds pass first."""
        record = self._app.wait(self.id, timeout=timeout)
        self.record = record
        if record.state is State.FAILED:
            raise JobFailed(record)
        if record.state is State.CANCELLED:
            raise JobCancelled(record)
        return record.result

    def cancel(self) -> JobRecord:
        self.record = self._app.cancel(self.id)
        return self.record

    def delete(self) -> None:
        self._app.delete(self.id)

    def output(self, after: int = 0, limit: int = 1000) -> list[Any]:
        return self._app.output(self.id, after=after, limit=limit)

    def events(self, after: int = 0, *, timeout: float | None = None) -> Iterator[Event]:
        """Events with id > `after`, as they happen, until the `done` event (or `timeout`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return
            for event in self._app.store.wait_events(self.id, after, min(left, 1.0)):
                after = event.seq
                yield event
                if event.kind is EventKind.DONE:
                    return
            if deadline is None and self._app.store.get(self.id) is None:
                return

    def __repr__(self) -> str:
        return f"<JobHandle {self.record.task} {self.id} {self.record.state.value}>"
