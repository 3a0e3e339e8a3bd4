"""Executors: how a job's code runs. Chosen per task from `EXECUTORS` by name."""

from __future__ import annotations

import importlib
from typing import Any

from .base import Executor, Outcome, execute

__all__ = ["EXECUTORS", "Executor", "Outcome", "create_executor", "execute"]

# name -> "module:class", imported on first use so the core import stays light.
EXECUTORS: dict[str, str] = {
    "thread": "underway.executors.thread:ThreadExecutor",
    "process": "underway.executors.process:ProcessExecutor",
    "subprocess": "underway.executors.subprocess:SubprocessExecutor",
}


def create_executor(name: str, **options: Any) -> Executor:
    try:
        target = EXECUTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown executor {name!r} (choose from {', '.join(EXECUTORS)})"
        ) from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    executor: Executor = cls(**options)
    return executor
