"""Server-Sent Events for a job: `state`, `progress`, `output`, `log`, `done`.

Each event's `id:` is its `seq`, so a client that reconnects with `Last-Event-ID`
(or `?after=`) gets exactly the events it has not seen. A comment line is sent as a
ping every `ping_interval` seconds to keep proxies from closing an idle stream. The
stream ends after `done`.

The asynchronous stream holds no thread while it waits: it subscribes to the
store's notifier, whose callback wakes the event loop, so a thousand watchers cost
a thousand small coroutines, not a thousand threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .._util import dumps
from ..job import TERMINAL, Event, EventKind

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


def _read(api: Api, job_id: str, after: int, check_ended: bool) -> tuple[list[Event], bool]:
    """New events, and whether the stream is over with none left to send.

    The record is read before the events: a job that is finished by then has its
    `done` event stored already, so an empty read really means nothing is left.
    """
    store = api.uw.store
    ended = False
    if check_ended:
        record = store.get(job_id)
        ended = record is None or record.state in TERMINAL
    return store.events(job_id, after), ended


async def aiter_events(
    api: Api, stream: EventStream, *, ping_interval: float, run_sync: RunSync
) -> AsyncIterator[bytes]:
    """The stream for an asyncio server; `run_sync(fn, *args)` runs store reads."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def changed() -> None:
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop closed while this watcher was still subscribed
            pass

    unsubscribe = api.uw.store.notifier.subscribe(stream.job_id, changed)
    after = stream.after
    next_ping = loop.time() + ping_interval
    check_ended = True
    api.streams(+1)
    try:
        yield RETRY
        while True:
            wake.clear()
            events, ended = await run_sync(_read, api, stream.job_id, after, check_ended)
            if events:
                yield b"".join(format_event(e, tracebacks=api.tracebacks) for e in events)
                after = events[-1].seq
                if events[-1].kind is EventKind.DONE:
                    return
                continue
            if ended:
                return
            timeout = max(0.0, min(next_ping - loop.time(), api.poll_interval))
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                check_ended = False
            except TimeoutError:
                # No wake-up: look at the record too, in case the job was finished or
                # deleted by a process whose changes this notifier does not hear.
                check_ended = True
            if loop.time() >= next_ping:
                yield PING
                next_ping = loop.time() + ping_interval
    finally:
        api.streams(-1)
        unsubscribe()


def iter_events(api: Api, stream: EventStream, *, ping_interval: float) -> Iterator[bytes]:
    """The same stream for a threaded (WSGI) server: blocks this thread while waiting."""
    notifier = api.uw.store.notifier
    after = stream.after
    next_ping = time.monotonic() + ping_interval
    check_ended = True
    api.streams(+1)
    try:
        yield RETRY
        while True:
            seen = notifier.version(stream.job_id)
            events, ended = _read(api, stream.job_id, after, check_ended)
            if events:
                yield b"".join(format_event(e, tracebacks=api.tracebacks) for e in events)
                after = events[-1].seq
                if events[-1].kind is EventKind.DONE:
                    return
                continue
            if ended:
                return
            timeout = max(0.0, min(next_ping - time.monotonic(), api.poll_interval))
            check_ended = notifier.wait(stream.job_id, seen, timeout) == seen
            if time.monotonic() >= next_ping:
                yield PING
                next_ping = time.monotonic() + ping_interval
    finally:
        api.streams(-1)
