"""A real full disk for SQLite: a small tmpfs mounted in a temporary folder.

`PRAGMA max_page_count` cannot stand in for it: the limit belongs to the connection
that sets it, so the engine's own connections would go on writing. A tmpfs of a few
megabytes filled with a filler file makes every connection's next write fail with
SQLITE_FULL (the WAL cannot grow), and deleting the filler frees the space again.

Mounting needs root (CAP_SYS_ADMIN), as CI has. Where it cannot mount, the test is
skipped, or fails with UNDERWAY_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.services import missing

FILLER = "filler"


@contextmanager
def small_disk(folder: Path, size: str = "8m") -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        missing("mount (for a small tmpfs)")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        missing(f"a tmpfs mount ({done.stderr.strip() or done.returncode})")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> int:
    """Write a filler file until the file system is full; returns its size."""
    fd = os.open(folder / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    written = 0
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            for _ in range(100_000):  # bounded: the file system is a few megabytes
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def free(folder: Path) -> None:
    (folder / FILLER).unlink()
