"""A pub/sub subscription read straight from its socket.

Worker slots and the store's subscriber thread look at their subscriptions often:
a slot looks at its wake channel at every claim and after every wake-up, and most
looks find nothing. redis-py's `PubSub.get_message` goes through the client's
command, retry and health-check layers on each call; on a Redis worker running
short jobs one at a time, those looks took about a fifth of the process's CPU.

Here redis-py makes the connection (TCP or Unix socket, AUTH, SELECT, the client's
handshake) and hiredis's parser reads it: a look that finds nothing is one `read`
that returns EAGAIN, and a message is one parsed reply. It is used where that holds
as is: hiredis installed, RESP2, a plain socket with a timeout (Python then keeps
its descriptor non-blocking). Elsewhere (TLS, RESP3, no hiredis) `open_subscription`
returns the client's own `PubSub`, which offers the same calls.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from typing import Any

import redis

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - the `redis` extra brings it
    hiredis = None

CHUNK = 65536  # bytes read from the socket at a time


class Subscription:
    """One pub/sub connection, read by one thread at a time; any thread may
    subscribe or unsubscribe meanwhile. Messages come as `PubSub.get_message`
    gives them: dicts with `type`, `pattern`, `channel` and `data`."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection  # redis-py's Connection (`_sock` is read by callers)
        encoder = connection.encoder
        self._reader = hiredis.Reader(
            protocolError=redis.ConnectionError,
            replyError=redis.ResponseError,
            encoding=encoder.encoding if encoder.decode_responses else None,
            errors=encoder.encoding_errors,
        )
        self._send_lock = threading.Lock()

    def subscribe(self, *channels: str) -> None:
        self._send("SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: str) -> None:
        if channels:
            self._send("UNSUBSCRIBE", *channels)

    def _send(self, *args: str) -> None:
        packed = self.connection.pack_command(*args)
        with self._send_lock:
            self.connection.send_packed_command(packed, check_health=False)

    def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        """The next message, waiting up to `timeout` seconds for one; None when none
        came. Raises `redis.ConnectionError` when the connection is lost."""
        deadline: float | None = None
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return _message(reply)
            fd = self._fd()
            if self._fill(fd):
                continue
            if timeout <= 0:
                return None
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline:
                return None
            select.select((fd,), (), (), deadline - now)

    def _fd(self) -> int:
        """The socket's descriptor; raises when the connection was closed (a closed
        descriptor's number may belong to another file by now)."""
        sock = self.connection._sock
        fd = -1 if sock is None else sock.fileno()
        if fd < 0:
            raise redis.ConnectionError("the subscription's connection is closed")
        return int(fd)

    def _fill(self, fd: int) -> bool:
        """Feed the parser what the socket holds now; False when it holds nothing."""
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise redis.ConnectionError(f"error reading the subscription: {exc}") from None
        if not data:
            raise redis.ConnectionError("the subscription's connection was closed by the server")
        self._reader.feed(data)
        return True

    def close(self) -> None:
        self.connection.disconnect()


def _message(reply: Any) -> dict[str, Any]:
    """A reply as `PubSub.get_message` gives it (the store subscribes to channels only,
    never to patterns: `message`, `subscribe` and `unsubscribe` replies, 3 items each)."""
    if isinstance(reply, redis.ResponseError):
        raise reply
    if not isinstance(reply, list) or len(reply) != 3:
        return {"type": None, "pattern": None, "channel": None, "data": reply}
    return {"type": reply[0], "pattern": None, "channel": reply[1], "data": reply[2]}


def open_subscription(client: redis.Redis[str]) -> Any:
    """A `Subscription` on a new connection of `client`'s, connected; the client's own
    `PubSub` (not connected yet) where one cannot be used. Raises what connecting
    raises."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if hiredis is None or str(kwargs.get("protocol") or 2) != "2":
        return client.pubsub()
    connection = pool.connection_class(**kwargs)
    connection.connect()
    sock = connection._sock
    plain = isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
    if not plain or sock.gettimeout() is None:  # a blocking descriptor: read() would wait
        connection.disconnect()
        return client.pubsub()
    try:
        return Subscription(connection)
    except (TypeError, AttributeError):  # an older hiredis or redis-py than ours
        connection.disconnect()
        return client.pubsub()
