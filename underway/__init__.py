"""underway: long operations for Python web applications.

Declare tasks, submit jobs from any code, watch their progress and output, cancel
them and collect their results; jobs live in SQLite (default) or Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .app import Underway
from .errors import (
    Cancelled,
    ConfigurationError,
    IdempotencyConflict,
    JobActive,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobNotFound,
    JobStateError,
    OutputTooLarge,
    QueueFull,
    StoreUnavailable,
    TaskNotFound,
    Unauthorized,
    UnderwayError,
    ValidationError,
)
from .handle import JobHandle
from .job import Job
from .records import ACTIVE, TERMINAL, ErrorInfo, Event, EventKind, JobRecord, Progress, State
from .tasks import Task

if TYPE_CHECKING:
    from .client import Client

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The HTTP client needs httpx (the `server` extra): import it only when asked for.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'underway' has no attribute {name!r}")


__all__ = [
    "ACTIVE",
    "TERMINAL",
    "Cancelled",
    "Client",
    "ConfigurationError",
    "ErrorInfo",
    "Event",
    "EventKind",
    "IdempotencyConflict",
    "Job",
    "JobActive",
    "JobCancelled",
    "JobFailed",
    "JobFinished",
    "JobHandle",
    "JobNotFound",
    "JobRecord",
    "JobStateError",
    "OutputTooLarge",
    "Progress",
    "QueueFull",
    "State",
    "StoreUnavailable",
    "Task",
    "TaskNotFound",
    "Underway",
    "Unauthorized",
    "UnderwayError",
    "ValidationError",
    "__version__",
]
