"""Server-Sent Events for a job: `state`, `progress`, `output`, `log`, `done`.

Each event's `id:` is its `seq`, so a client that reconnects with `Last-Event-ID`
(or `?after=`) gets exactly the events it has not seen. A comment line is sent as a
ping every `ping_interval` seconds to keep proxies from closing an idle stream. The
stream ends after `done`.

A stream that starts from the beginning shows the job's latest attempt: the
output, log and progress events of earlier attempts are skipped (a client that
watches live resets its view at each `state` event `running` of a new attempt).

The asynchronous stream holds no thread while it waits: it subscribes to the
engine's change feed, whose callback wakes the event loop, so a thousand watchers
cost a thousand small coroutines, not a thousand threads; an idle stream reads
nothing and only pings. Watchers of the same job on one event loop share their
store reads: when the job changes, one read serves them all (see `_SharedRead`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .._util import dumps
from ..records import TERMINAL, Event, EventKind, JobRecord, latest_segment

if TYPE_CHECKING:
    from .handlers import Api, EventStream

T = TypeVar("T")
RunSync = Callable[..., Awaitable[Any]]

MEDIA_TYPE = "text/event-stream"
HEADERS = {
    "Cache-Control": "no-cache",
    # Stops nginx from buffering the stream until it is complete.
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"
RETRY = b"retry: 2000\n\n"  # how long a browser waits before reconnecting (ms)


def format_event(event: Event, *, tracebacks: bool = False) -> bytes:
    data = event.data
    if not tracebacks and isinstance(data, dict) and isinstance(data.get("error"), dict):
        data = {**data, "error": {**data["error"], "traceback": None}}
    # Compact JSON never contains a raw newline, so one `data:` line is enough.
    return f"id: {event.seq}\nevent: {event.kind.value}\ndata: {dumps(data)}\n\n".encode()


def _read(api: Api, job_id: str, after: int) -> tuple[list[Event], JobRecord | None]:
    """New events, and the job as it was just before they were read.

    The record is read first: a job that is finished by then has its `done` event
    stored already, so an empty read of a finished job means nothing is left.
    """
    record = api.uw.find(job_id)
    return api.uw.events_after(job_id, after), record


READ_LIMIT = 1000  # events per store read


@dataclass(kw_only=True)
class _SharedRead:
    """The latest read of a job's events with `seq > after`, begun when the job's
    notifier stood at `version`: it serves every watcher woken at that version or
    before whose own position is `after` or later."""

    version: int
    after: int
    result: asyncio.Future[list[Event]]


@dataclass(kw_only=True)
class Watched:
    """A job's watchers on one event loop, and their latest shared read."""

    loop: asyncio.AbstractEventLoop
    watchers: int = 0
    read: _SharedRead | None = field(default=None)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so an error nobody awaited is not logged


async def _shared_events(
    api: Api, watched: Watched, job_id: str, after: int, run_sync: RunSync
) -> list[Event]:
    version = api.uw.feed.version(job_id)
    read = watched.read
    if read is None or not _serves(read, version, after):
        result = asyncio.ensure_future(run_sync(api.uw.events_after, job_id, after, READ_LIMIT))
        result.add_done_callback(_retrieve)
        read = watched.read = _SharedRead(version=version, after=after, result=result)
    events = await asyncio.shield(read.result)
    return [e for e in events if e.seq > after]


def _serves(read: _SharedRead, version: int, after: int) -> bool:
    """Can a watcher at `after`, woken at `version`, take its events from `read`?"""
    if read.version < version or read.after > after:
        return False  # begun before the change that woke it, or starts past it
    if not read.result.done():
        return True
    if read.result.cancelled() or read.result.exception() is not None:
        return False
    events = read.result.result()
    # A read that hit its limit holds only the first events: past them, read on.
    return len(events) < READ_LIMIT or events[-1].seq > after


def _watch(api: Api, job_id: str, loop: asyncio.AbstractEventLoop) -> Watched:
    watched = api.sse_watched.get(job_id)
    if watched is None or watched.loop is not loop:
        watched = api.sse_watched[job_id] = Watched(loop=loop)
    watched.watchers += 1
    return watched


