"""The store seam: where jobs, their events and their output live.

A store owns atomic claiming (one job, one worker), leases, cancel flags,
idempotency keys, expiry and waiting for change. Every store passes the contract
suite in `tests/contract/`. Nothing outside `stores/` knows a table or key name.

All methods are synchronous and thread-safe. Times are epoch seconds (floats).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .. import lifecycle
from .._util import loads
from ..errors import StoreUnavailable
from ..feed import WORK, ChangeFeed
from ..records import (
    EMPTY_PROGRESS,
    Decision,
    ErrorInfo,
    Event,
    EventKind,
    Fence,
    JobRecord,
    Page,
    Progress,
    State,
)


def listing_filter(
    *,
    task: str | None,
    state: State | None,
    owner: str | None,
    cursor: str | None,
    mark: str,
) -> tuple[str, list[Any]]:
    """The WHERE clause (empty, or starting with " WHERE ") and its arguments for a
    newest-first job listing, in a SQL store whose parameter mark is `mark`."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("task", task), ("owner", owner)):
        if value is not None:
            where.append(f"{column} = {mark}")
            args.append(value)
    if state is not None:
        where.append(f"state = {mark}")
        args.append(State(state).value)
    if cursor:
        where.append(f"id < {mark}")
        args.append(cursor)
    return (" WHERE " + " AND ".join(where) if where else ""), args


log = logging.getLogger("underway.stores")


def merged_meta(stored: str | None, changes: Mapping[str, Any]) -> dict[str, Any]:
    """A job's meta (its stored JSON text, or None) with `changes` merged in, as every
    store's `update_meta` writes it: each key named takes its new value whole (an
    object replaces the old one, a null stays), and the others are kept as they were."""
    return {**(loads(stored) if stored else {}), **changes}


class Store(ABC):
    """The interface every store implements. See the module docstring."""

    url: str
    notifier: ChangeFeed
    # What the store's driver raises, besides StoreUnavailable, when a write fails.
    driver_errors: tuple[type[Exception], ...] = ()
    # Once a worker slot has waited for jobs to gather (`Worker.linger`), it asks for a
    # whole batch rather than as many as its last claim found: where a claim is a round
    # trip to a server that every process shares, more jobs a claim spare it. Not where
    # a claim is a local transaction that submissions wait behind (SQLite): a longer one
    # holds them up.
    batch_after_linger: bool = False
    # Does every submission reach this process as news of work (`WORK`), even while
    # its slots are busy? Then a slot letting jobs gather stops as soon as they stop
    # coming (`Worker._gather`); else it waits the whole `Worker.linger`.
    announces_each_job: bool = False

    # -- submission ------------------------------------------------------------------
    @abstractmethod
    def enqueue(
        self, record: JobRecord, events: Sequence[tuple[EventKind, str]]
    ) -> tuple[JobRecord, bool, list[str]]:
        """Insert a queued job with its first `events`.

        When `record.idempotency_key` names a job that still exists, nothing is
        inserted and `(that job, False, [])` is returned. When `record.supersede_key`
        is set, the job is registered under it and the ids of the other active jobs
        registered under it come back third (the engine cancels them).
        Returns `(record, True, superseded)` for a new job.
        """

    def enqueue_many(
        self, records: Sequence[JobRecord], events: Sequence[tuple[EventKind, str]]
    ) -> None:
        """Store new queued jobs, none with an idempotency or a supersede key, each with
        `events`. Where the store can, in one go (one SQLite transaction; one Redis
        script call per `MANY_CHUNK` jobs). This default stores them one by one.
        """
        for record in records:
            self.enqueue(record, events)

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

    @abstractmethod
    def running_of(self, task: str) -> int:
        """How many jobs of `task` are running now (for its concurrency limit)."""

    # -- workers' presence -----------------------------------------------------------
    def heartbeat(self, worker: str, tasks: Collection[str], until: float) -> None:
        """Say that `worker` serves `tasks` until `until` (0: it stopped)."""

    def live_workers(self, now: float) -> dict[str, list[str]] | None:
        """The workers whose heartbeat runs past `now`, with their tasks; None when
        this store does not know."""
        return None

    # -- state changes -----------------------------------------------------------------
    @abstractmethod
    def apply_and_claim(
        self,
        decisions: Sequence[Decision],
        *,
        worker: str,
        tasks: Collection[str],
        limits: Mapping[str, int],
        lease: float,
        now: float,
        max_jobs: int = 1,
    ) -> tuple[list[bool], list[JobRecord]]:
        """Apply `decisions` (see `Decision`), then claim up to `max_jobs` jobs: one
        transaction or round trip where the store can. Returns whether each decision
        applied (its guard held), and the claimed jobs.

        A claim atomically moves due, queued jobs of `tasks` to running, in order of
        priority, then id (oldest first). A task named in `limits` never has more than
        that many jobs running at once, counted across all workers. Each claimed job
        gets `attempt + 1` (its fence is `(worker, attempt)`), `worker`, a lease until
        `now + lease`, `started_at = now`, a fresh output segment (`output_count` 0),
        and one `state` event `{"state": "running", "attempt": N}`.
        """

    def apply(self, decisions: Sequence[Decision], now: float) -> list[bool]:
        """Apply `decisions` without claiming; whether each applied."""
        done, _ = self.apply_and_claim(
            decisions, worker="", tasks=(), limits={}, lease=0.0, now=now, max_jobs=0
        )
        return done

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
        """Claim up to `max_jobs` jobs (see `apply_and_claim`)."""
        _, claimed = self.apply_and_claim(
            (), worker=worker, tasks=tasks, limits=limits, lease=lease, now=now, max_jobs=max_jobs
        )
        return claimed

    @abstractmethod
    def renew(
        self, *, worker: str, fences: Mapping[str, int], lease: float, now: float
    ) -> tuple[set[str], set[str]]:
        """Extend the leases `worker` holds (job id -> attempt). Returns the ids it
        still holds, and those among them with a cancel request."""

    @abstractmethod
    def save_progress(self, job_id: str, fence: Fence, progress: Progress, now: float) -> bool:
        """Store the latest progress snapshot and append a `progress` event, while the
        job is running under `fence`; False (nothing written) otherwise."""

    @abstractmethod
    def append(
        self, job_id: str, fence: Fence, items: Sequence[tuple[EventKind, str]], now: float
    ) -> bool:
        """Append `output`/`log` items (serialised JSON) to the attempt's segment, in
        order, while the job is running under `fence`; False (nothing written) else."""

    @abstractmethod
    def expired(self, now: float, limit: int = 500) -> list[JobRecord]:
        """Running jobs whose lease ran out before `now` (for `lifecycle.lost`)."""

    # -- callers ---------------------------------------------------------------------
    @abstractmethod
    def update_meta(self, job_id: str, changes: Mapping[str, Any]) -> bool:
        """Merge `changes` into the job's `meta` atomically (e.g. webhook attempts), as
        `merged_meta` does."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job with its events and output (callers check the state first)."""

    @abstractmethod
    def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """The job's events with `seq > after`, in order, without waiting."""

    @abstractmethod
    def output(
        self, job_id: str, attempt: int | None = None, after: int = 0, limit: int = 1000
    ) -> list[Any]:
        """Output items of `attempt` (default: the job's latest) with index >= after
        (0-based within the attempt), as Python values, in order."""

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
    def purge(self, now: float, *, finished_before: float | None = None) -> int:
        """Delete finished jobs whose `expires_at` has passed (or that finished before
        `finished_before`), with their events, output and idempotency keys."""

    poll_interval: float = 0.25  # how often waiters look for changes made elsewhere

    def wait_for_work(self, seen: int, timeout: float) -> int:
        """Block until new work may be there (or `timeout`); returns the new version."""
        return self.notifier.wait(WORK, seen, min(timeout, self.poll_interval))

    def slot_done(self) -> None:
        """The calling thread, a worker slot, claims no more: the store may let go of
        what it keeps for it (and must not let a job claimed for it go unseen)."""

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    def lost_data_at(self) -> float | None:
        """When the store was found to have lost its data (a Redis restarted without
        persistence), as far as this process saw; None when it did not."""
        return None

    def close(self) -> None:
        """Release connections and background threads."""

    def hand_back(self, records: Sequence[JobRecord]) -> None:
        """Give back jobs claimed for a worker that will not run them (claimed at their
        submission for a worker that stopped, or whose slots all went into other jobs,
        or for a store that closes): queued again, the attempt the claim counted given
        back, as a worker hands back the jobs it claimed and never started. When the
        store cannot take it, their leases run out and they are recovered."""
        if not records:
            return
        now = time.time()
        decisions = [
            lifecycle.released(r, fence=Fence(worker=r.worker or "", attempt=r.attempt), now=now)
            for r in records
        ]
        errors: tuple[type[Exception], ...] = (StoreUnavailable, *self.driver_errors)
        try:
            applied = self.apply(decisions, now)
        except errors as exc:
            log.warning("could not hand back %d jobs claimed at submission: %s", len(records), exc)
            return
        for record, decision, ok in zip(records, decisions, applied, strict=True):
            lifecycle.log_applied(record, decision, ok)


