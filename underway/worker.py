"""The worker: claim -> run on an executor -> flush progress and output -> finish.

A worker has `concurrency` slot threads and one monitor thread. A slot claims a job,
runs it through its task's executor (thread jobs run on the slot's own thread;
process and subprocess jobs block the slot while a child runs them), records the
outcome, and claims the next. Only the slot holding the claim baton claims (see
`baton.py`): short jobs then cost no hand-over between threads, and a job that runs
long passes the baton to another slot within milliseconds.

While jobs are short and the queue is deep, the holder works in batches: it claims
up to `batch` jobs at once (kept in the worker, under lease, until a slot runs
them), and the ends of short jobs wait to be written with the next claim, in one
transaction or round trip. One job that runs long puts the worker back to claiming
one job at a time, and an end never waits long (see `_ended_due`). When jobs
arrive one by one as fast as they run (its last claim took all there were, and news
of work came since), a slot with ends to write waits up to `linger` seconds before
it claims, so that the next claim takes several (never when the worker is idle: a job
submitted then starts and ends at once; nor in a backlog). Where every submission is
news of work in the process (`Store.announces_each_job`: SQLite) it looks a step at a
time whether jobs still come, and claims at the first step without one (a burst is
over); if they still come after `linger`, and as fast as a loop submitting them one by
one sends them, it waits on while they do (up to `BURST_LINGER`), then claims up to
`BURST_BATCHES` batches at a time until that backlog is drained: the submitting
thread then runs on its own rather than taking turns with the slots at every job
(all of them share the interpreter's lock, and every turn costs both sides).
Elsewhere it waits the whole `linger`. Where a claim is a round trip to a shared
server (`Store.batch_after_linger`) that claim asks for a whole batch. The monitor
flushes progress snapshots and output a few times a second (a job's last snapshot
goes with its end, in the same write), renews leases, delivers
cancel requests, enforces timeouts and grace periods, and runs the janitor.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import lifecycle
from ._util import dumps, new_id
from .baton import ClaimBaton
from .errors import StoreUnavailable, UnderwayError
from .executors.base import Executor, Outcome, failure
from .feed import WORK
from .job import Job
from .records import Decision, ErrorInfo, Fence, JobRecord, Progress, State

if TYPE_CHECKING:
    from .app import Underway
    from .tasks import Task

log = logging.getLogger("underway.worker")


@dataclass(kw_only=True, slots=True)
class _Running:
    job: Job
    record: JobRecord
    task: Task
    fence: Fence
    started: float  # monotonic
    started_at: float = field(default_factory=time.time)  # for a start the store lacks
    flushed_version: int = 0
    rate_origin: tuple[float, float] | None = None  # (monotonic, current) for the ETA
    slot: _Slot
    executor: Executor | None = None  # None until it is known (or could not start)
    stop_at: float | None = None  # monotonic time after which the job is stopped hard
    killed: bool = False
    ended: bool = False  # its outcome is being (or has been) recorded
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(kw_only=True, slots=True)
class _Ended:
    """A short job's end, waiting to be written with the next claim."""

    entry: _Running
    outcome: Outcome
    at: float  # monotonic


@dataclass(kw_only=True)
class _Slot:
    number: int
    retired: bool = False  # its thread is stuck in an abandoned job and exits after it