def _unwatch(api: Api, job_id: str, watched: Watched) -> None:
    watched.watchers -= 1
    if watched.watchers <= 0 and api.sse_watched.get(job_id) is watched:
        del api.sse_watched[job_id]


class _Wake:
    """An asynchronous stream's wake-up: the feed's callback (from any thread) or its
    ping time, whichever comes first.

    Waiting costs one future and one timer handle on the loop: no task, no
    cancellation, so that thousands of idle streams pinging cost little more than
    the pings' own writes.
    """

    __slots__ = ("changed", "loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.changed = False  # the feed called since the last `clear()`
        self.waiter: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """The feed's callback: may run on any thread."""
        try:
            self.loop.call_soon_threadsafe(self._set)
        except RuntimeError:  # the loop closed while this watcher was still subscribed
            pass

    def _set(self) -> None:
        self.changed = True
        self._resolve()

    def _resolve(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self.changed = False

    async def wait(self, deadline: float) -> bool:
        """Until the feed calls (True) or the loop's clock reaches `deadline` (False)."""
        if self.changed:
            return True
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_at(deadline, self._resolve)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None
        return self.changed


async def aiter_events(
    api: Api, stream: EventStream, *, ping_interval: float, run_sync: RunSync
) -> AsyncIterator[bytes]:
    """The stream for an asyncio server; `run_sync(fn, *args)` runs store reads."""
    loop = asyncio.get_running_loop()
    wake = _Wake(loop)
    unsubscribe = api.uw.feed.subscribe(stream.job_id, wake.notify)
    watched = _watch(api, stream.job_id, loop)
    after = stream.after
    next_ping = loop.time() + ping_interval
    check_record = True  # at the start, and after a wake-up that brought no event
    since_attempt = 0
    api.streams(+1)
    try:
        yield RETRY
        while True:
            wake.clear()
            if check_record:
                events, record = await run_sync(_read, api, stream.job_id, after)
                if record is None:
                    return  # deleted
                if stream.after == 0 and not since_attempt:
                    since_attempt = record.attempt
            else:
                events = await _shared_events(api, watched, stream.job_id, after, run_sync)
            if events:
                shown = latest_segment(events, since_attempt)
                if shown:
                    yield b"".join(format_event(e, tracebacks=api.tracebacks) for e in shown)
                after = events[-1].seq
                if events[-1].kind is EventKind.DONE:
                    return
                check_record = False
                continue
            if check_record and record.state in TERMINAL:
                return
            if not check_record:
                check_record = True  # a change without an event: look at the record
                continue
            # Idle: no read until the feed says the job changed; only pings.
            while not await wake.wait(next_ping):
                yield PING
                next_ping = loop.time() + ping_interval
            check_record = False
    finally:
        api.streams(-1)
        unsubscribe()
        _unwatch(api, stream.job_id, watched)


def iter_events(api: Api, stream: EventStream, *, ping_interval: float) -> Iterator[bytes]:
    """The same stream for a threaded (WSGI) server: blocks this thread while waiting."""
    feed = api.uw.feed
    after = stream.after
    next_ping = time.monotonic() + ping_interval
    since_attempt = 0
    api.streams(+1)
    try:
        yield RETRY
        while True:
            seen = feed.version(stream.job_id)
            events, record = _read(api, stream.job_id, after)
            if record is not None and stream.after == 0 and not since_attempt:
                since_attempt = record.attempt
            if events:
                shown = latest_segment(events, since_attempt)
                if shown:
                    yield b"".join(format_event(e, tracebacks=api.tracebacks) for e in shown)
                after = events[-1].seq
                if events[-1].kind is EventKind.DONE:
                    return
                continue
            if record is None or record.state in TERMINAL:
                return
            while feed.wait(stream.job_id, seen, max(0.0, next_ping - time.monotonic())) == seen:
                yield PING
                next_ping = time.monotonic() + ping_interval
    finally:
        api.streams(-1)
