"""Shared by the commands: exit codes, errors, loading apps, parsing parameters."""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .. import Underway
from ..records import State

if TYPE_CHECKING:
    pass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130
EXIT_FOR_STATE = {
    State.SUCCEEDED: EXIT_OK,
    State.FAILED: EXIT_FAILED,
    State.CANCELLED: EXIT_CANCELLED,
}

# Long enough for most jobs to end on their own; short enough that drain plus the
# tasks' cancel grace stays under the 30 s a container runtime waits before SIGKILL.
DRAIN_SECONDS = 10.0

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

C = TypeVar("C", bound=Callable[..., Any])


class CliError(Exception):
    """A message for the person at the terminal; printed as one line, no traceback."""


# `underway worker` runs jobs next to the web processes that submit them (and often
# next to the store's server). At a lower priority its jobs take only the CPU that those
# leave: a burst of background work does not slow the requests, and the submitter is
# not held up behind the jobs it feeds, which the worker then claims in batches. Under
# no contention it changes nothing. 5 leaves the worker about a quarter of a core that
# a busy process at the usual priority also wants (CFS weights 335 against 1024), so
# it never starves: its leases are renewed and its jobs go on, more slowly.
NICE = 5


def lower_priority(by: int) -> int | None:
    """Lower this thread's CPU priority (and that of the threads and processes it
    starts afterwards) `by` steps; the niceness it runs at, or None when unchanged.

    Linux weighs a niceness only against the tasks of the same scheduling group, and
    a process that leads a session of its own (as process managers start services)
    is in a group of its own (an autogroup), weighed against the others as a whole:
    there, the group's priority is lowered too. A process that shares its session
    leaves the group alone, since that would slow the session's other processes."""
    if by <= 0 or not hasattr(os, "nice"):
        return None
    niceness = os.nice(by)
    if os.getsid(0) == os.getpid():
        try:
            with open("/proc/self/autogroup", "w") as group:
                group.write(str(niceness))
        except OSError:
            pass  # no autogroups here (not Linux, or turned off): the niceness is all
    return niceness


# -- loading the user's app ------------------------------------------------------------
def load_app(spec: str) -> Underway:
    """The `Underway` instance named by `module:attr` (or the only one in `module`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise CliError(f"bad app {spec!r}: use MODULE:ATTR, e.g. myapp:uw")
    # Like `python -m`, let an app in the current folder be found without installing it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import {module_name!r}: no module named {exc.name!r}") from None
        raise CliError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        raise CliError(
            f"importing {module_name!r} failed{_where_raised(exc)}: {type(exc).__name__}: {exc}"
        ) from None
    if attr:
        try:
            app = getattr(module, attr)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
        if not isinstance(app, Underway):
            kind = type(app).__name__
            raise CliError(f"{spec} is a {kind}, not an Underway app")
        return app
    apps = [v for v in vars(module).values() if isinstance(v, Underway)]
    if len(apps) != 1:
        found = "no" if not apps else "several"
        raise CliError(f"{found} Underway apps in {module_name!r}: name one as {module_name}:ATTR")
    return apps[0]


def _where_raised(exc: BaseException) -> str:
    """` at FILE:LINE`: the deepest frame of the traceback in the user's own code (not
    in Python's import machinery, the standard library or installed packages). A
    SyntaxError names its place in its own message."""
    if isinstance(exc, SyntaxError):
        return ""
    installed = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(("<", *installed))
    ]
    if not frames:
        return ""
    return f" at {frames[-1].filename}:{frames[-1].lineno}"


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` arguments; a value is JSON when it parses as JSON, else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CliError(f"bad parameter {pair!r}: use key=value (e.g. count=3 name=alice)")
        if key in params:
            raise CliError(f"parameter {key!r} is given twice")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def sqlite_file(url: str | None) -> Path | None:
    """The file a SQLite store URL names (None for other stores)."""
    if not url:
        return Path("underway.db")
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("///"):
            path = path[3:]
        elif path.startswith("//"):
            path = path[2:]
        return Path(path) if path else None
    return None if "://" in url else Path(url)


# -- where the jobs are: a local store or a remote server ----------------------------
