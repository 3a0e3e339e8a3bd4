"""Underway: the task registry, the caller's API and the embedded workers' lifecycle."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

from . import lifecycle
from ._util import id_time, new_id, parse_duration, rfc3339
from .callbacks import CallbackDispatcher
from .errors import (
    IdempotencyConflict,
    JobActive,
    JobFinished,
    JobNotFound,
    TaskNotFound,
    ValidationError,
)
from .executors import Executor, create_executor
from .feed import ChangeFeed
from .handle import JobHandle
from .job import MAX_OUTPUT_BYTES
from .records import (
    TERMINAL,
    Event,
    EventKind,
    JobRecord,
    State,
    Waiting,
    latest_segment,
)
from .stores import Page, Store, open_store
from .tasks import Task, make_settings
from .waiting import why_waiting
from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])
# submit()'s own keywords; a task parameter of the same name could not be passed.
SUBMIT_OPTIONS = frozenset(
    {
        "idempotency_key",
        "supersede",
        "owner",
        "priority",
        "delay",
        "on_progress",
        "every",
        "on_done",
    }
)
ProgressCallback = Callable[[JobRecord], None]
STORE_ENV = "UNDERWAY_STORE"


class Underway:
    """One job system: tasks, a store, and (once started) embedded workers.

    `Underway()` uses the store `UNDERWAY_STORE` names, else the SQLite file
    `./underway.db`; `Underway("redis://host/0")` shares jobs between machines;
    `Underway("memory://")` keeps them in memory. An explicit store wins over the
    environment.
    The store is opened on first use, so a module can declare `uw = Underway()` and
    its tasks at import time and a command line can still choose another store.
    """

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        workers: int = 4,
        lease: str | float = 30.0,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        name: str = "underway",
    ) -> None:
        # Argument, then environment, then the default (./underway.db, in open_store).
        self.store_url = store if store is not None else (os.environ.get(STORE_ENV) or None)
        self.name = name
        self.workers = workers
        self.lease = parse_duration(lease) or 30.0
        self.max_output_bytes = max_output_bytes
        self.tasks: dict[str, Task] = {}
        self._store: Store | None = None
        self._executors: dict[str, Executor] = {}
        self._worker: Worker | None = None
        self._lock = threading.RLock()
        self._callbacks: CallbackDispatcher | None = None

    # -- configuration ---------------------------------------------------------------
    @property
    def store(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = open_store(self.store_url)
        return self._store

    def configure(self, *, store: str | Store | None = None, workers: int | None = None) -> None:
        """Choose another store or worker count before first use (the CLI does this)."""
        with self._lock:
            if store is not None:
                if self._store is not None:
                    raise RuntimeError("the store is already open; configure before first use")
                self.store_url = store
            if workers is not None:
                self.workers = workers

    # -- tasks -----------------------------------------------------------------------
    @overload
    def task(self, func: F) -> Task: ...

    @overload
    def task(
        self,
        func: None = None,
        *,
        name: str | None = None,
        executor: str = "thread",
        timeout: str | float | None = None,
        retries: int = 0,
        retry_backoff: str | float = 1.0,
        concurrency: int | None = None,
        keep_for: str | float = "1d",
        queue: str = "default",
        priority: int = 0,
        cancel_grace: str | float = 5.0,
    ) -> Callable[[F], Task]: ...

    def task(
        self,
        func: F | None = None,
        *,
        name: str | None = None,
        executor: str = "thread",
        timeout: str | float | None = None,
        retries: int = 0,
        retry_backoff: str | float = 1.0,
        concurrency: int | None = None,
        keep_for: str | float = "1d",
        queue: str = "default",
        priority: int = 0,
        cancel_grace: str | float = 5.0,
    ) -> Task | Callable[[F], Task]:
        """Register a function as a task: `@uw.task` or `@uw.task(executor="process", ...)`."""

        def register(fn: F) -> Task:
            settings = make_settings(
                executor=executor,
                timeout=timeout,
                retries=retries,
                retry_backoff=retry_backoff,
                concurrency=concurrency,
                keep_for=keep_for,
                queue=queue,
                priority=priority,
                cancel_grace=cancel_grace,
            )
            task_name = name or fn.__name__
            task = Task(fn, name=task_name, settings=settings, app=self)
            clash = sorted(SUBMIT_OPTIONS.intersection(task.model.model_fields))
            if clash:
                raise ValueError(
                    f"task {task_name!r} has parameter(s) {', '.join(clash)} that submit() "
                    "takes for itself; rename them"
                )
            self.tasks[task_name] = task
            return task

        if func is not None:
            return register(func)
        return register

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotFound(name, list(self.tasks)) from None

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def concurrency_limits(self) -> dict[str, int]:
        return {
            t.name: t.settings.concurrency
            for t in self.tasks.values()
            if t.settings.concurrency is not None
        }

    def executor_for(self, kind: str) -> Executor:
        executor = self._executors.get(kind)  # made once, then only read: no lock
        if executor is not None:
            return executor
        with self._lock:
            executor = self._executors.get(kind)
            if executor is None:
                size = self.workers if kind == "thread" else max(1, min(self.workers, 4))
                executor = create_executor(kind, size=size)
                executor.start()
                self._executors[kind] = executor
            return executor

    # -- submitting ------------------------------------------------------------------
    def submit(
        self,
        task: str | Task,
        /,
        *,
        idempotency_key: str | None = None,
        supersede: str | None = None,
        owner: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        on_progress: ProgressCallback | None = None,
        every: float = 1.0,
        on_done: ProgressCallback | None = None,
        **params: Any,
    ) -> JobHandle:
        """Queue a job of `task` with keyword parameters; returns its handle.

        `on_progress(record)` is called every `every` seconds while the job runs and
        `on_done(record)` once when it ends, both in a thread of the caller's process.
        """
        record = self.enqueue(
            task,
            params,
            idempotency_key=idempotency_key,
            supersede=supersede,
            owner=owner,
            priority=priority,
            delay=delay,
        )
        handle = JobHandle(self, record)
        if on_progress is not None or on_done is not None:
            self._callback_dispatcher().watch(handle.id, on_progress, every, on_done)
        return handle

    def enqueue(
        self,
        task: str | Task,
        params: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        supersede: str | None = None,
        owner: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> JobRecord:
        """Validate `params` and store a queued job; the lower-level twin of `submit`."""
        t = task if isinstance(task, Task) else self.get_task(task)
        checked = t.check(params)
        stored_meta = dict(meta or {})
        key = None
        if idempotency_key is not None:
            key = f"{owner or ''}\x00{idempotency_key}"
            stored_meta["params_hash"] = _params_hash(t.name, checked)
        record = _new_record(
            t,
            checked,
            now=time.time(),
            owner=owner,
            priority=priority,
            delay=delay,
            meta=stored_meta,
            idempotency_key=key,
            supersede_key=f"{owner or ''}\x00{supersede}" if supersede is not None else None,
        )
        stored, created, superseded = self.store.enqueue(record, lifecycle.submitted())
        if created:
            lifecycle.log_submitted(stored)
        for other in superseded:
            self._cancel(other)
        if not created and stored.meta.get("params_hash") != stored_meta.get("params_hash"):
            raise IdempotencyConflict(
                f"idempotency key {idempotency_key!r} was used for job {stored.id} with other "
                "parameters",
                [{"field": None, "message": "same key, different parameters", "type": "conflict"}],
            )
        return stored

    def submit_many(
        self,
        task: str | Task,
        params_list: Iterable[dict[str, Any]],
        /,
        *,
        owner: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
    ) -> list[JobHandle]:
        """Queue one job of `task` per parameters mapping, in one go; returns their handles.

        Every mapping is checked first: when one does not fit, ValidationError names
        its index and nothing is queued. The store takes the jobs in one transaction
        (SQLite) or one round trip per thousand jobs (Redis), so a batch costs far
        less than as many `submit` calls.
        """
        return [
            JobHandle(self, record)
            for record in self.enqueue_many(
                task, params_list, owner=owner, priority=priority, delay=delay
            )
        ]

    def enqueue_many(
        self,
        task: str | Task,
        params_list: Iterable[dict[str, Any]],
        *,
        owner: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> list[JobRecord]:
        """The lower-level twin of `submit_many`: the stored records."""
        t = task if isinstance(task, Task) else self.get_task(task)
        checked: list[dict[str, Any]] = []
        for index, params in enumerate(params_list):
            try:
                checked.append(t.check(params))
            except ValidationError as exc:
                errors = [
                    {**e, "field": f"{index}.{e['field']}" if e.get("field") else str(index)}
                    for e in exc.errors
                ]
                raise ValidationError(
                    f"invalid parameters for task {t.name!r} at index {index}", errors
                ) from None
        now = time.time()
        records = [
            _new_record(
                t,
                params,
                now=now,
                owner=owner,
                priority=priority,
                delay=delay,
                meta=dict(meta or {}),
            )
            for params in checked
        ]
        self.store.enqueue_many(records, lifecycle.submitted())
        for record in records:
            lifecycle.log_submitted(record)
        return records

    # -- reading ---------------------------------------------------------------------
    @property
    def feed(self) -> ChangeFeed:
        """The process's change feed: wake-ups keyed by job id (see `underway.feed`)."""
        return self.store.notifier

    @property
    def where(self) -> str:
        """The store's URL, for messages (opens the store)."""
        return self.store.url

    def find(self, job_id: str, *, owner: str | None = None) -> JobRecord | None:
        """The job's current record, or None when unknown (or another owner's)."""
        record = self.store.get(job_id)
        if record is None or (owner is not None and record.owner != owner):
            return None
        return record

    def get(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """The job's current record; JobNotFound when unknown (or another owner's).

        A queued job says why it waits (`record.waiting`, see `underway.waiting`)."""
        record = self.find(job_id, owner=owner)
        if record is None:
            raise self.not_found(job_id)
        if record.state is State.QUEUED:
            record = record.evolve(waiting=self.why_waiting(record))
        return record

    def why_waiting(self, record: JobRecord) -> Waiting:
        """Why a queued job has not started (see `underway.waiting`)."""
        task = self.tasks.get(record.task)
        limit = task.settings.concurrency if task is not None else None
        now = time.time()
        return why_waiting(
            record,
            now=now,
            workers=self.store.live_workers(now),
            limit=limit,
            running=self.store.running_of(record.task) if limit is not None else None,
        )

    def not_found(self, job_id: str) -> JobNotFound:
        """JobNotFound, saying so when the job was lost with the store's data."""
        lost = self.store.lost_data_at()
        made = id_time(job_id)
        if lost is not None and made is not None and made < lost:
            return JobNotFound(job_id, lost_at=rfc3339(lost))
        return JobNotFound(job_id)

    def lost_data_at(self) -> float | None:
        """When the store was found to have lost its data; None when it did not."""
        return self.store.lost_data_at()

    def count(self, *, state: State | None = None) -> int:
        """How many jobs (in `state`) the store holds."""
        return self.store.count(state=state)

    def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""
        self.store.ping()

    def annotate(self, job_id: str, changes: dict[str, Any]) -> bool:
        """Merge `changes` into the job's `meta` (delivery records such as webhooks')."""
        return self.store.update_meta(job_id, changes)

    def job(self, job_id: str, *, owner: str | None = None) -> JobHandle:
        return JobHandle(self, self.get(job_id, owner=owner))

    def list_jobs(
        self,
        *,
        task: str | None = None,
        state: State | str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return self.store.list_jobs(
            task=task,
            state=State(state) if state is not None else None,
            owner=owner,
            limit=limit,
            cursor=cursor,
        )

    def output(
        self,
        job_id: str,
        *,
        attempt: int | None = None,
        after: int = 0,
        limit: int = 1000,
        owner: str | None = None,
    ) -> list[Any]:
        """Output items of the job's latest attempt (or of `attempt`), from index
        `after` (0-based within the attempt)."""
        record = self.get(job_id, owner=owner)
        return self.store.output(
            job_id, record.attempt if attempt is None else attempt, after, limit
        )

    def events(
        self, job_id: str, *, after: int = 0, timeout: float = 0.0, owner: str | None = None
    ) -> list[Event]:
        """Events after `after`; waits up to `timeout` seconds for the first one."""
        self.get(job_id, owner=owner)
        if timeout <= 0:
            return self.store.events(job_id, after)
        return self.store.wait_events(job_id, after, timeout)

    def events_after(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """Events after `after`, without waiting or checking the owner (a stream's
        reads, after it checked once)."""
        return self.store.events(job_id, after, limit)

    def follow(
        self, job_id: str, *, after: int = 0, timeout: float | None = None
    ) -> Iterator[Event]:
        """Events with id > `after` as they happen, until `done` (or `timeout` seconds).

        From the start (`after=0`) it shows the latest attempt: the output, log and
        progress events of earlier attempts are skipped. It reads only when the change
        feed says the job changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        feed = self.feed
        since_attempt: int | None = None
        while True:
            seen = feed.version(job_id)
            record = self.store.get(job_id)
            events = self.store.events(job_id, after)
            if record is not None and since_attempt is None:
                since_attempt = record.attempt if after == 0 else 0
            yield from latest_segment(events, since_attempt or 0)
            if events:
                after = events[-1].seq
                if events[-1].kind is EventKind.DONE:
                    return
                continue
            if record is None or record.state in TERMINAL:
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            feed.wait(job_id, seen, left)

    def wait(
        self, job_id: str, *, timeout: float | None = None, owner: str | None = None
    ) -> JobRecord:
        """Block until the job is finished; its final record. TimeoutError past `timeout`.

        It reads the job only when the change feed says it changed, and not even then
        when the store told the feed what changed (`Known`): a job still active needs
        no read, nor one whose final record came with the news."""
        deadline = None if timeout is None else time.monotonic() + timeout
        feed = self.feed
        checked = False  # the job was seen to exist (and be the owner's)
        while True:
            seen, known = feed.known(job_id)
            record = None
            read = False  # read from the store now (not told by the feed)
            if known is not None and (known.state in TERMINAL or not checked):
                if known.state in TERMINAL or owner is not None:
                    record = known.full()
                    if record is not None and owner is not None and record.owner != owner:
                        record = None
                else:
                    checked = True  # the store said it is there, unfinished: no record needed
            if record is None and (known is None or not checked or known.state in TERMINAL):
                record = self.find(job_id, owner=owner)  # no `waiting`: nobody reads it
                if record is None:
                    raise self.not_found(job_id)
                read = True
            checked = True
            if record is not None and record.state in TERMINAL:
                return record
            left = None if deadline is None else deadline - time.monotonic()
            if (left is None or left > 0) and (
                feed.wait_end(job_id, seen, left) != seen or left is None
            ):
                continue
            # Out of time: the feed's news may lag behind the store (a process that
            # reads other processes' news in batches while nobody waits), so a job
            # not read just now is read once more before it is said not to be done.
            if not read:
                record = self.find(job_id, owner=owner)
                if record is not None and record.state in TERMINAL:
                    return record
            raise TimeoutError(f"job {job_id} did not finish within {timeout}s")

    # -- changing --------------------------------------------------------------------
    def cancel(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """Ask a job to stop. Queued jobs are cancelled at once; running ones are told to
        stop (and stopped hard after the task's grace period where the executor can).
        Cancelling a cancelled job is a no-op; a succeeded or failed one is JobFinished."""
        record = self.get(job_id, owner=owner)
        if record.state in (State.SUCCEEDED, State.FAILED):
            raise JobFinished(f"job {job_id} already {record.state.value}", record)
        updated, applied = self._cancel(job_id)
        if updated is None:
            raise self.not_found(job_id)
        if not applied and updated.state in (State.SUCCEEDED, State.FAILED):
            # It ended before the cancel could reach it.
            raise JobFinished(f"job {job_id} already {updated.state.value}", updated)
        return updated

    def _cancel(self, job_id: str) -> tuple[JobRecord | None, bool]:
        """Apply the lifecycle's cancel to the job as it is now; re-read and decide
        again when it moved meanwhile (say, a worker claimed it). Returns the job after
        it, and whether a cancel was applied (the job may have ended since)."""
        for _ in range(10):
            record = self.store.get(job_id)
            if record is None:
                return None, False
            decision = lifecycle.cancel(record, now=time.time())
            if decision is None:
                return record, False
            (applied,) = self.store.apply([decision], time.time())
            if applied:
                lifecycle.log_applied(record, decision, True)
                if self._worker is not None and record.state is State.RUNNING:
                    self._worker.signal_cancel(job_id)
                after = self.store.get(job_id)
                return (after or record), True
        return self.store.get(job_id), False

    def delete(self, job_id: str, *, owner: str | None = None) -> None:
        """Remove a finished job with its output; JobActive while it is queued or running."""
        record = self.get(job_id, owner=owner)
        if record.state not in TERMINAL:
            raise JobActive(f"job {job_id} is {record.state.value}; cancel it first", record)
        self.store.delete(job_id)

    def purge(self, *, older_than: float | None = None) -> int:
        """Delete expired jobs now (or every finished job older than `older_than` seconds)."""
        now = time.time()
        before = None if older_than is None else now - older_than
        return self.store.purge(now, finished_before=before)

    # -- embedded workers ------------------------------------------------------------
    def start(self, workers: int | None = None, **options: Any) -> Worker:
        """Run workers inside this process (threads); idempotent."""
        with self._lock:
            if self._worker is None:
                # One full garbage collection first, while no job waits: a process's
                # first ones go through everything its imports made (11-15 ms here)
                # and would otherwise come among its first few thousand jobs. Then
                # the next waits until the heap has grown by a quarter.
                self.store  # noqa: B018 (opened first: its objects count too)
                gc.collect()
                self._worker = Worker(
                    self, concurrency=workers or self.workers, lease=self.lease, **options
                )
                self._worker.start()
            return self._worker

    def stop(self, *, drain: float = 30.0) -> None:
        """Stop the embedded workers: running jobs get `drain` seconds to finish, then are
        handed back to the queue; then executors and callbacks stop."""
        with self._lock:
            worker, self._worker = self._worker, None
            callbacks, self._callbacks = self._callbacks, None
            executors, self._executors = dict(self._executors), {}
        if worker is not None:
            worker.stop(drain=drain)
        for executor in executors.values():
            executor.shutdown(wait=True)
        if callbacks is not None:
            callbacks.stop()

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def __enter__(self) -> Underway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _callback_dispatcher(self) -> CallbackDispatcher:
        with self._lock:
            if self._callbacks is None:
                self._callbacks = CallbackDispatcher(self)
            return self._callbacks


def _new_record(
    task: Task,
    params: dict[str, Any],
    *,
    now: float,
    owner: str | None,
    priority: int | None,
    delay: float | None,
    meta: dict[str, Any],
    idempotency_key: str | None = None,
    supersede_key: str | None = None,
) -> JobRecord:
    """A new queued job of `task` with checked `params`, from the task's settings."""
    values = task.new_record_fields()
    values["id"] = new_id()
    values["params"] = params
    values["created_at"] = now
    values["run_at"] = now + delay if delay else now
    values["meta"] = meta
    if owner is not None:
        values["owner"] = owner
    if priority is not None:
        values["priority"] = priority
    if idempotency_key is not None:
        values["idempotency_key"] = idempotency_key
    if supersede_key is not None:
        values["supersede_key"] = supersede_key
    return JobRecord.from_fields(values)


def _params_hash(task: str, params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{task}\x00{canonical}".encode()).hexdigest()
