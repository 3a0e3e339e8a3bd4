"""A throwaway `redis-server` for tests and benchmarks.

Runs the real binary on a free loopback port, in a temporary folder, without
save points or an append-only file. `stop()` shuts it down with a final save and
`start()` brings it back on the same port with the same data, which is how the
fault tests take Redis away for a while.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .services import free_port


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    def __init__(
        self, *, port: int | None = None, binary: str | None = None, folder: Path | None = None
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server")
        self.binary = found
        self.port = port or free_port()
        # Its data folder: a temporary one of its own, removed by close(), or `folder`.
        self._own_dir = folder is None
        self._dir = (
            folder if folder is not None else Path(tempfile.mkdtemp(prefix="underway-redis-"))
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id (it must be running)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self._dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RedisServerError(f"redis-server exited at start-up: {err.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        """True once the server answers PING with PONG (not LOADING)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down with a final save, so that `start()` finds the same data."""
        if not self.running or self._proc is None:
            return
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"SHUTDOWN SAVE\r\n")
                sock.recv(64)
        except OSError:
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def close(self) -> None:
        self.kill()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