# A job row as the SQL stores select it: these columns, in this order.
ROW_COLUMNS = (
    "id", "task", "queue", "priority", "state", "params", "progress", "result", "error",
    "cancel_requested", "attempt", "max_attempts", "created_at", "started_at", "finished_at",
    "expires_at", "run_at", "timeout", "keep_for", "output_count", "owner", "idempotency_key",
    "supersede_key", "worker", "lease_until", "meta",
)  # fmt: skip
_STATES = {s.value: s for s in State}


def row_record(row: Sequence[Any], position: int | None = None) -> JobRecord:
    """The record of a job row of `ROW_COLUMNS` (JSON columns as text), and its place in
    its queue while queued."""
    (
        id_, task, queue, priority, state, params, progress, result, error, cancel_requested,
        attempt, max_attempts, created_at, started_at, finished_at, expires_at, run_at, timeout,
        keep_for, output_count, owner, idem, supersede, worker, lease_until, meta,
    ) = row  # fmt: skip
    return JobRecord.from_fields(
        {
            "id": id_,
            "task": task,
            "params": loads(params),
            "state": _STATES[state],
            "progress": EMPTY_PROGRESS if progress is None else Progress.from_dict(loads(progress)),
            "result": loads(result),
            "error": None if error is None else ErrorInfo.from_dict(loads(error)),
            "cancel_requested": bool(cancel_requested),
            "attempt": attempt,
            "max_attempts": max_attempts,
            "created_at": created_at,
            "started_at": started_at,
            "finished_at": finished_at,
            "expires_at": expires_at,
            "output_count": output_count,
            "position": position if state == "queued" else None,
            "owner": owner,
            "queue": queue,
            "priority": priority,
            "run_at": run_at,
            "timeout": timeout,
            "keep_for": keep_for,
            "idempotency_key": idem,
            "supersede_key": supersede,
            "worker": worker,
            "lease_until": lease_until,
            "meta": loads(meta) or {},
            "waiting": None,
        }
    )
