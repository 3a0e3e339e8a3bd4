"""The `UNDERWAY` setting of a Django project, checked once at start-up.

    UNDERWAY = {
        "STORE": "sqlite:////srv/app/jobs.db",   # or "redis://host:6379/0"; default ./underway.db
        "WORKERS": 4,                            # jobs run at once by a worker
        "START_WORKERS": True,                   # run jobs inside the web processes
        "ALLOW_ANONYMOUS": False,                # visitors who are not logged in get 401
    }

Every key is optional; an unknown key or a value of the wrong type is an
`ImproperlyConfigured` error naming it, when the project starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .._util import parse_duration


@dataclass(frozen=True, kw_only=True)
class UnderwaySettings:
    store: str | None = None  # store URL; None: Underway's default, ./underway.db
    workers: int = 4  # jobs a worker (embedded or `manage.py underway worker`) runs at once
    start_workers: bool = False  # embedded workers, from the first request a process serves
    allow_anonymous: bool = False  # visitors not logged in share the principal "anonymous"
    tasks_module: str = "tasks"  # the module of each installed app that declares tasks
    lease: float = 30.0  # seconds before a silent worker's jobs are recovered
    drain: float = 10.0  # seconds running jobs get to finish when the process exits
    max_body: int = 1 << 20  # bytes of parameters a submission may send
    max_wait: float = 30.0  # seconds a long poll (`?wait=`, `Prefer: wait=`) may hold
    ping_interval: float = 15.0  # seconds between keep-alive comments on event streams
    tracebacks: bool | None = None  # failed jobs' tracebacks in the API; None: settings.DEBUG


_DURATIONS = frozenset({"lease", "drain", "max_wait", "ping_interval"})
_KEYS = {f.name.upper(): f for f in fields(UnderwaySettings)}


def load_settings(raw: Any) -> UnderwaySettings:
    """`settings.UNDERWAY` (a dict, or None for all defaults), checked."""
    if raw is None:
        return UnderwaySettings()
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("UNDERWAY must be a dict, e.g. {'STORE': 'sqlite:///jobs.db'}")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown UNDERWAY key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _KEYS[key].name
        values[name] = _check(key, name, value)
    return UnderwaySettings(**values)


def _check(key: str, name: str, value: Any) -> Any:
    if name == "store":
        if value is not None and not isinstance(value, str):
            raise ImproperlyConfigured(f"UNDERWAY['{key}'] must be a store URL (a string)")
        return value
    if name == "tasks_module":
        if not isinstance(value, str) or not value:
            raise ImproperlyConfigured(f"UNDERWAY['{key}'] must be a module name")
        return value
    if name == "tracebacks":
        if value is not None and not isinstance(value, bool):
            raise ImproperlyConfigured(f"UNDERWAY['{key}'] must be True, False or None")
        return value
    if name in ("start_workers", "allow_anonymous"):
        if not isinstance(value, bool):
            raise ImproperlyConfigured(f"UNDERWAY['{key}'] must be True or False")
        return value
    if name in _DURATIONS:
        try:
            seconds = parse_duration(value)
        except (TypeError, ValueError):
            seconds = None
        if seconds is None or seconds < 0:
            raise ImproperlyConfigured(
                f"UNDERWAY['{key}'] must be a duration (seconds, or '30s', '5m')"
            )
        return seconds
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImproperlyConfigured(f"UNDERWAY['{key}'] must be a positive integer")
    return value


__all__ = ["UnderwaySettings", "load_settings"]
