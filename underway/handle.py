"""JobHandle: what the caller holds after `submit` (id, state, wait, cancel, events).

The same handle serves a job in a local store (`Underway`) and on a server
(`underway.Client`): both are a `JobSource`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from .errors import JobCancelled, JobFailed
from .records import ErrorInfo, Event, JobRecord, Progress, State


class JobSource(Protocol):
    """Where a handle reads and changes its job."""

    def get(self, job_id: str) -> JobRecord: ...

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobRecord: ...

    def cancel(self, job_id: str) -> JobRecord: ...

    def delete(self, job_id: str) -> None: ...

    def output(
        self, job_id: str, *, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]: ...

    def follow(
        self, job_id: str, *, after: int = 0, timeout: float | None = None
    ) -> Iterator[Event]: ...


class JobHandle:
    """A reference to one job. Attribute reads fetch the current record."""

    def __init__(self, source: JobSource, record: JobRecord) -> None:
        self._source = source
        self.id = record.id
        self.record = record  # the last snapshot read

    def refresh(self) -> JobRecord:
        self.record = self._source.get(self.id)
        return self.record

    @property
    def state(self) -> State:
        return self.refresh().state

    @property
    def progress(self) -> Progress:
        return self.refresh().progress

    @property
    def position(self) -> int | None:
        """Place in its queue while queued (0 = next), else None."""
        return self.refresh().position

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
        self.record = self._source.wait(self.id, timeout=timeout)
        return self._outcome(self.record)

    async def result_async(self, timeout: float | None = None) -> Any:
        """`wait()` for a caller on an event loop: the loop keeps serving while the job
        runs (no thread is held per waiter; see `underway.aio`)."""
        from . import aio

        self.record = await aio.wait(self._source, self.id, timeout)
        return self._outcome(self.record)

    def _outcome(self, record: JobRecord) -> Any:
        if record.state is State.FAILED:
            raise JobFailed(record)
        if record.state is State.CANCELLED:
            raise JobCancelled(record)
        return record.result

    def cancel(self) -> JobRecord:
        self.record = self._source.cancel(self.id)
        return self.record

    def delete(self) -> None:
        self._source.delete(self.id)

    def output(self, after: int = 0, limit: int = 1000, *, attempt: int | None = None) -> list[Any]:
        """Output items of the latest attempt (or of `attempt`), from index `after`."""
        return self._source.output(self.id, attempt=attempt, after=after, limit=limit)

    def events(self, after: int = 0, *, timeout: float | None = None) -> Iterator[Event]:
        """Events with id > `after`, as they happen, until the `done` event (or `timeout`)."""
        return self._source.follow(self.id, after=after, timeout=timeout)

    def aevents(self, after: int = 0) -> AsyncIterator[Event]:
        """`events()` for a caller on an event loop: `async for event in job.aevents()`."""
        from . import aio

        return aio.events(self._source, self.id, after)

    def __repr__(self) -> str:
        return f"<JobHandle {self.record.task} {self.id} {self.record.state.value}>"