class Worker:
    """Runs jobs of the app's tasks. Embedded by `Underway.start()` or run on its own."""

    def __init__(
        self,
        app: Underway,
        *,
        concurrency: int = 4,
        lease: float = 30.0,
        flush_interval: float = 0.2,
        idle_poll: float = 0.5,
        janitor_interval: float = 5.0,
        batch: int = 16,
        linger: float = 0.003,
        name: str | None = None,
    ) -> None:
        self.app = app
        self.store = app.store
        self.concurrency = concurrency
        self.lease = lease
        self.flush_interval = flush_interval
        self.idle_poll = idle_poll
        self.janitor_interval = janitor_interval
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._stopping = threading.Event()
        # Wakes the monitor from a long sleep: set at stop, and when an end or a
        # claimed job starts waiting while the monitor sleeps long (see `_monitor`).
        self._nudge = threading.Event()
        self._monitor_sleeps = False
        self._waited_at = -float("inf")  # monotonic time a slot last nudged the monitor
        self._threads: list[threading.Thread] = []
        self._baton = ClaimBaton()
        self.batch = max(1, batch)
        self.linger = linger
        self._claim_size = 1  # grows while jobs are short and the queue deep
        self._claim_cap = self.batch  # what it may grow to: more after a burst
        # The wake-up version (of WORK) before the last claim that found fewer jobs
        # than it asked for: while it stands, no job was announced since the queue
        # was seen empty, and writing ends need not look for work as well.
        self._drained_at: int | None = None
        self._ready: deque[JobRecord] = deque()  # claimed, not started yet
        self._ready_since = 0.0  # monotonic time `_ready` last became non-empty
        self._ended: list[_Ended] = []  # short jobs' ends, not written yet
        self._cancel_before_start: set[str] = set()
        self._down_since: float | None = None  # monotonic start of a store outage
        self._backoff = 0.25

    # -- lifecycle -------------------------------------------------------------------
    # Workers say they are alive this often; a worker silent for HEARTBEAT_TTL is gone.
    HEARTBEAT = 5.0
    HEARTBEAT_TTL = 20.0

    def _heartbeat(self, *, stopping: bool = False) -> None:
        until = 0.0 if stopping else time.time() + self.HEARTBEAT_TTL
        try:
            self.store.heartbeat(self.id, self.app.task_names, until)
        except Exception as exc:  # presence is advice: a missed beat costs nothing else
            log.warning("could not record this worker's heartbeat: %s", exc)

    def start(self) -> None:
        self._heartbeat()
        for number in range(self.concurrency):
            self._start_slot(_Slot(number=number))
        monitor = threading.Thread(target=self._monitor, name="underway-monitor", daemon=True)
        monitor.start()
        self._threads.append(monitor)

    def _start_slot(self, slot: _Slot) -> None:
        thread = threading.Thread(
            target=self._slot_loop, args=(slot,), name=f"underway-slot-{slot.number}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def stop(self, *, drain: float = 30.0) -> None:
        """Stop claiming; give running jobs up to `drain` seconds, then hand them back."""
        self._stopping.set()
        self._nudge.set()
        self._baton.close()
        self.store.notifier.notify_everything()
        self._hand_back_ready()
        deadline = time.monotonic() + drain
        with self._lock:
            while self._running and time.monotonic() < deadline:
                self._slot_free.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            leftover = list(self._running.values())
        for entry in leftover:
            entry.job.request_cancel("shutdown")
        grace = time.monotonic() + max((e.task.settings.cancel_grace for e in leftover), default=0)
        with self._lock:
            while self._running and time.monotonic() < grace:
                self._slot_free.wait(0.05)
            leftover = list(self._running.values())
        for entry in leftover:
            if entry.executor is None or not entry.executor.kill(entry.job.id):
                self._abandon(entry)
        with self._lock:
            end = time.monotonic() + 5.0
            while self._running and time.monotonic() < end:
                self._slot_free.wait(0.05)
        for thread in self._threads:
            thread.join(timeout=5)
        self._write_ended()
        self._hand_back_ready()
        self._flush_all()
        self._heartbeat(stopping=True)

    @property
    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def signal_cancel(self, job_id: str) -> bool:
        """Deliver a cancel request to a job this worker runs (same process, no round trip)."""
        with self._lock:
            entry = self._running.get(job_id)
            if entry is None:
                if any(r.id == job_id for r in self._ready):
                    self._cancel_before_start.add(job_id)
                    return True
                return False
        self._begin_stop(entry, "cancel")
        return True

    # -- slots ---------------------------------------------------------------------
    def _slot_loop(self, slot: _Slot) -> None:
        notifier = self.store.notifier
        baton = self._baton
        seen = -1  # the wake-up version at the last claim
        try:
            while not self._stopping.is_set() and not slot.retired:
                if not baton.take(slot):
                    return
                record = self._next_ready()
                if record is not None:
                    if self._ended_due():
                        self._write_ended()
                    with self._lock:
                        if self._ended:
                            # They wait while this slot runs a claimed job: the monitor
                            # writes them if that job runs long.
                            self._wake_monitor()
                else:
                    size = self._claim_size
                    if (
                        self._ended
                        and self.linger
                        and self._drained_at is not None
                        and notifier.version(WORK) != seen
                    ):
                        # Jobs keep coming in while ends wait, and the last claim took
                        # all there were: let a few more gather, so that one claim takes
                        # them together (in a backlog it claims at once).
                        if self.store.announces_each_job:
                            # The other slots sleep meanwhile: it claims next.
                            baton.idle(slot)
                            if self._gather():
                                self._claim_cap = self.batch * self.BURST_BATCHES
                                size = self._claim_cap
                        else:
                            time.sleep(self.linger)
                        if self.store.batch_after_linger:
                            size = self.batch
                    seen = notifier.version(WORK)
                    if self._drained_at == seen and self._ended:
                        size = 0  # only the ends: no job was announced since
                    try:
                        records = self._claim(size)
                    except UnderwayError as exc:
                        self._stopping.wait(self._outage(exc))
                        continue
                    except Exception:
                        log.exception("claim failed")
                        self._stopping.wait(1.0)
                        continue
                    if self._down_since is not None:
                        self._recovered()
                    if size:
                        self._drained_at = seen if len(records) < size else None
                    if not records:
                        # Idle slots wait for work, not for the baton: new work then wakes
                        # one of them, which takes the baton at once.
                        baton.release(slot)
                        self.store.wait_for_work(seen, self.idle_poll)
                        continue
                    record = records[0]
                    if len(records) > 1:
                        with self._lock:
                            if not self._ready:
                                self._ready_since = time.monotonic()
                            self._ready.extend(records[1:])
                            self._wake_monitor()
                baton.running(slot)
                self._run(record, slot)
        finally:
            baton.release(slot)
            self._write_ended()
            self.store.slot_done()

    # A lingering slot looks this often whether jobs still come (see `_gather`).
    LINGER_STEPS = 6
    # Jobs announced at least this fast (a second) are a burst, as a loop submitting
    # them one by one makes: a lingering slot waits on while they come that fast, up
    # to BURST_LINGER seconds in all, looking every BURST_STEP, and then claims up to
    # BURST_BATCHES batches at a time until their backlog is drained. Slower streams
    # (a web app's requests, say) never wait longer than `linger`.
    BURST_RATE = 4_000
    BURST_LINGER = 0.1
    BURST_STEP = 0.005
    BURST_BATCHES = 4

    def _gather(self) -> bool:
        """Let jobs gather for up to `linger` seconds, while they keep coming: it stops
        at the first step in which none was announced (the submitter paused or was
        done, as after a burst of a few jobs), rather than wait the whole while for
        jobs that do not come; and on, up to BURST_LINGER, while they come in a burst.
        Whether they came in a burst. Only where every submission is news of work in
        this process (`Store.announces_each_job`)."""
        notifier = self.store.notifier
        step = self.linger / self.LINGER_STEPS
        seen = notifier.version(WORK)
        counted, since = notifier.work_announced, time.monotonic()
        for _ in range(self.LINGER_STEPS):
            time.sleep(step)
            now = notifier.version(WORK)
            if now == seen:
                return False
            seen = now
        if self.batch == 1:
            return False  # batching is off: no claim would take the burst together
        burst = False
        deadline = since + self.BURST_LINGER
        while True:
            now_count, at = notifier.work_announced, time.monotonic()
            if (now_count - counted) < self.BURST_RATE * (at - since) or at >= deadline:
                return burst
            burst = True
            counted, since = now_count, at
            if self._stopping.wait(min(self.BURST_STEP, deadline - at)):
                return burst

    def _outage(self, exc: Exception) -> float:
        """A claim failed (the store is down, loading, or full): log it once, and back
        off, doubling the wait up to 5 s. Returns how long to wait."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self._backoff = 0.25
            else:
                self._backoff = min(self._backoff * 2, 5.0)
            backoff = self._backoff
        if first:
            log.warning("the store is unavailable; retrying with backoff: %s", exc)
        else:
            log.debug("the store is still unavailable: %s", exc)
        return backoff

    def _recovered(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("the store is available again after %.1fs", time.monotonic() - since)

    def _next_ready(self) -> JobRecord | None:
        with self._lock:
            return self._ready.popleft() if self._ready else None

    def _claim(self, max_jobs: int) -> list[JobRecord]:
        """Write the waiting ends and claim up to `max_jobs` jobs, in one store call."""
        with self._lock:
            ended, self._ended = self._ended, []
        now = time.time()
        decisions = [self._decide(e.entry, e.outcome, now) for e in ended]
        try:
            applied, records = self.store.apply_and_claim(
                decisions,
                worker=self.id,
                tasks=self.app.task_names,
                limits=self.app.concurrency_limits,
                lease=self.lease,
                now=now,
                max_jobs=max_jobs,
            )
        except BaseException:
            for item in ended:  # one by one, each retried while the store is away
                self._record(item.entry, item.outcome)
                self._done(item.entry)
            raise
        for item, decision, ok in zip(ended, decisions, applied, strict=True):
            self._applied(item.entry, decision, ok)
            self._done(item.entry)
        for record in records:
            lifecycle.log_claimed(record, self.id)
        if max_jobs > 0 and len(records) == max_jobs:
            # A backlog: take more next time.
            self._claim_size = min(max_jobs * 2, self._claim_cap)
        elif max_jobs > 0 and len(records) < max_jobs:
            self._claim_size = max(1, len(records))  # no backlog: as many as came
            self._claim_cap = self.batch  # a burst's backlog, if any, is drained
        return records

    def _ended_due(self) -> bool:
        """Write the waiting ends now? When enough have gathered, or the oldest has
        waited longer than a short job takes (the job before this one ran long)."""
        with self._lock:
            if not self._ended:
                return False
            return (
                len(self._ended) >= self._claim_size
                or time.monotonic() - self._ended[0].at >= self.SHORT_JOB
            )

    def _write_ended(self) -> None:
        with self._lock:
            if not self._ended:
                return
        try:
            self._claim(0)
        except Exception as exc:  # _claim recorded them one by one already
            log.warning("writing a batch of job ends failed: %s", exc)

    def _hand_back_ready(self) -> None:
        """Give the claimed jobs no slot has started back to the queue."""
        with self._lock:
            ready = list(self._ready)
            self._ready.clear()
        if not ready:
            return
        now = time.time()
        decisions = [
            lifecycle.released(r, fence=Fence(worker=self.id, attempt=r.attempt), now=now)
            for r in ready
        ]
        try:
            applied = self.store.apply(decisions, now)
        except Exception as exc:  # their leases run out, and the janitor requeues them
            log.warning("could not hand back %d claimed jobs: %s", len(ready), exc)
            return
        for record, decision, ok in zip(ready, decisions, applied, strict=True):
            lifecycle.log_applied(record, decision, ok)
        # Each job handed back may go to an idle slot of this worker: wake one per job
        # (a wake-up finds one waiting slot; the store announced the work once).
        for _ in range(sum(applied) - 1):
            self.store.notifier.notify(WORK)

    # Claimed jobs wait in the worker for a slot only while the slots run short jobs:
    # once every slot has been in its job this long, they go back to the queue, where
    # another worker (or this one, later) takes them.
    HOSTAGE_AFTER = 0.05

    def _wake_monitor(self) -> None:
        """An end or a claimed job waits now: the monitor looks at it within
        ENDS_CHECK. Called holding `_lock`."""
        self._waited_at = time.monotonic()  # the monitor ticks a while after this
        if self._monitor_sleeps:
            self._monitor_sleeps = False
            self._nudge.set()

    def _release_hostages(self) -> None:
        """Hand the claimed jobs back when no slot will start them soon: every running
        job has run longer than a short one would (idle slots of this worker sleep until
        new work is announced, which the hand-back does)."""
        now = time.monotonic()
        with self._lock:
            if not self._ready or now - self._ready_since < self.HOSTAGE_AFTER:
                return
            if any(now - e.started < self.HOSTAGE_AFTER for e in self._running.values()):
                return
        self._hand_back_ready()

    # A job that takes less than this is short: its end may wait for the next batch.
    SHORT_JOB = 0.002
    # While jobs run, how often the monitor looks for ends left waiting.
    ENDS_CHECK = 0.02

    def _run(self, record: JobRecord, slot: _Slot) -> None:
        task = self.app.get_task(record.task)
        job = Job(record, max_output_bytes=self.app.max_output_bytes)
        entry = _Running(
            job=job,
            record=record,
            task=task,
            fence=Fence(worker=self.id, attempt=record.attempt),
            started=time.monotonic(),
            slot=slot,
        )
        with self._lock:
            self._running[record.id] = entry
            # Cancelled while it waited here, or before it was handed back and claimed
            # again: it ends without its code starting.
            cancelled = record.id in self._cancel_before_start or record.cancel_requested
            if cancelled:
                self._cancel_before_start.discard(record.id)
        if cancelled:
            self._begin_stop(entry, "cancel")
            self._finished(entry, Outcome(state=State.CANCELLED))
            return
        try:
            entry.executor = self.app.executor_for(task.settings.executor)
            outcome = entry.executor.call(job, task)
        except Exception as exc:  # the executor failed, not the task: fail, don't lose it
            log.exception("executor %s could not run job %s", task.settings.executor, record.id)
            outcome = failure(exc, type_name="ExecutorError")
        short = time.monotonic() - entry.started < self.SHORT_JOB
        if not short:
            self._claim_size = 1
        self._finished(entry, outcome, defer=short)

    # -- monitor ---------------------------------------------------------------------
    def _monitor(self) -> None:
        renew_every = min(self.lease / 3.0, 0.5)  # also how fast a remote cancel arrives
        next_renew = next_janitor = time.monotonic()
        next_heartbeat = next_renew + self.HEARTBEAT
        next_upkeep = next_renew + self.flush_interval
        waited_last = -float("inf")  # monotonic time an end or a claimed job last waited here
        while True:
            now = time.monotonic()
            wait = next_upkeep - now
            with self._lock:
                # Ends and claimed jobs wait for their slot's next claim; if that slot
                # is in a long job now, they are written or handed back from here, a
                # few milliseconds late at most. While none has waited for a while,
                # the monitor sleeps until the next upkeep, or until one does.
                # (A slot that nudged it may have written its ends since: the nudge
                # counts, else the monitor would sleep again and be nudged per job.)
                if self._ended or self._ready:
                    waited_last = now
                waited_last = max(waited_last, self._waited_at)
                ticking = now - waited_last < self.flush_interval
                self._monitor_sleeps = not ticking
            if ticking:
                wait = min(wait, self.ENDS_CHECK)
            self._nudge.wait(max(0.0, wait))
            self._nudge.clear()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            try:
                if self._ended_due():
                    self._write_ended()
                self._release_hostages()
                if now < next_upkeep:
                    continue
                next_upkeep = now + self.flush_interval
                self._flush_all()
                if now >= next_renew:
                    next_renew = now + renew_every
                    self._renew()
                self._enforce_deadlines(now)
                if now >= next_heartbeat:
                    next_heartbeat = now + self.HEARTBEAT
                    self._heartbeat()
                if now >= next_janitor:
                    next_janitor = now + self.janitor_interval * (0.5 + random.random())
                    self.janitor()
            except UnderwayError as exc:
                log.warning("worker upkeep failed: %s", exc)
            except Exception:
                log.exception("worker upkeep failed")

    def _flush_all(self) -> None:
        with self._lock:
            entries = list(self._running.values())
        for entry in entries:
            self._flush(entry)

    def _flush(self, entry: _Running) -> None:
        with entry.lock:
            now = time.time()
            if entry.job.stop_reason == "lost":
                entry.job.take_outbox()  # no longer ours to write
                return
            items = entry.job.take_outbox()
            if items:
                try:
                    held = self.store.append(entry.job.id, entry.fence, items, now)
                except BaseException:
                    entry.job.return_outbox(items)  # keep them, in order, for the next flush
                    raise
                if not held:
                    self._lost(entry)
                    return
            version, current, total, message = entry.job.snapshot()
            if version != entry.flushed_version and not entry.ended:
                # (once the job ended, its last progress goes with its end: `_decide`)
                progress = self._with_eta(entry, current, total, message)
                if not self.store.save_progress(entry.job.id, entry.fence, progress, now):
                    self._lost(entry)
                    return
                entry.flushed_version = version

    def _lost(self, entry: _Running) -> None:
        """The store refused a write: this worker no longer holds the job (its lease ran
        out and it was recovered). Stop the code; nothing more of it is written."""
        if entry.job.stop_reason != "lost":
            log.warning(
                "job %s (%s) attempt %d: no longer held by this worker; its writes are "
                "refused and its code is asked to stop",
                entry.job.id,
                entry.record.task,
                entry.fence.attempt,
            )
        entry.job.stop_reason = "lost"
        self._begin_stop(entry, "lost")

    def _with_eta(
        self, entry: _Running, current: float | None, total: float | None, message: str | None
    ) -> Progress:
        eta = None
        mono = time.monotonic()
        if current is not None:
            if entry.rate_origin is None or current < entry.rate_origin[1]:
                entry.rate_origin = (mono, current)
            else:
                t0, c0 = entry.rate_origin
                if total is not None and current > c0 and mono > t0:
                    rate = (current - c0) / (mono - t0)
                    eta = round(max(0.0, (total - current) / rate), 1)
        return Progress(current=current, total=total, message=message, eta_s=eta)

    def _renew(self) -> None:
        with self._lock:
            fences = {job_id: e.fence.attempt for job_id, e in self._running.items()}
            fences.update((r.id, r.attempt) for r in self._ready)
        if not fences:
            return
        held, cancelled = self.store.renew(
            worker=self.id, fences=fences, lease=self.lease, now=time.time()
        )
        for job_id in cancelled:
            self.signal_cancel(job_id)
        gone = fences.keys() - held
        if gone:
            with self._lock:
                entries = [self._running[i] for i in gone if i in self._running]
                self._ready = deque(r for r in self._ready if r.id not in gone)
            for entry in entries:
                if not entry.ended:
                    self._lost(entry)

    def _begin_stop(self, entry: _Running, reason: str) -> None:
        if entry.stop_at is None:
            entry.stop_at = time.monotonic() + entry.task.settings.cancel_grace
        entry.job.request_cancel(reason)

    def _enforce_deadlines(self, now: float) -> None:
        with self._lock:
            entries = list(self._running.values())
        for entry in entries:
            if entry.ended:
                continue  # its end is being written
            timeout = entry.task.settings.timeout
            if timeout is not None and now - entry.started > timeout:
                self._begin_stop(entry, "timeout")
            if entry.stop_at is not None and now > entry.stop_at and not entry.killed:
                entry.killed = True
                if entry.executor is None or not entry.executor.kill(entry.job.id):
                    self._abandon(entry)

    def _abandon(self, entry: _Running) -> None:
        """The job ignored its stop request and cannot be killed: finish it without it.

        Its slot's thread stays busy until the task returns, so a new slot takes its
        place and the old thread exits afterwards."""
        log.warning("job %s did not stop within its grace period; giving up on it", entry.job.id)
        entry.slot.retired = True
        self._finished(entry, Outcome(state=State.CANCELLED))
        if not self._stopping.is_set():
            self._start_slot(_Slot(number=entry.slot.number))

    def janitor(self) -> None:
        """Recover jobs whose worker stopped renewing its lease; delete expired jobs."""
        now = time.time()
        # This worker's own jobs are not lost while it lives, even when it could not
        # renew them (the store was unwritable): it writes their ends when it can.
        expired = [r for r in self.store.expired(now) if r.worker != self.id]
        if expired:
            decisions = [lifecycle.lost(r, now=now) for r in expired]
            applied = self.store.apply(decisions, now)
            for record, decision, ok in zip(expired, decisions, applied, strict=True):
                if ok:
                    lifecycle.log_applied(record, decision, ok)
        self.store.purge(now)

    # -- the end of a job ------------------------------------------------------------
    def _finished(self, entry: _Running, outcome: Outcome, *, defer: bool = False) -> None:
        job_id = entry.job.id
        with self._lock:
            if entry.ended or self._running.get(job_id) is not entry:
                return  # already given up on (abandoned): its late outcome is discarded
            entry.ended = True
        if entry.job.stop_reason == "lost":
            # Recovered by another worker while it ran: its end is not ours to write.
            log.warning("job %s: its code ended after this worker lost it; end discarded", job_id)
            self._done(entry)
            return
        # The entry stays in `_running` until the outcome is stored, so that the
        # monitor keeps renewing its lease while the store is briefly unreachable.
        outcome = self._interpret(entry, outcome)
        if defer and self._is_final(entry, outcome) and not self._stopping.is_set():
            try:
                self._flush(entry)
            except Exception:
                pass  # written below, one by one, with retries
            else:
                with self._lock:
                    # This slot writes it with its next claim, at once, unless it runs a
                    # claimed job first (see `_slot_loop`): no need to wake the monitor.
                    self._ended.append(_Ended(entry=entry, outcome=outcome, at=time.monotonic()))
                return
        self._record(entry, outcome)
        self._done(entry)

    def _record(self, entry: _Running, outcome: Outcome) -> None:
        """Store the outcome (flushing what the job left first), retrying while the
        store is unavailable."""
        job_id = entry.job.id
        delay = 0.1
        while True:
            try:
                self._flush(entry)
                self._record_outcome(entry, outcome)
                break
            except StoreUnavailable as exc:
                if self._stopping.is_set() and delay > self.lease:
                    log.error("giving up recording the end of job %s: %s", job_id, exc)
                    break
                log.warning("store unavailable; will retry recording job %s: %s", job_id, exc)
                time.sleep(delay)  # the store is down: back off before the next try
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("could not record the end of job %s", job_id)
                break

    def _done(self, entry: _Running) -> None:
        with self._lock:
            self._running.pop(entry.job.id, None)
            if self._stopping.is_set():  # only `stop()` waits for slots to come free
                self._slot_free.notify_all()
        if entry.task.settings.concurrency is not None:
            # Its end frees room under the task's limit: an idle slot may claim now.
            self.store.notifier.notify(WORK)

    def _is_final(self, entry: _Running, outcome: Outcome) -> bool:
        """Does `outcome` end the job for good (rather than send it back to the queue)?"""
        return not lifecycle.retries(entry.record, outcome.state, outcome.error)

    def _interpret(self, entry: _Running, outcome: Outcome) -> Outcome:
        """What the job's end means, given why it was asked to stop (if it was).

        A timed-out job fails with `Timeout` even if its code returned afterwards; a
        job stopped at shutdown fails with `Shutdown` (retried at once while attempts
        remain); a job whose cancel was asked but that returned normally succeeded."""
        reason = entry.job.stop_reason
        if reason == "timeout":
            return Outcome(
                state=State.FAILED,
                error=ErrorInfo(
                    type="Timeout",
                    message=f"the job ran longer than its timeout of "
                    f"{entry.task.settings.timeout:g}s",
                ),
            )
        if reason == "shutdown" and outcome.state is not State.SUCCEEDED:
            return Outcome(
                state=State.FAILED,
                error=ErrorInfo(type="Shutdown", message="the worker stopped during the job"),
            )
        if outcome.state is State.CANCELLED or (
            reason == "cancel" and outcome.state is State.FAILED
        ):
            return Outcome(
                state=State.CANCELLED,
                error=ErrorInfo(type="Cancelled", message="the job was cancelled"),
            )
        return outcome

    def _decide(self, entry: _Running, outcome: Outcome, now: float) -> Decision:
        settings = entry.task.settings
        progress = None
        if entry.job.snapshot()[0] != entry.flushed_version:
            # The progress the job reported since the last flush, written with its end
            # (one write, not two); a flush under way finishes first.
            with entry.lock:
                version, current, total, message = entry.job.snapshot()
                if version != entry.flushed_version:
                    snapshot = self._with_eta(entry, current, total, message)
                    progress = dumps(snapshot.to_dict())
        return lifecycle.ended(
            entry.record,
            fence=entry.fence,
            state=outcome.state,
            result=outcome.result,
            result_json=outcome.result_json,
            error=outcome.error,
            now=now,
            keep_for=settings.keep_for,
            started_at=entry.started_at,
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
            progress=progress,
        )

    def _applied(self, entry: _Running, decision: Decision, ok: bool) -> None:
        lifecycle.log_applied(entry.record, decision, ok, duration=time.monotonic() - entry.started)

    def _record_outcome(self, entry: _Running, outcome: Outcome) -> None:
        now = time.time()
        decision = self._decide(entry, outcome, now)
        (ok,) = self.store.apply([decision], now)
        self._applied(entry, decision, ok)
