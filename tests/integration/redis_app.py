"""An app for `underway worker` on Redis; the store comes from the command line."""

from __future__ import annotations

from underway import Underway

uw = Underway("memory://")


@uw.task
def noop() -> None:
    return None
