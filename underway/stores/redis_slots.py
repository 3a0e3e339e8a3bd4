"""A worker slot's own wake channel on Redis.

A submission that finds a worker slot idle wakes it with a message, and, when it
claimed the job for that slot at once, sends the job's record with it. On the
process's channel, that message wakes the store's subscriber thread, which then
wakes the slot: two wake-ups in the worker process before the job starts. A slot
with a channel of its own reads it itself while it waits for work, so the message
wakes the thread that runs the job, and no other.

The channel's connection belongs to the slot's thread: it reads it while it waits,
and at each claim (a message that came while it was busy is taken then). Whatever
else must wake the slot (its worker stopping, the subscriber reconnecting, a message
on the process's channel from a process that sends none to slot channels) pokes a
pipe that the slot watches beside the socket.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from typing import Any

import redis

from .redis_pubsub import open_subscription

MARKER = "\x00"  # a message that starts with it is a marker (see `SlotChannel.drain`)


class WakePipe:
    """A pipe that wakes a thread waiting in `select()` on `fd`: any thread may `poke`,
    the reader `clear`s it. A poke never writes to a closed descriptor (one that may
    have been reused for another file)."""

    def __init__(self) -> None:
        self.fd, self._w = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._w, False)
        self._lock = threading.Lock()

    def poke(self) -> None:
        with self._lock:
            if self._w < 0:
                return  # closed
            try:
                os.write(self._w, b"\0")
            except OSError:
                pass  # full: a poke is pending

    def clear(self) -> None:
        try:
            while os.read(self.fd, 64):
                pass
        except OSError:
            pass  # empty

    def close(self) -> None:
        with self._lock:
            if self._w < 0:
                return
            for fd in (self.fd, self._w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._w = -1


class SlotChannel:
    """One slot thread's subscription to its own wake channel."""

    def __init__(self, pubsub: Any, name: str, worker: str, thread: str) -> None:
        self.pubsub = pubsub
        self.name = name
        self.worker = worker
        self.thread = thread
        self.lock = threading.Lock()  # held by whoever reads the connection
        self.closed = False
        self.unlisten: Callable[[], None] | None = None
        self._pipe = WakePipe()

    def poke(self) -> None:
        """Wake the slot if it waits (from any thread; a pending poke is enough)."""
        self._pipe.poke()

    def wait(self, timeout: float, awake: Callable[[], bool]) -> list[str]:
        """The messages that came, waiting up to `timeout` for one, or for a poke;
        not at all when `awake()` says the slot was woken already (asked after the
        pokes so far are cleared, so none is missed). Raises what the connection
        raises when it is lost."""
        with self.lock:
            if self.closed:
                return []
            self._pipe.clear()
            if not awake():
                sock = self.pubsub.connection._sock
                if sock is None:
                    raise redis.ConnectionError("the slot's channel is not connected")
                select.select((sock, self._pipe.fd), (), (), timeout)
            return self._read()

    def take(self) -> list[str]:
        """The messages that came while the slot was busy (none waited for)."""
        with self.lock:
            if self.closed:
                return []
            return self._read()

    def drain(self, send_marker: Callable[[str], object], timeout: float) -> list[str]:
        """Every message sent to the channel before now: a marker is sent, and the
        channel read up to it (or for `timeout`). Call it holding `lock`, after the
        slot's idle word is gone, so that nothing comes after the marker."""
        token = f"{MARKER}{os.getpid()}:{id(self)}"
        send_marker(token)
        out: list[str] = []
        while True:
            message = self.pubsub.get_message(timeout=timeout)
            if message is None:
                return out
            data = message.get("data")
            if message.get("type") != "message" or not isinstance(data, str):
                continue
            if data == token:
                return out
            if not data.startswith(MARKER):
                out.append(data)

    def close(self) -> None:
        """Close the connection and the pipe (holding `lock`)."""
        self.closed = True
        if self.unlisten is not None:
            self.unlisten()
            self.unlisten = None
        try:
            self.pubsub.close()
        except (redis.RedisError, OSError):
            pass
        self._pipe.close()

    def _read(self) -> list[str]:
        out: list[str] = []
        while True:
            message = self.pubsub.get_message(timeout=0)
            if message is None:
                return out
            data = message.get("data")
            if message.get("type") != "message" or not isinstance(data, str):
                continue
            if data and not data.startswith(MARKER):  # a marker of a drain that gave up
                out.append(data)


def open_slot_channel(
    client: redis.Redis[str], name: str, worker: str, thread: str, wait: float
) -> SlotChannel:
    """Subscribe to `name`, returning once Redis confirms it (a message sent to the
    channel after that reaches it). Raises what the client raises."""
    pubsub = open_subscription(client)
    try:
        pubsub.subscribe(name)
        while True:
            message = pubsub.get_message(timeout=wait)
            if message is None:
                raise redis.TimeoutError(f"no confirmation of the subscription to {name}")
            if message.get("type") == "subscribe":
                break
    except BaseException:
        try:
            pubsub.close()
        except (redis.RedisError, OSError):
            pass
        raise
    return SlotChannel(pubsub, name, worker, thread)
