"""Prompt wake-ups between the processes that share one SQLite file, without a server.

Each store that opens the file binds a Unix datagram socket in one folder per database
file: `<db>.wake/` beside the file, or, when that folder cannot be made or its path is
too long for a socket address, `<tmp>/underway-<device>-<inode>.wake/`. After each
committed write the writer sends one small datagram to every other socket there,
naming what changed:

- `k` + job ids and/or the work key, separated by newlines: wake the watchers of those
  jobs (and one idle worker slot per process for the work key);
- `e`: something may have been missed, wake every waiter (sent to a peer whose buffer
  was full, once it has room again);
- `p`: a probe (sent when cleaning up) and `q` (the owner closes): no wake-up.

Sends never block: a full peer is remembered and sent `e` as soon as it has room, a
socket nobody listens on any more (its process died) is unlinked, a vanished one is
forgotten. The notification is sent after COMMIT, so whoever it wakes reads the change.
Whatever the channel cannot promise (a writer killed between its COMMIT and its send, a
writer that does not speak this protocol) is covered by the store's slow fallback poll.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterable

from ..feed import WORK

# AF_UNIX addresses hold 108 bytes with the terminating NUL.
_MAX_ADDRESS = 107
# A folder listing is trusted only once the folder's mtime is this far in the past: a
# socket bound within the same timestamp tick as the listing would not move the mtime.
# Linux stamps files from a clock that ticks every 1-10 ms; a file system that keeps
# whole seconds only (mtime without a fraction) needs two seconds.
_RACY_NS = 50_000_000
_RACY_COARSE_NS = 2_000_000_000
# A listing is used without looking at the folder again for this long, so that a
# burst of writes costs one stat(2), not one each, and one listing while the folder's
# mtime is too recent to trust (after any process bound: each send listed the folder
# again then, which made an embedded round trip a fifth slower for the first 50 ms
# after a store opened). A newcomer binds, then reads the database, then reads it once
# more `SETTLE` later: a writer that did not list it yet committed before its listing
# expired, so within `LIST_FOR` of the bind, and that second read sees the commit
# (see `_current_peers`).
LIST_FOR_NS = 2_000_000
SETTLE = 0.01
_CHUNK = 32_000  # bytes of keys per datagram (well under the default socket buffers)
_SUFFIX = ".s"
_RECV = 65_536


def wake_folder(db_path: str) -> str | None:
    """The folder of sockets for `db_path`, made if needed; None when no folder works."""
    real = os.path.realpath(db_path)
    beside = real + ".wake"
    name_room = 32  # "/<pid>-<token>.s" with room to spare
    if len(beside) + name_room <= _MAX_ADDRESS and _usable(beside):
        return beside
    try:
        st = os.stat(real)
    except OSError:
        return None
    keyed = os.path.join(tempfile.gettempdir(), f"underway-{st.st_dev}-{st.st_ino}.wake")
    if len(keyed) + name_room <= _MAX_ADDRESS and _usable(keyed):
        return keyed
    return None


def _usable(folder: str) -> bool:
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except OSError:
        return False
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


class WakeChannel:
    """This store's socket in the folder, and the sending side towards the others."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._send_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._send_sock.setblocking(False)
        self._recv_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._lock = threading.Lock()
        self._peers: list[str] = []
        self._listed_mtime = -1
        self._listing_trusted = False
        self._listed_at = 0  # monotonic ns of the last look at the folder
        self._owed: set[str] = set()  # peers that missed a datagram (their buffer was full)
        self.path = ""
        self._ino = 0
        try:
            self._bind()
        except OSError:
            self._send_sock.close()
            self._recv_sock.close()
            raise
        self.clean_stale()

    def _bind(self) -> None:
        name = f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        path = os.path.join(self.folder, name)
        for _ in range(3):
            try:
                self._recv_sock.bind(path)
                break
            except FileNotFoundError:  # the last one out removed the folder: make it again
                if not _usable(self.folder):
                    raise
        else:
            raise FileNotFoundError(errno.ENOENT, "cannot bind in", self.folder)
        self.path = path
        self._ino = os.stat(path).st_ino

    # -- sending -----------------------------------------------------------------------
    def send(self, keys: Iterable[str]) -> None:
        """Tell every other process on the file that `keys` changed (after COMMIT)."""
        peers = self._current_peers()
        if not peers:
            return
        payloads = _encode(keys)
        for peer in peers:
            if peer in self._owed:
                self._send_to(peer, b"e")
                continue
            for payload in payloads:
                if not self._send_to(peer, payload):
                    break

    def _send_to(self, peer: str, payload: bytes) -> bool:
        """Send without blocking; whether the peer got it."""
        try:
            self._send_sock.sendto(payload, peer)
        except (BlockingIOError, InterruptedError):
            with self._lock:
                self._owed.add(peer)  # it learns as soon as it has room again
            return False
        except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
            self._drop(peer, unlink=True)
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT, errno.ENOTSOCK):
                self._drop(peer, unlink=exc.errno != errno.ENOENT)
            else:
                with self._lock:
                    self._owed.add(peer)
            return False
        else:
            if peer in self._owed:
                with self._lock:
                    self._owed.discard(peer)
            return True

    def _drop(self, peer: str, *, unlink: bool) -> None:
        """Forget a peer; unlink its socket when nobody listens on it any more (a
        name is never reused, so the file is stale for good)."""
        if unlink:
            try:
                os.unlink(peer)
            except OSError:
                pass
        with self._lock:
            self._owed.discard(peer)
            if peer in self._peers:
                self._peers = [p for p in self._peers if p != peer]

    @property
    def owes(self) -> bool:
        return bool(self._owed)

    def pay_debts(self) -> None:
        """Send `e` to the peers that missed a datagram, where they have room now."""
        with self._lock:
            owed = list(self._owed)
        for peer in owed:
            self._send_to(peer, b"e")

    def _current_peers(self) -> list[str]:
        """The other sockets in the folder: listed again whenever the folder changed.

        The order matters for not missing a newcomer: a process binds, then reads the
        database; a writer commits, then looks at the folder. Either the writer sees
        the newcomer's socket, or the newcomer's reads see the commit."""
        looked = time.monotonic_ns()
        if looked - self._listed_at < LIST_FOR_NS:
            return self._peers
        now = time.time_ns()
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            return []
        if mtime == self._listed_mtime and self._listing_trusted:
            self._listed_at = looked
            return self._peers
        try:
            names = [e.name for e in os.scandir(self.folder) if e.name.endswith(_SUFFIX)]
        except OSError:
            return []
        own = os.path.basename(self.path)
        peers = [os.path.join(self.folder, n) for n in names if n != own]
        with self._lock:
            self._peers = peers
            self._listed_mtime = mtime
            racy = _RACY_NS if mtime % 1_000_000_000 else _RACY_COARSE_NS
            self._listing_trusted = now - mtime > racy
            self._listed_at = looked
        return peers

    def clean_stale(self) -> int:
        """Unlink the sockets of processes that are gone; how many were removed."""
        before = len(self._current_peers())
        for peer in list(self._peers):
            self._send_to(peer, b"p")
        self._listed_mtime = self._listed_at = -1
        return before - len(self._current_peers())

    # -- receiving ---------------------------------------------------------------------
    def receive(self, timeout: float) -> tuple[set[str], int, bool] | None:
        """Wait up to `timeout` for datagrams and take all that are queued.

        Returns the job ids named, how many datagrams named the work key, and whether
        to wake everything; None when nothing came."""
        sock = self._recv_sock
        try:
            sock.settimeout(max(0.001, timeout))  # poll(2) underneath: any fd number
            data: bytes | None = sock.recv(_RECV)
        except OSError:  # TimeoutError
            return None
        sock.settimeout(0.0)  # the rest without waiting
        keys: set[str] = set()
        work = 0
        everything = False
        while data is not None:
            kind = data[:1]
            if kind == b"k":
                for key in data[1:].decode("utf-8", "replace").split("\n"):
                    if key == WORK:
                        work += 1
                    else:
                        keys.add(key)
            elif kind == b"e":
                everything = True
            try:
                data = sock.recv(_RECV)
            except OSError:  # BlockingIOError: all taken
                data = None
        return keys, work, everything

    def still_bound(self) -> bool:
        """Whether our socket file is still there (a cleaner may have removed it)."""
        try:
            return os.stat(self.path).st_ino == self._ino
        except OSError:
            return False

    def rebind(self) -> None:
        """Bind afresh under a new name (after our file was removed)."""
        old = self._recv_sock
        self._recv_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        old.close()
        self._bind()
        self._listed_mtime = self._listed_at = -1

    def interrupt(self) -> None:
        """Wake our own receiver (to close)."""
        try:
            self._send_sock.sendto(b"q", self.path)
        except OSError:
            pass

    def close(self) -> None:
        try:
            os.unlink(self.path)
            os.rmdir(self.folder)  # only when we were the last one: not empty otherwise
        except OSError:
            pass
        self._recv_sock.close()
        self._send_sock.close()


def _encode(keys: Iterable[str]) -> list[bytes]:
    """`k` datagrams naming `keys`, each under `_CHUNK` bytes."""
    out: list[bytes] = []
    part: list[bytes] = []
    size = 0
    for key in keys:
        raw = key.encode("utf-8")
        if part and size + len(raw) + 1 > _CHUNK:
            out.append(b"k" + b"\n".join(part))
            part, size = [], 0
        part.append(raw)
        size += len(raw) + 1
    if part:
        out.append(b"k" + b"\n".join(part))
    return out
