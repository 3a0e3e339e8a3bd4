"""The engine in one process: tasks of every kind, progress, output, cancel, errors."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from tests.support.wait import wait_for
from underway import (
    EventKind,
    IdempotencyConflict,
    Job,
    JobActive,
    JobCancelled,
    JobFailed,
    JobFinished,
    JobNotFound,
    State,
    StoreUnavailable,
    TaskNotFound,
    Underway,
    ValidationError,
)
from underway import worker as worker_module
from underway.feed import WORK
from underway.records import JobRecord
from underway.stores.sqlite import SQLiteStore


def test_sync_task_result_and_params_are_validated(uw: Underway) -> None:
    @uw.task
    def add(a: int, b: int = 2) -> int:
        return a + b

    uw.start(2)
    handle = uw.submit("add", a="40")  # coerced by the schema
    assert handle.wait(10) == 42
    record = handle.refresh()
    assert record.state is State.SUCCEEDED
    assert record.params == {"a": 40, "b": 2}
    assert record.attempt == 1
    assert record.started_at is not None and record.finished_at is not None
    assert record.expires_at == pytest.approx(record.finished_at + 86400)


def test_generator_task_streams_each_item_and_returns_them(uw: Underway) -> None:
    @uw.task
    def count(n: int) -> Iterator[int]:
        yield from range(n)

    uw.start()
    handle = uw.submit("count", n=5)
    assert handle.wait(10) == [0, 1, 2, 3, 4]
    assert handle.output() == [0, 1, 2, 3, 4]
    assert handle.refresh().output_count == 5


def test_async_task_runs_on_an_event_loop(uw: Underway) -> None:
    @uw.task
    async def slow_echo(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    uw.start()
    assert uw.submit("slow_echo", text="hi").wait(10) == "HI"


def test_unknown_task_names_the_known_ones(uw: Underway) -> None:
    @uw.task
    def known() -> None:
        pass

    with pytest.raises(TaskNotFound) as info:
        uw.submit("unknown")
    assert "known" in str(info.value)


def test_bad_parameters_list_each_field(uw: Underway) -> None:
    @uw.task
    def needs(a: int, b: list[str]) -> None:
        pass

    with pytest.raises(ValidationError) as info:
        uw.submit("needs", a="x", c=1)
    fields = {e["field"] for e in info.value.errors}
    assert fields == {"a", "b", "c"}
    assert uw.list_jobs().jobs == []  # nothing was queued


def test_unknown_job_id(uw: Underway) -> None:
    for call in (uw.get, uw.cancel, uw.delete, lambda i: uw.wait(i, timeout=1)):
        with pytest.raises(JobNotFound):
            call("nope")


def test_events_are_ordered_with_progress_output_and_log(uw: Underway) -> None:
    @uw.task
    def work(job: Job) -> str:
        job.progress(0, total=3, message="start")
        for i in range(3):
            job.emit({"i": i})
            job.log(f"line {i}")
        job.progress(3)
        return "ok"

    uw.start()
    handle = uw.submit("work")
    events = list(handle.events(timeout=10))
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.STATE and events[0].data == {"state": "queued"}
    assert kinds[-1] is EventKind.DONE and events[-1].data["result"] == "ok"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    outputs = [e.data for e in events if e.kind is EventKind.OUTPUT]
    assert outputs == [{"attempt": 1, "index": i, "item": {"i": i}} for i in range(3)]
    logs = [e.data for e in events if e.kind is EventKind.LOG]
    assert logs == ["line 0", "line 1", "line 2"]
    final = handle.refresh().progress
    assert (final.current, final.total, final.message, final.percent) == (3, 3, "start", 100.0)


def test_output_is_lossless_under_a_flood(uw: Underway) -> None:
    @uw.task
    def flood(job: Job, n: int) -> int:
        for i in range(n):
            job.emit(i)
        return n

    uw.start()
    handle = uw.submit("flood", n=20_000)
    assert handle.wait(30) == 20_000
    items = []
    while len(items) < 20_000:
        page = handle.output(after=len(items), limit=5000)
        assert page
        items.extend(page)
    assert items == list(range(20_000))


def test_progress_is_cheap_and_written_a_few_times_a_second(uw: Underway) -> None:
    release = threading.Event()

    @uw.task
    def spin(job: Job) -> int:
        calls = 0
        while not release.is_set():
            calls += 1
            job.progress(calls, total=10**12)
        return calls

    worker = uw.start(1)
    handle = uw.submit("spin")
    wait_for(lambda: handle.refresh().progress.current, what="first progress flush")
    seen_at = handle.refresh().progress.current or 0
    # Wait (by the store's own clock) for ~1 s of flushes to accumulate.
    first = [e for e in uw.events(handle.id) if e.kind is EventKind.PROGRESS]
    wait_for(
        lambda: (
            [e for e in uw.events(handle.id) if e.kind is EventKind.PROGRESS][-1].at
            >= first[0].at + 1.0
        ),
        what="a second of progress flushes",
    )
    release.set()
    calls = handle.wait(10)
    progress_events = [e for e in uw.events(handle.id) if e.kind is EventKind.PROGRESS]
    span = progress_events[-1].at - progress_events[0].at
    assert calls > 100_000 and calls > seen_at
    # At most one write per flush interval (0.2 s) plus the final flush.
    assert len(progress_events) <= span / worker.flush_interval + 3
    assert handle.refresh().progress.eta_s is not None or calls >= 10**12


def test_a_job_that_reported_progress_ends_in_one_write(uw: Underway) -> None:
    """Its last progress goes with its end (SQLite): the end's one UPDATE writes it, and
    its events read progress, then the end, as when it was written just before."""

    @uw.task
    def count(job: Job, n: int) -> int:
        for i in range(n):
            job.progress(i + 1, total=n, message="counting")
        return n

    uw.start(1, flush_interval=3600.0)  # no flush while it runs: only its end writes
    assert uw.submit("count", n=1).wait(10) == 1
    statements: list[str] = []
    uw.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        handle = uw.submit("count", n=1000)
        assert handle.wait(10) == 1000
    finally:
        uw.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    updates = [s for s in statements if s.startswith("UPDATE jobs SET") and handle.id in s]
    assert len(updates) == 1 and "progress = " in updates[0]
    final = handle.refresh()
    assert (final.progress.current, final.progress.total, final.progress.message) == (
        1000,
        1000,
        "counting",
    )
    events = list(uw.events(handle.id))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events[-3:]] == [EventKind.PROGRESS, EventKind.STATE, EventKind.DONE]
    assert events[-3].data["current"] == 1000 and events[-3].attempt == 1
    assert events[-1].data["result"] == 1000


def test_eta_comes_from_the_rate(uw: Underway) -> None:
    step = threading.Event()
    go_on = threading.Event()

    @uw.task
    def steady(job: Job) -> None:
        job.progress(0, total=100)
        job.wait_cancelled(0.3)
        job.progress(10)
        step.set()
        go_on.wait(10)

    uw.start(1)
    handle = uw.submit("steady")
    step.wait(10)
    progress = wait_for(
        lambda: (p := handle.refresh().progress).current == 10 and p, what="progress 10"
    )
    go_on.set()
    assert progress.eta_s is not None
    # 10 units took ~0.3 s, so 90 more take ~2.7 s.
    assert 1.0 < progress.eta_s < 10.0


def test_cancel_queued_job_is_immediate(uw: Underway) -> None:
    @uw.task
    def never() -> None:
        pass

    handle = uw.submit("never")  # no workers: it stays queued
    record = handle.cancel()
    assert record.state is State.CANCELLED
    with pytest.raises(JobCancelled):
        handle.wait(1)
    assert handle.cancel().state is State.CANCELLED  # idempotent


def test_cancel_running_cooperative_job(uw: Underway) -> None:
    started = threading.Event()

    @uw.task
    def loop(job: Job) -> None:
        started.set()
        while True:
            job.check_cancelled()
            job.wait_cancelled(1)

    uw.start()
    handle = uw.submit("loop")
    assert started.wait(10)
    assert handle.cancel().cancel_requested
    with pytest.raises(JobCancelled):
        handle.wait(10)
    assert handle.refresh().error is not None
    assert handle.refresh().error.type == "Cancelled"  # type: ignore[union-attr]


def test_thread_job_that_ignores_cancel_is_given_up_after_grace(uw: Underway) -> None:
    started = threading.Event()
    release = threading.Event()

    @uw.task(cancel_grace=0.3)
    def stubborn() -> str:
        started.set()
        release.wait(30)
        return "too late"

    @uw.task
    def quick() -> str:
        return "ran"

    uw.start(1)
    handle = uw.submit("stubborn")
    assert started.wait(10)
    handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(10)
    # The stuck thread's slot was replaced: the next job runs on the one-slot worker.
    assert uw.submit("quick").wait(10) == "ran"
    release.set()
    assert handle.refresh().state is State.CANCELLED  # its late result is discarded


def test_cancel_of_finished_job(uw: Underway) -> None:
    @uw.task
    def fine() -> int:
        return 1

    uw.start()
    handle = uw.submit("fine")
    handle.wait(10)
    with pytest.raises(JobFinished):
        handle.cancel()


def test_delete(uw: Underway) -> None:
    @uw.task
    def emits(job: Job) -> None:
        job.emit("x")

    handle = uw.submit("emits")
    with pytest.raises(JobActive):
        handle.delete()
    uw.start()
    handle.wait(10)
    handle.delete()
    with pytest.raises(JobNotFound):
        handle.refresh()
    assert uw.store.events(handle.id) == []


def test_timeout_fails_the_job(uw: Underway) -> None:
    @uw.task(timeout=0.3)
    def sleepy(job: Job) -> None:
        job.wait_cancelled(30)
        job.check_cancelled()

    uw.start()
    with pytest.raises(JobFailed) as info:
        uw.submit("sleepy").wait(10)
    assert info.value.record.error is not None
    assert info.value.record.error.type == "Timeout"


def test_retries_with_backoff_then_success(uw: Underway) -> None:
    @uw.task(retries=2, retry_backoff=0.05)
    def flaky(job: Job) -> int:
        if job.attempt < 3:
            raise RuntimeError(f"attempt {job.attempt} failed")
        return job.attempt

    uw.start()
    handle = uw.submit("flaky")
    assert handle.wait(20) == 3
    record = handle.refresh()
    assert (record.attempt, record.max_attempts) == (3, 3)
    states = [e.data["state"] for e in uw.events(handle.id) if e.kind is EventKind.STATE]
    assert states == ["queued", "running", "queued", "running", "queued", "running", "succeeded"]


def test_retries_exhausted_fails_with_traceback(uw: Underway) -> None:
    @uw.task(retries=1, retry_backoff=0.01)
    def broken() -> None:
        raise KeyError("missing")

    uw.start()
    with pytest.raises(JobFailed) as info:
        uw.submit("broken").wait(20)
    record = info.value.record
    assert record.attempt == 2
    assert record.error is not None and record.error.type == "KeyError"
    assert record.error.traceback is not None and "raise KeyError" in record.error.traceback


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ("exit", "SystemExit"),
        ("unserialisable", "ResultNotSerializable"),
        ("big_output", "OutputTooLarge"),
    ],
)
def test_bad_endings_fail_clearly_and_the_worker_goes_on(
    db_path: Any, body: str, error_type: str
) -> None:
    uw = Underway(f"sqlite:///{db_path}", max_output_bytes=1000)

    @uw.task
    def bad(job: Job, kind: str) -> object:
        if kind == "exit":
            sys.exit(3)
        if kind == "unserialisable":
            return object()
        job.emit("x" * 5000)
        return None

    @uw.task
    def good() -> str:
        return "still working"

    try:
        uw.start(1)
        with pytest.raises(JobFailed) as info:
            uw.submit("bad", kind=body).wait(10)
        assert info.value.record.error is not None
        assert info.value.record.error.type == error_type
        assert uw.submit("good").wait(10) == "still working"
    finally:
        uw.close()


def test_concurrency_limit_across_slots(uw: Underway) -> None:
    lock = threading.Lock()
    running = [0]
    peak = [0]

    @uw.task(concurrency=2)
    def limited(job: Job) -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        job.wait_cancelled(0.05)
        with lock:
            running[0] -= 1

    uw.start(6)
    handles = [uw.submit("limited") for _ in range(12)]
    for handle in handles:
        handle.wait(20)
    assert peak[0] == 2


def test_position_while_queued(uw: Underway) -> None:
    @uw.task
    def waiting() -> None:
        pass

    handles = [uw.submit("waiting") for _ in range(3)]
    assert [h.refresh().position for h in handles] == [0, 1, 2]
    handles[0].cancel()
    assert handles[2].refresh().position == 1
    assert handles[2].refresh().to_dict()["position"] == 1


def test_idempotency_key(uw: Underway) -> None:
    @uw.task
    def once(n: int) -> int:
        return n

    first = uw.submit("once", n=1, idempotency_key="k1")
    again = uw.submit("once", n=1, idempotency_key="k1")
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        uw.submit("once", n=2, idempotency_key="k1")
    # Keys are per owner.
    other = uw.submit("once", n=2, idempotency_key="k1", owner="someone-else")
    assert other.id != first.id


def test_supersede_cancels_the_older_run(uw: Underway) -> None:
    started = threading.Event()

    @uw.task
    def render(job: Job, n: int) -> int:
        started.set()
        while not job.cancelled:
            job.wait_cancelled(1)
        job.check_cancelled()
        return n

    uw.start(2)
    first = uw.submit("render", n=1, supersede="doc-7")
    assert started.wait(10)
    second = uw.submit("render", n=2, supersede="doc-7")
    with pytest.raises(JobCancelled):
        first.wait(10)
    assert second.refresh().state in (State.QUEUED, State.RUNNING)
    second.cancel()


def test_expired_jobs_are_purged_with_their_output(uw: Underway) -> None:
    @uw.task(keep_for=0.05)
    def short_lived(job: Job) -> None:
        job.emit("gone soon")

    uw.start()
    handle = uw.submit("short_lived")
    handle.wait(10)
    wait_for(lambda: uw.purge() or uw.store.get(handle.id) is None, what="purge")
    assert uw.store.get(handle.id) is None
    assert uw.store.events(handle.id) == []
    assert uw.store.output(handle.id) == []


def test_janitor_runs_in_the_worker(db_path: Any) -> None:
    uw = Underway(f"sqlite:///{db_path}")

    @uw.task(keep_for=0.01)
    def tiny() -> None:
        pass

    try:
        uw.start(1, janitor_interval=0.1)
        handle = uw.submit("tiny")
        handle.wait(10)
        wait_for(lambda: uw.store.get(handle.id) is None, what="the janitor's purge")
    finally:
        uw.close()


def test_callbacks_in_the_callers_process(uw: Underway) -> None:
    gate = threading.Event()

    @uw.task
    def slow(job: Job) -> str:
        job.progress(1, total=2)
        gate.wait(10)
        return "done"

    @uw.task
    def boom() -> None:
        raise ValueError("bad")

    progress_calls: list[Any] = []
    done_calls: list[Any] = []
    finished = threading.Event()
    both = threading.Event()

    def on_done(record: Any) -> None:
        done_calls.append(record)
        if len(done_calls) == 2:
            both.set()

    def on_progress(record: Any) -> None:
        progress_calls.append(record)
        finished.set()

    uw.start(2)
    handle = uw.submit("slow", on_progress=on_progress, every=0.05, on_done=on_done)
    uw.submit("boom", on_done=on_done)
    assert finished.wait(10), "on_progress was not called"
    gate.set()
    assert both.wait(10), "on_done was not called for both jobs"
    by_task = {r.task: r for r in done_calls}
    assert by_task["slow"].result == "done" and by_task["slow"].id == handle.id
    assert by_task["boom"].state is State.FAILED and by_task["boom"].error.type == "ValueError"
    assert all(r.state is State.RUNNING for r in progress_calls)
    assert len(done_calls) == 2  # once each


def test_stop_hands_running_jobs_back_while_attempts_remain(db_path: Any) -> None:
    uw = Underway(f"sqlite:///{db_path}")
    started = threading.Event()

    @uw.task(retries=1)
    def long(job: Job) -> str:
        started.set()
        job.wait_cancelled(30)
        job.check_cancelled()
        return "finished"

    @uw.task
    def once(job: Job) -> str:
        started.set()
        job.wait_cancelled(30)
        job.check_cancelled()
        return "finished"

    uw.start(1)
    handle = uw.submit("long")
    assert started.wait(10)
    uw.stop(drain=0.1)
    record = uw.get(handle.id)
    assert record.state is State.QUEUED and record.attempt == 1
    assert record.error is not None and record.error.type == "Shutdown"
    started.clear()
    uw.start(1)
    assert started.wait(10)
    # Its second and last attempt: stopped again, it fails (a third start would break
    # `retries=1`), and so does a job without retries.
    uw.stop(drain=0.1)
    record = uw.get(handle.id)
    assert record.state is State.FAILED and record.attempt == 2
    assert record.error is not None and record.error.type == "Shutdown"
    started.clear()
    single = uw.submit("once")
    uw.start(1)
    assert started.wait(10)
    uw.stop(drain=0.1)
    assert uw.get(single.id).state is State.FAILED
    uw.close()


def test_parameters_named_like_submit_options_are_refused(uw: Underway) -> None:
    with pytest.raises(ValueError, match="delay"):

        @uw.task
        def clashing(delay: float) -> None:
            pass


def test_long_jobs_run_side_by_side_on_the_slots(uw: Underway) -> None:
    # Each job waits until all three run at once: only true parallelism finishes them.
    together = threading.Barrier(3, timeout=10)

    @uw.task
    def meet(job: Job, n: int) -> int:
        together.wait()
        return n

    uw.start(3)
    handles = [uw.submit("meet", n=n) for n in range(3)]
    assert [h.wait(15) for h in handles] == [0, 1, 2]


class CountingStore(SQLiteStore):
    """A SQLite store that counts the worker's store calls: each one's ends written,
    jobs asked for and jobs claimed."""

    calls: ClassVar[list[tuple[int, int, int]]] = []

    def apply_and_claim(self, decisions: Any, **options: Any) -> tuple[list[bool], list[JobRecord]]:
        done, records = super().apply_and_claim(decisions, **options)
        type(self).calls.append((len(decisions), options.get("max_jobs", 1), len(records)))
        return done, records


def _counting_app(db_path: Any) -> tuple[Underway, list[int]]:
    """An app on a `CountingStore` (its calls reset) with a task `quick(n)` that notes
    each run of it."""
    CountingStore.calls = []
    uw = Underway(CountingStore(str(db_path)))
    runs: list[int] = []

    @uw.task
    def quick(n: int) -> int:
        runs.append(n)
        return n

    return uw, runs


def test_a_backlog_of_short_jobs_is_taken_in_batches_and_each_runs_once(db_path: Any) -> None:
    uw, runs = _counting_app(db_path)
    handles = [uw.submit("quick", n=n) for n in range(400)]
    uw.start(2)
    try:
        assert [h.wait(30) for h in handles] == list(range(400))
        assert sorted(runs) == list(range(400))
        assert all(uw.get(h.id).attempt == 1 for h in handles)
        # One store call records a batch of ends and claims the next batch.
        assert 0 < len(CountingStore.calls) < 400 / 4
    finally:
        uw.close()


class LingeringStore(CountingStore):
    """As a store whose claim is a round trip to a shared server (Redis): after a
    slot lets jobs gather, its claim asks for a whole batch."""

    batch_after_linger = True


def test_the_ends_of_a_batch_taken_after_lingering_are_written_together(
    db_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot whose last claim came up short lets jobs gather, then claims a whole batch
    (`Store.batch_after_linger`). The ends of that batch wait to be written with the
    next claim, in one store call, as a backlog's do, not one call per job."""
    monkeypatch.setattr(worker_module.Worker, "SHORT_JOB", 5.0)  # no end is due by age
    LingeringStore.calls = []
    uw = Underway(LingeringStore(str(db_path)))
    leaves = 16

    @uw.task
    def first() -> int:
        uw.submit("second")  # the next claim, of 2, finds this one only: it comes up short
        return 0

    @uw.task
    def second() -> int:
        uw.submit_many("leaf", [{"n": n} for n in range(leaves)])  # news of work meanwhile
        return 0

    @uw.task
    def leaf(n: int) -> int:
        return n

    uw.start(1, linger=0.01)
    try:
        uw.submit("first")
        wait_for(lambda: uw.store.count(state=State.SUCCEEDED) == 2 + leaves, timeout=30)
        wait_for(lambda: sum(ends for ends, _, _ in LingeringStore.calls) == 2 + leaves)
        batch = next(i for i, call in enumerate(LingeringStore.calls) if call[2] == leaves)
        # The batch's ends: all with the next call, none written alone before it.
        assert LingeringStore.calls[batch + 1][0] == leaves, LingeringStore.calls
    finally:
        uw.close()


