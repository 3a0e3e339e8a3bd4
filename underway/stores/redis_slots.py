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

Once subscribed, nothing but messages comes on that connection, so the slot reads
them off the socket itself (`SocketReplies`, which the store's subscriber thread
uses too), without the client's per-call machinery: that took more of a worker's
time per job than the job's own bookkeeping.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

_Reader: type | None
try:
    from hiredis import Reader as _Reader
except ImportError:  # pragma: no cover - the `redis` extra brings hiredis
    _Reader = None

MARKER = "\x00"  # a message that starts with it is a marker (see `SlotChannel.drain`)
_RECV = 65_536


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


class SocketReplies:
    """The replies that came on a subscribed connection, read off its socket without
    waiting, through the client's own hiredis parser of the connection (so nothing it
    holds is lost), rather than by redis-py's `get_message` (a readiness poll, retries
    and a dict per call). Not usable (`of` returns None) without hiredis, on TLS, or
    when the parser kept a reply of its own for later."""

    def __init__(self, connection: Any, reader: Any, no_reply: Any) -> None:
        self._connection = connection
        self._sock = connection._sock
        self.reader = reader
        self.no_reply = no_reply  # what the parser answers when it needs more bytes

    @classmethod
    def of(cls, connection: Any) -> SocketReplies | None:
        sock = getattr(connection, "_sock", None)
        parser = getattr(connection, "_parser", None)
        reader = getattr(parser, "_reader", None)
        if _Reader is None or not isinstance(reader, _Reader) or sock is None:
            return None
        if isinstance(sock, ssl.SSLSocket):
            return None
        no_reply = getattr(sys.modules.get(type(parser).__module__), "NOT_ENOUGH_DATA", False)
        if getattr(parser, "_next_response", no_reply) is not no_reply:
            return None
        return cls(connection, reader, no_reply)

    def socket(self) -> Any:
        """The connection's socket; redis's ConnectionError once it is not this one's
        (closed, or connected again by the client: what came before is gone)."""
        sock = self._connection._sock
        if sock is None or sock is not self._sock:
            raise redis.ConnectionError("the subscription's connection was lost")
        return sock

    def read(self) -> list[Any]:
        """Every reply that came so far (lists, as hiredis gives them). Raises redis's
        ConnectionError when the connection is lost."""
        reader = self.reader
        sock = self.socket()
        # A socket with a timeout (the client's usual) waits for data inside recv()
        # before reading, whatever the flags; its descriptor is non-blocking already,
        # so it is read directly.
        fd = sock.fileno() if sock.gettimeout() is not None else -1
        while True:
            try:
                data = os.read(fd, _RECV) if fd >= 0 else sock.recv(_RECV, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise redis.ConnectionError(f"reading a subscription: {exc}") from None
            if not data:
                raise redis.ConnectionError("the server closed the subscription's connection")
            reader.feed(data)
            if len(data) < _RECV:
                break
        out: list[Any] = []
        no_reply = self.no_reply
        while True:
            reply = reader.gets()
            if reply is no_reply or reply is False:
                return out
            if isinstance(reply, Exception):
                raise redis.ConnectionError(f"the subscription's connection answered: {reply}")
            out.append(reply)


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
        self._replies = SocketReplies.of(pubsub.connection)  # None: the client reads

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
        if self._replies is not None:
            deadline = time.monotonic() + timeout
            while True:
                for data in self._messages(self._replies):
                    if data == token:
                        return out
                    if not data.startswith(MARKER):
                        out.append(data)
                left = deadline - time.monotonic()
                if left <= 0:
                    return out
                select.select((self._replies.socket(),), (), (), left)
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

    @staticmethod
    def _messages(replies: SocketReplies) -> list[str]:
        """The messages' data that came so far (nothing else comes once subscribed)."""
        out: list[str] = []
        for reply in replies.read():
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                data = reply[2]
                out.append(data if isinstance(data, str) else data.decode())
        return out

    def _read(self) -> list[str]:
        if self._replies is not None:
            return [m for m in self._messages(self._replies) if m and not m.startswith(MARKER)]
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
    pubsub = client.pubsub()
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
