"""Waiting for jobs on an event loop, without blocking it and without a thread per
waiter: `await handle.result_async()` and `async for event in handle.aevents()`.

Both subscribe to the engine's change feed (`Underway.feed`) with a callback that
only wakes the loop (`call_soon_threadsafe`), then read the job when it changed. A
timed re-read every `POLL` seconds covers a wake-up missed across processes. Reads
of a local store (SQLite, memory) run on the loop, being a few tens of
microseconds; reads of a network store run in the loop's default executor.

A handle from `underway.Client` has no feed: there, waiting runs the client's own
blocking wait in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .records import TERMINAL, Event, EventKind, JobRecord, latest_segment

if TYPE_CHECKING:
    from .app import Underway
    from .handle import JobSource

T = TypeVar("T")


class _Wake:
    """An asyncio.Event set from any thread by the feed's callback."""

    def __init__(self, uw: Underway, job_id: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.unsubscribe = uw.feed.subscribe(job_id, self._changed)

    def _changed(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self.loop.call_soon_threadsafe(self.event.set)

    async def wait(self, timeout: float | None) -> bool:
        """Until the job changes (True) or `timeout` passes (False): the feed says
        so; nothing is read."""
        changed = True
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except TimeoutError:
            changed = self.event.is_set()
        self.event.clear()
        return changed


async def _read(uw: Underway, fn: Callable[..., T], *args: Any) -> T:
    """A store read, on the loop's executor: never on the loop itself, which keeps
    serving other requests meanwhile (a burst of ends wakes many waiters at once)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _engine(source: JobSource) -> Underway | None:
    from .app import Underway

    return source if isinstance(source, Underway) else None


async def wait(source: JobSource, job_id: str, timeout: float | None = None) -> JobRecord:
    """The job's final record, once it finished; TimeoutError after `timeout` seconds."""
    uw = _engine(source)
    if uw is None:
        return await asyncio.to_thread(source.wait, job_id, timeout=timeout)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    wake = _Wake(uw, job_id)
    try:
        while True:
            record = await _read(uw, uw.find, job_id)
            if record is None:
                raise uw.not_found(job_id)
            if record.state in TERMINAL:
                return record
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
            if not await wake.wait(left) and left is not None:
                raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
    finally:
        wake.unsubscribe()


async def events(source: JobSource, job_id: str, after: int = 0) -> AsyncIterator[Event]:
    """The job's events with id > `after` as they happen, until `done`."""
    uw = _engine(source)
    if uw is None:
        stream = source.follow(job_id, after=after)
        done = object()
        while (event := await asyncio.to_thread(next, stream, done)) is not done:
            assert isinstance(event, Event)
            yield event
        return
    wake = _Wake(uw, job_id)
    try:
        first = await _read(uw, uw.get, job_id)  # JobNotFound for an unknown job
        # From the start, the latest attempt (as `Underway.follow` and the event stream).
        since_attempt = first.attempt if after == 0 else 0
        while True:
            batch = await _read(uw, uw.events_after, job_id, after)
            for event in latest_segment(batch, since_attempt):
                yield event
            if batch:
                after = batch[-1].seq
                if batch[-1].kind is EventKind.DONE:
                    return
            else:
                if await _read(uw, uw.find, job_id) is None:
                    return  # deleted (or expired) meanwhile
                await wake.wait(None)
    finally:
        wake.unsubscribe()
