"""Exceptions raised by underway.

The tree::

    UnderwayError
     ├── ConfigurationError      bad store URL, unusable database path, missing extra
     ├── StoreUnavailable        the store cannot be reached right now (retry later)
     ├── Unauthorized            a server refused the token (client side)
     ├── TaskNotFound            no task of that name is registered
     ├── JobNotFound             no job with that id (or not visible to this owner)
     ├── ValidationError         parameters that do not fit the task's signature
     │    └── IdempotencyConflict  same idempotency key, other parameters
     ├── JobStateError           the operation does not fit the job's state
     │    ├── JobFinished          cancel of a job that already succeeded or failed
     │    └── JobActive            delete of a job still queued or running
     ├── QueueFull               the queue refuses more jobs
     ├── JobFailed               wait() on a job that failed
     ├── JobCancelled            wait() on a job that was cancelled
     └── OutputTooLarge          job.emit() of an item over the size limit

    Cancelled (BaseException)    raised inside a task by job.check_cancelled()

Jobs also end with error types that are not exceptions in this process: `Timeout`,
`WorkerLost`, `Cancelled`, `WorkerCrashed` (a child process died), `TaskNotImportable`
(a child could not import the task), `ResultNotSerializable`, `ExecutorError`.

`Cancelled` derives from `BaseException` so that a task's broad ``except Exception``
does not swallow a cancellation by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import JobRecord


class UnderwayError(Exception):
    """Base class of every error underway raises on purpose."""

    code = "error"


class ConfigurationError(UnderwayError):
    code = "configuration-error"


class StoreUnavailable(UnderwayError):
    code = "store-unavailable"

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(UnderwayError):
    code = "unauthorized"


class TaskNotFound(UnderwayError):
    code = "task-not-found"

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        self.name = name
        self.known = sorted(known)
        listing = ", ".join(self.known) if self.known else "none registered"
        super().__init__(f"unknown task {name!r} (known tasks: {listing})")


class JobNotFound(UnderwayError):
    code = "job-not-found"

    def __init__(self, job_id: str, *, lost_at: str | None = None) -> None:
        self.job_id = job_id
        self.lost_at = lost_at  # RFC 3339: the store lost its data then (see `Store`)
        if lost_at is None:
            super().__init__(f"no job with id {job_id!r}")
        else:
            super().__init__(
                f"no job with id {job_id!r}: the store lost its data at {lost_at} (Redis "
                "restarted without persistence, or was flushed), and this job was "
                "submitted before"
            )


class ValidationError(UnderwayError):
    """Parameters that do not fit; `errors` has one entry per field."""

    code = "validation-failed"

    def __init__(self, message: str, errors: Sequence[dict[str, Any]] = ()) -> None:
        self.errors = list(errors)
        if self.errors:
            detail = "; ".join(
                f"{e.get('field') or '(body)'}: {e.get('message')}" for e in self.errors
            )
            message = f"{message}: {detail}"
        super().__init__(message)


class IdempotencyConflict(ValidationError):
    code = "idempotency-conflict"


class JobStateError(UnderwayError):
    code = "job-state"

    def __init__(self, message: str, record: JobRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


class JobFinished(JobStateError):
    code = "job-finished"


class JobActive(JobStateError):
    code = "job-active"


class QueueFull(UnderwayError):
    code = "queue-full"


class JobFailed(UnderwayError):
    """The job ended in `failed`; `record.error` holds type, message and traceback."""

    code = "job-failed"

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        err = record.error
        text = f"{err.type}: {err.message}" if err else "failed"
        super().__init__(f"job {record.id} failed: {text}")


class JobCancelled(UnderwayError):
    code = "job-cancelled"

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        super().__init__(f"job {record.id} was cancelled")


class OutputTooLarge(UnderwayError):
    code = "output-too-large"


class Cancelled(BaseException):
    """Raised inside a task when its job was asked to stop."""
