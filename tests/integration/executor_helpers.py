"""What the tests of the child-process executors share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from underway import EventKind, JobHandle, Underway


def register(uw: Underway, executor: str, func: Callable[..., Any], **settings: Any) -> str:
    """Register `func` on `executor` with a short cancel grace; its task name."""
    settings.setdefault("cancel_grace", 0.5)
    task = uw.task(executor=executor, **settings)(func)
    return task.name


def first_output(handle: JobHandle) -> Any:
    """The job's first output item, as soon as it is emitted."""
    for event in handle.events(timeout=10):
        if event.kind is EventKind.OUTPUT:
            return event.data["item"]
    raise AssertionError(f"job {handle.id} ended without output")
