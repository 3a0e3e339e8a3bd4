"""underway: long operations for Python web applications.

Declare tasks, submit jobs from any code, watch their progress and output, cancel
them and collect their results; jobs live in SQLite (default) or Redis.
"""

from __future__ import annotations

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
    UnderwayError,
    ValidationError,
)
from .handle import JobHandle
from .job import ACTIVE, TERMINAL, ErrorInfo, Event, EventKind, Job, JobRecord, Progress, State
from .tasks import Task

__version__ = "0.1.0"

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "Cancelled",
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
    "UnderwayError",
    "ValidationError",
    "__version__",
]
