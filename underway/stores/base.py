"""The store seam: where jobs, their events and their output live.

A store owns atomic claiming (one job, one worker), leases, cancel flags,
idempotency keys, expiry and waiting for change. Every store passes the contract
suite in `tests/contract/`. Nothing outside `stores/` knows a table or key name.

All methods are synchronous and thread-safe. Times are epoch seconds (floats).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..feed import WORK, ChangeFeed
from ..records import ErrorInfo, Event, EventKind, JobRecord, Page, Progress, State


@dataclass(frozen=True, kw_only=True, slots=True)
class Finish:
    """The end of a job, for `Store.finish_and_claim` (see `Store.finish`)."""

    job_id: str
    state: State
    result: Any = None
    error: ErrorInfo | None = None
    keep_for: float
    started_at: float | None = None  # when the worker started it (see `claim`)


class Store(ABC):
    """The interface every store implements. See the module docstring."""

    url: str
    notifier: ChangeFeed

    # -- submission ------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Insert a queued job and its first `state` event.

        When `record.idempotency_key` names a job that still exists, nothing is
        inserted and `(that job, False)` is returned. When `record.supersede_key` is
        set, every active job with the same key is asked to cancel first.
        Returns `(record, True)` for a new job.
        """

    def enqueue_many(self, records: Sequence[JobRecord]) -> None:
        """Store new queued jobs, none with an idempotency or a supersede key.

        Where the store can, in one go (one SQLite transaction; one Redis script call
        per `MANY_CHUNK` jobs). This default stores them one by one.
        """
        for record in records:
            self.enqueue(record)

    MANY_CHUNK = 1000

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job, with `position` filled in while queued; None when unknown."""

    @abstractmethod
    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first; `cursor` is the `next_cursor` of the previous page."""

    @abstractmethod
    def count(self, *, state: State | None = None) -> int:
        """How many jobs (in `state`) the store holds."""

    # -- workers ---------------------------------------------------------------------
    @abstractmethod
    def claim(
        self,
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> list[JobRecord]:
        """Atomically move up to `max_jobs` due, queued jobs of `tasks` to running.

        Order: priority, then id (oldest first). A task named in `limits` never has
        more than that many jobs running at once, counted across all workers. Each
        claimed job gets `attempt + 1`, `worker` and a lease until `now + lease`, and
        a `state` event. The first also gets `started_at`: the others wait in the
        worker, and a job without `started_at` never started, as far as the store
        knows. If its worker is lost, `recover_lost` requeues it and gives its
        attempt back. Finishing it sets `started_at` from the `Finish`.
        """

    @abstractmethod
    def renew(self, *, worker: str, job_ids: Collection[str], lease: float, now: float) -> set[str]:
        """Extend the leases `worker` holds; return the ids among them with a cancel request."""

    @abstractmethod
    def save_progress(self, job_id: str, progress: Progress, now: float) -> None:
        """Store the latest progress snapshot and append a `progress` event."""

    @abstractmethod
    def append(self, job_id: str, items: Sequence[tuple[EventKind, str]], now: float) -> None:
        """Append `output`/`log` items (serialised JSON) in order; counts output items."""

    @abstractmethod
    def finish(
        self,
        job_id: str,
        *,
        worker: str | None,
        state: State,
        result: Any,
        error: ErrorInfo | None,
        now: float,
        keep_for: float,
        started_at: float | None = None,
    ) -> bool:
        """Move a running job (held by `worker`, or anyone's when None) to a terminal state.

        `started_at` fills in the start of a job claimed without one (see `claim`).

        Appends `state` and `done` events. False when the job was not running under
        that worker (already finished, lost, deleted): nothing changes then.
        """

    def finish_and_claim(
        self,
        finishes: Sequence[Finish],
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> list[JobRecord]:
        """`finish` each of `finishes` (jobs `worker` holds), then `claim` up to `max_jobs`.

        A worker with a backlog records a batch of ends and takes its next jobs in one
        go. Stores do it in one transaction or round trip where they can. Finishing is
        safe to repeat, so after an error the caller may record the ends one by one.
        This default makes the separate calls.
        """
        for item in finishes:
            self.finish(
                item.job_id,
                worker=worker,
                state=item.state,
                result=item.result,
                error=item.error,
                now=now,
                keep_for=item.keep_for,
                started_at=item.started_at,
            )
        if max_jobs <= 0:
            return []
        return self.claim(
            worker=worker, tasks=tasks, limits=limits, lease=lease, now=now, max_jobs=max_jobs
        )

    @abstractmethod
    def retry(
        self, job_id: str, *, worker: str, run_at: float, error: ErrorInfo, now: float
    ) -> bool:
        """Send a running job back to the queue, due at `run_at`, after a failed attempt."""

    def release(self, job_ids: Collection[str], *, worker: str, now: float) -> None:
        """Send running jobs `worker` claimed but never started back to the queue, due
        now, with their attempt given back (a worker that stops hands them back)."""
        error = ErrorInfo(type="Shutdown", message="the worker stopped; job handed back")
        for job_id in job_ids:  # stores override this to give the attempt back too
            self.retry(job_id, worker=worker, run_at=now, error=error, now=now)

    # -- callers ---------------------------------------------------------------------
    @abstractmethod
    def request_cancel(self, job_id: str, now: float) -> JobRecord | None:
        """Queued: cancelled at once. Running: flag set. Terminal: unchanged. None if unknown."""

    @abstractmethod
    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        """Merge `changes` into the job's `meta` atomically (e.g. webhook attempts)."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job with its events and output (callers check the state first)."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """The job's events with `seq > after`, in order, without waiting."""

    @abstractmethod
    def output(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Any]:
        """Output items with index >= after (0-based), as Python values, in order."""

    def wait_events(self, job_id: str, after: int, timeout: float) -> list[Event]:
        """The events after `after`, waiting up to `timeout` seconds for one to come."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            seen = self.notifier.version(job_id)
            found = self.events(job_id, after)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self.notifier.wait(job_id, seen, min(left, self.poll_interval))

    # -- housekeeping ----------------------------------------------------------------
    @abstractmethod
    def recover_lost(self, now: float) -> list[JobRecord]:
        """Running jobs whose lease ran out: requeued while attempts remain, else failed
        with `WorkerLost` (cancelled when a cancel was requested). A job that never
        started (no `started_at`) is requeued with its attempt given back. Returns them,
        updated."""

    @abstractmethod
    def purge(self, now: float, *, finished_before: float | None = None) -> int:
        """Delete finished jobs whose `expires_at` has passed (or that finished before
        `finished_before`), with their events, output and idempotency keys."""

    poll_interval: float = 0.25  # how often waiters look for changes made elsewhere

    def wait_for_work(self, seen: int, timeout: float) -> int:
        """Block until new work may be there (or `timeout`); returns the new version."""
        return self.notifier.wait(WORK, seen, min(timeout, self.poll_interval))

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    def close(self) -> None:
        """Release connections and background threads."""