def test_a_backlog_is_claimed_without_lingering_while_news_of_work_comes(
    db_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot with ends to write waits a moment for more jobs to gather only when its
    last claim took all there were (jobs arrive one by one). Draining a backlog, it
    claims the next batch at once, even while each job it runs submits another (news
    of work in this process)."""
    linger = 0.0123
    lingered: list[float] = []
    gather = worker_module.Worker._gather

    def counting(self: worker_module.Worker) -> bool:
        lingered.append(self.linger)
        return gather(self)

    monkeypatch.setattr(worker_module.Worker, "_gather", counting)
    uw = Underway(f"sqlite:///{db_path}")

    @uw.task
    def parent(n: int) -> int:
        uw.submit("leaf", n=n)
        return n

    @uw.task
    def leaf(n: int) -> int:
        return n

    uw.submit_many("parent", [{"n": n} for n in range(160)])
    uw.start(1, linger=linger)
    try:
        wait_for(lambda: uw.store.count(state=State.SUCCEEDED) == 320, timeout=30)
        # Claims of 1, 2, 4, 8, then 16 at a time while the backlog lasts; a slot
        # lingers at most near its end, where claims come up short.
        assert len(lingered) <= 3
    finally:
        uw.close()


def _gathering(
    worker: worker_module.Worker, news_for: float, per_tick: int, tick: float
) -> tuple[bool, float]:
    """`worker._gather()` while another thread announces `per_tick` jobs every `tick`
    seconds for `news_for` seconds: whether it saw a burst, and how long it took."""
    feed = worker.store.notifier
    stop = threading.Event()

    def announce() -> None:
        until = time.monotonic() + news_for
        while time.monotonic() < until and not stop.is_set():
            feed.notify(*[WORK] * per_tick)
            stop.wait(tick)

    thread = threading.Thread(target=announce)
    thread.start()
    started = time.monotonic()
    burst = worker._gather()
    took = time.monotonic() - started
    stop.set()
    thread.join()
    return burst, took


def test_a_slot_lingers_while_jobs_keep_coming_and_no_longer(uw: Underway) -> None:
    """A slot that lets jobs gather (`Worker.linger`) looks, a step at a time, whether
    more keep coming: it waits the whole linger while they do, and stops at the first
    step without one (a burst is over), rather than hold the jobs it has the whole
    while. Here a step is 0.1 s."""
    worker = uw.start(1, linger=0.6)
    assert _gathering(worker, 0.0, 1, 0.02)[1] < 0.3  # nothing came: one step
    # A burst of 0.25 s: a step or two past its end.
    assert _gathering(worker, 0.25, 1, 0.02)[1] < 0.55
    assert _gathering(worker, 5.0, 1, 0.02)[1] >= 0.55  # jobs keep coming: the whole linger


def test_a_slot_lingers_on_through_a_burst_and_no_longer(
    uw: Underway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs that still come after `linger`, and as fast as a loop submitting them one
    by one sends them (`Worker.BURST_RATE`), are a burst: the slot waits on while they
    come that fast, up to `BURST_LINGER`, and stops a step after they stop. A steady
    stream slower than that is held no longer than `linger`. Here the linger is 0.06 s
    (steps of 0.01 s), a burst's 1 s (steps of 0.05 s), and a burst 2,000 jobs a second
    against a stream of 400. With batching off, no burst is waited for."""
    monkeypatch.setattr(worker_module.Worker, "BURST_RATE", 1_000)
    monkeypatch.setattr(worker_module.Worker, "BURST_LINGER", 1.0)
    monkeypatch.setattr(worker_module.Worker, "BURST_STEP", 0.05)
    worker = uw.start(1, linger=0.06)
    burst, took = _gathering(worker, 5.0, 1, 0.0025)  # a steady 400 jobs a second
    assert not burst and took < 0.5, took  # the linger, not the burst's
    burst, took = _gathering(worker, 5.0, 10, 0.005)  # a burst that lasts
    assert burst and 0.9 <= took < 2.0, took  # BURST_LINGER, and no longer
    burst, took = _gathering(worker, 0.4, 10, 0.005)  # a burst that stops after 0.4 s
    assert burst and 0.35 <= took < 0.75, took  # a step or two past its end
    worker.batch = 1  # batching off (`uw.start(batch=1)`): no claim takes a burst
    burst, took = _gathering(worker, 5.0, 10, 0.005)
    assert not burst and took < 0.5, took


def test_a_burst_of_submissions_is_claimed_in_bigger_batches_and_each_runs_once(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs submitted one by one in a loop, while the slots run: after lingering through
    the burst, a slot claims up to `BURST_BATCHES` batches at a time while its backlog
    lasts (the submitting thread ran on its own meanwhile), and every job runs once.

    Whether a slot sees the burst depends on the machine's scheduler: a lingering slot
    stops at a step in which no job came, as when the submitting thread waited for a
    core that long. So the burst's rate is set low, the linger's steps and the burst's
    looks are made longer than a loaded machine's scheduling gaps (10 and 20 ms), and
    the burst is run again, on a new file, if no slot saw it (up to three times);
    without the larger claims every run fails."""
    monkeypatch.setattr(worker_module.Worker, "BURST_RATE", 200)
    monkeypatch.setattr(worker_module.Worker, "BURST_STEP", 0.02)
    monkeypatch.setattr(worker_module.Worker, "BURST_LINGER", 0.3)
    most = 0
    for attempt in range(3):
        uw, runs = _counting_app(tmp_path / f"burst-{attempt}.db")
        worker = uw.start(2, linger=0.06)  # 6 steps of 10 ms
        try:
            handles = [uw.submit("quick", n=n) for n in range(3_000)]
            assert [h.wait(60) for h in handles] == list(range(3_000))
            assert sorted(runs) == list(range(3_000))
            assert all(uw.get(h.id).attempt == 1 for h in handles)
            assert max(asked for _, asked, _ in CountingStore.calls) <= worker.batch * 4
            most = max(claimed for _, _, claimed in CountingStore.calls)
        finally:
            uw.close()
        if most > worker.batch:
            break
    assert most > worker.batch, CountingStore.calls


def test_ends_of_short_jobs_are_written_while_a_long_job_runs(uw: Underway) -> None:
    release = threading.Event()

    @uw.task
    def quick() -> str:
        return "ok"

    @uw.task
    def long() -> str:
        release.wait(30)
        return "long"

    quick_ones = [uw.submit("quick") for _ in range(40)]
    slow = uw.submit("long")
    uw.start(1)  # one slot: nobody else can take the baton while it waits
    try:
        wait_for(lambda: uw.get(slow.id).state is State.RUNNING, timeout=10)
        wait_for(lambda: all(uw.get(h.id).state is State.SUCCEEDED for h in quick_ones), timeout=5)
        assert uw.get(slow.id).state is State.RUNNING
    finally:
        release.set()
    assert slow.wait(10) == "long"


def test_a_job_cancelled_before_its_slot_starts_it_never_runs(uw: Underway) -> None:
    release = threading.Event()
    ran: list[str] = []

    @uw.task
    def quick(name: str) -> str:
        ran.append(name)
        return name

    @uw.task
    def long() -> None:
        release.wait(30)

    # Three quick jobs let the claims grow, so the job after the long one may be
    # claimed with it and wait in the worker: either way, a cancel stops it unrun.
    for name in ("a", "b", "c"):
        uw.submit("quick", name=name)
    slow = uw.submit("long")
    target = uw.submit("quick", name="target")
    uw.start(1)
    try:
        wait_for(lambda: uw.get(slow.id).state is State.RUNNING, timeout=10)
        uw.cancel(target.id)
    finally:
        release.set()
    slow.wait(10)
    with pytest.raises(JobCancelled):
        target.wait(10)
    assert "target" not in ran


def test_stop_leaves_no_claimed_job_running(db_path: Any) -> None:
    uw = Underway(f"sqlite:///{db_path}")
    started = threading.Event()

    @uw.task
    def quick() -> None:
        return None

    @uw.task(retries=1)
    def long(job: Job) -> None:
        started.set()
        job.wait_cancelled(30)
        job.check_cancelled()

    # Claims of 1, 2, 4, 8 and 16 jobs: the long one is claimed with ten quick ones
    # after it, which wait in the worker when it stops.
    handles = [uw.submit("quick") for _ in range(20)]
    handles.append(uw.submit("long"))
    handles += [uw.submit("quick") for _ in range(30)]
    uw.start(1)
    assert started.wait(10)
    uw.stop(drain=0.1)
    states = {uw.get(h.id).state for h in handles}
    assert states <= {State.SUCCEEDED, State.QUEUED}, states
    for handle in handles[:20] + handles[21:]:  # never started: no attempt used up
        record = uw.get(handle.id)
        assert record.state is State.SUCCEEDED or record.attempt == 0
    uw.start(2)
    try:
        uw.cancel(handles[20].id)
        for handle in handles[:20] + handles[21:]:
            handle.wait(10)
    finally:
        uw.close()


def test_submit_many_queues_every_job_and_runs_them(uw: Underway) -> None:
    @uw.task
    def double(n: int) -> int:
        return 2 * n

    handles = uw.submit_many("double", [{"n": n} for n in range(50)])
    assert all(h.state is State.QUEUED for h in handles)
    more = double.submit_many([{"n": 100}])
    uw.start(2)
    assert [h.wait(10) for h in handles + more] == [2 * n for n in range(50)] + [200]


def test_submit_many_with_one_bad_item_queues_nothing(uw: Underway) -> None:
    @uw.task
    def double(n: int) -> int:
        return 2 * n

    with pytest.raises(ValidationError, match="at index 2") as caught:
        uw.submit_many("double", [{"n": 1}, {"n": 2}, {"n": "three"}])
    assert [e["field"] for e in caught.value.errors] == ["2.n"]
    with pytest.raises(ValidationError, match="at index 0"):
        uw.submit_many("double", ["not an object"])  # type: ignore[list-item]
    assert uw.store.count() == 0


class FlakyStore(SQLiteStore):
    """Fails the first few batched writes, as a store that is briefly away would."""

    failures = 3

    def apply_and_claim(self, decisions: Any, **options: Any) -> tuple[list[bool], list[JobRecord]]:
        if decisions and options.get("max_jobs", 1) > 0 and type(self).failures > 0:
            type(self).failures -= 1
            raise StoreUnavailable("the store is away", retry_after=1)
        return super().apply_and_claim(decisions, **options)


def test_ends_are_kept_when_a_batched_write_fails(db_path: Any) -> None:
    FlakyStore.failures = 3
    uw = Underway(FlakyStore(str(db_path)))

    @uw.task
    def quick(n: int) -> int:
        return n

    handles = uw.submit_many("quick", [{"n": n} for n in range(60)])
    worker = uw.start(1)
    try:
        assert [h.wait(30) for h in handles] == list(range(60))
        assert FlakyStore.failures == 0
        assert uw.store.count(state=State.RUNNING) == 0
        wait_for(lambda: worker.running_ids == [], timeout=5)
    finally:
        uw.close()


def _meeting(uw: Underway, jobs: int, timeout: float) -> None:
    """Task `meet`: its jobs finish only together, each waiting for `jobs` to start."""
    together = threading.Barrier(jobs)

    @uw.task
    def meet() -> bool:
        together.wait(timeout=timeout)
        return True


def test_a_bulk_submission_to_an_idle_worker_starts_on_as_many_slots(uw: Underway) -> None:
    # Twenty jobs that can only finish together, submitted at once while every slot
    # waits for work and polls only once a minute: the submission announces its jobs
    # once, so the slot that wakes must pass the word on to as many as it leaves.
    _meeting(uw, 20, timeout=10)
    uw.start(24, idle_poll=60)
    waiting = uw.store.notifier._waiters  # the slots' wake-ups, by key
    wait_for(lambda: len(waiting.get(WORK, ())) == 24, timeout=10)
    handles = uw.submit_many("meet", [{} for _ in range(20)])
    assert all(h.wait(15) for h in handles)


def test_claimed_jobs_never_wait_behind_a_long_job_while_slots_are_free(uw: Underway) -> None:
    # Twenty jobs that can only finish together: each waits for all the others to
    # start. A slot that claimed several at once runs them one after another, so they
    # finish only if the ones it cannot start yet go to the free slots.
    _meeting(uw, 20, timeout=20)

    @uw.task
    def quick() -> None:
        return None

    # A backlog of quick jobs first, so that the worker claims in batches; idle slots
    # then sleep until new work is announced (no polling to find the waiting jobs).
    uw.start(24, idle_poll=60)
    for handle in uw.submit_many("quick", [{} for _ in range(300)]):
        handle.wait(30)
    handles = uw.submit_many("meet", [{} for _ in range(20)])
    assert all(h.wait(30) for h in handles)
