"""A throwaway PostgreSQL server for tests and benchmarks.

Debian's `postgresql` package puts its programs under /usr/lib/postgresql/N/bin;
`initdb` makes a cluster in a temporary folder and `pg_ctl` runs it on a free
loopback port, with its unix socket in that folder too, so it never meets the
machine's own server. PostgreSQL refuses to run as root: when we are root, the
programs run as the `postgres` user (`runuser`), who owns the folder.

`stop()` shuts the server down (clients see their connections end) and `start()`
brings it back on the same port with the same data, which is how the fault tests
take PostgreSQL away for a while.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from .services import free_port


class PostgresServerError(RuntimeError):
    pass


def find_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> float:
        try:
            return float(Path(path).parts[-3])
        except ValueError:
            return 0.0

    if not candidates:
        return None
    return Path(max(candidates, key=version)).parent


class PostgresServer:
    """One private cluster; `url` names its `postgres` database as superuser."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise FileNotFoundError("initdb")
        self.bindir = bindir
        self.port = port or free_port()
        self.settings = dict(settings or {})  # more `-c name=value` server settings
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise FileNotFoundError("runuser")
            try:
                import pwd

                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("a postgres user to run PostgreSQL as") from None
            self._as = [runuser, "-u", "postgres", "--"]
        self._dir = Path(tempfile.mkdtemp(prefix="underway-pg-"))
        self.data = self._dir / "data"
        self.log = self._dir / "server.log"
        if self._as:
            os.chown(self._dir, owner.pw_uid, owner.pw_gid)
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60.0) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, timeout=timeout, cwd=self._dir
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresServerError(
                f"{Path(argv[0]).name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{log}"
            )

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self._dir}",
                "-c max_connections=200",
                # A test server: durability is not what is being tested.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down; `fast` ends every client's connection at once."""
        if not self.running:
            return
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        try:
            self.stop("immediate")
        except PostgresServerError:
            pass
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_schema(url: str, schema: str) -> str:
    """`url` with `?schema=NAME` (the store keeps its tables there)."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def fresh_schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


def drop_schema(url: str, schema: str) -> None:
    """Drop a test's schema with everything in it (best effort: the server may be away)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except psycopg.Error:
        pass


def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Block until the server takes connections (after a restart)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
