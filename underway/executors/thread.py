"""The thread executor: jobs run on threads of the worker's own process.

The worker's slots call `call()`, which runs the task on the slot's own thread, so a
job costs no hand-off between threads. `run()` serves callers that want a pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..job import Job
from .base import Done, Executor, Outcome, execute, failure

if TYPE_CHECKING:
    from ..tasks import Task


class ThreadExecutor(Executor):
    """Cancellation is cooperative: a thread cannot be stopped from outside, so a job
    that ignores its cancel request is given up on by the worker after the grace period
    (its eventual result is discarded)."""

    name = "thread"

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.size, thread_name_prefix="underway-job")

    def run(self, job: Job, task: Task, done: Done) -> None:
        if self._pool is None:
            self.start()
        assert self._pool is not None

        def call() -> None:
            try:
                outcome = execute(task, job)
            except BaseException as exc:  # never lose a job to a bug in here
                outcome = failure(exc)
            done(outcome)

        self._pool.submit(call)

    def call(self, job: Job, task: Task) -> Outcome:
        # The worker's slot thread is already a thread of its own: run right here.
        return execute(task, job)

    def shutdown(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
