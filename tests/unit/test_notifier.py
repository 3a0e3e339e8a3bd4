"""The in-process wake-up table: wakes the right waiters and stays small."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from tests.support.wait import wait_for
from underway import Underway
from underway.feed import ChangeFeed, Known, Signal
from underway.records import JobRecord, State


def test_a_change_wakes_the_waiter_of_that_key_only() -> None:
    notifier = ChangeFeed()
    woken: dict[str, threading.Event] = {"a": threading.Event(), "b": threading.Event()}
    ready = threading.Barrier(3)

    def waiter(key: str) -> None:
        seen = notifier.version(key)
        ready.wait()
        if notifier.wait(key, seen, timeout=5) != seen:
            woken[key].set()

    threads = [threading.Thread(target=waiter, args=(k,)) for k in woken]
    for t in threads:
        t.start()
    ready.wait()
    notifier.notify("a")
    assert woken["a"].wait(5)
    assert not woken["b"].is_set()
    notifier.notify("b")
    for t in threads:
        t.join(5)
    assert woken["b"].is_set()


def test_versions_seen_before_the_table_is_cleared_still_count_as_changed() -> None:
    notifier = ChangeFeed()
    notifier.notify("job")
    seen = notifier.version("job")
    for n in range(ChangeFeed.MAX_KEYS + 10):  # forces a clear
        notifier.notify(f"other-{n}")
    assert len(notifier._versions) <= ChangeFeed.MAX_KEYS
    assert notifier.version("job") != seen
    # And a key read after the clear still sees its next change.
    again = notifier.version("job")
    notifier.notify("job")
    assert notifier.wait("job", again, timeout=0) != again


def test_listeners_are_called_and_can_unsubscribe() -> None:
    notifier = ChangeFeed()
    calls: list[str] = []
    unsubscribe = notifier.subscribe("k", lambda: calls.append("k"))
    notifier.notify("k")
    notifier.notify_everything()
    unsubscribe()
    notifier.notify("k")
    assert calls == ["k", "k"]


def _record(state: State) -> JobRecord:
    return JobRecord(id="job", task="t", params={}, state=state)


def test_what_a_store_knows_holds_until_the_next_change() -> None:
    notifier = ChangeFeed()
    assert notifier.known("job") == (notifier.version("job"), None)
    done = _record(State.SUCCEEDED)
    notifier.notify("job", known={"job": Known(State.SUCCEEDED, record=done)})
    version, known = notifier.known("job")
    assert version == notifier.version("job")
    assert known is not None and known.full() is done
    notifier.notify("job")  # a change nobody described: waiters must read
    assert notifier.known("job")[1] is None
    notifier.notify("job", known={"job": Known(State.FAILED, load=lambda: done)})
    known = notifier.known("job")[1]
    assert known is not None and known.state is State.FAILED and known.full() is done
    notifier.notify_everything()
    assert notifier.known("job")[1] is None


def test_what_a_store_knows_for_a_while_only_is_forgotten_after_it() -> None:
    notifier = ChangeFeed()
    queued = _record(State.QUEUED)
    soon = time.monotonic() + 60.0
    notifier.notify("a", known={"a": Known(State.QUEUED, record=queued, until=soon)})
    known = notifier.known("a")[1]
    assert known is not None and known.full() is queued
    past = time.monotonic() - 0.001
    notifier.notify("b", known={"b": Known(State.QUEUED, record=queued, until=past)})
    assert notifier.known("b") == (notifier.version("b"), None)  # a waiter must read


def test_news_of_a_write_announced_late_does_not_hide_a_later_change() -> None:
    notifier = ChangeFeed()
    mark = notifier.mark()  # before the write
    notifier.notify("job", known={"job": Known(State.SUCCEEDED)})  # heard from elsewhere
    notifier.notify("job", known={"job": Known(State.QUEUED)}, since=mark)  # the write's own
    assert notifier.known("job")[1] is None  # unknown: a waiter reads
    mark = notifier.mark()
    notifier.notify("job", known={"job": Known(State.RUNNING)}, since=mark)
    known = notifier.known("job")[1]
    assert known is not None and known.state is State.RUNNING


def test_wait_reads_nothing_while_the_store_says_what_changed() -> None:
    """A waiter for a job's end reads nothing when the store says what changed, and
    sleeps through a change that leaves the job unfinished (its claim)."""
    reads: list[str] = []
    sleeping: queue.Queue[str] = queue.Queue()

    class Feed(ChangeFeed):
        def wait_end(self, key: str, seen: int, timeout: float | None) -> int:
            sleeping.put(key)  # a change from now on is not missed (versions)
            return super().wait_end(key, seen, timeout)

    class App:
        feed = Feed()

        def find(self, job_id: str, owner: str | None = None) -> JobRecord:
            reads.append(job_id)
            return queued

    app: Any = App()
    queued, done = _record(State.QUEUED), _record(State.SUCCEEDED)
    app.feed.notify("job", known={"job": Known(State.QUEUED, record=queued)})  # submitted
    result: list[JobRecord] = []
    waiting = threading.Thread(
        target=lambda: result.append(Underway.wait(app, "job", timeout=5)), daemon=True
    )
    waiting.start()
    assert sleeping.get(timeout=5) == "job"
    wait_for(lambda: app.feed._end_waiters.get("job"), 5, 0.001, "the waiter to sleep")
    running = app.feed.version("job")
    app.feed.notify("job", known={"job": Known(State.RUNNING)})
    assert app.feed.version("job") != running  # the change counts, but wakes nobody:
    assert app.feed._end_waiters.get("job")  # the waiter still sleeps
    app.feed.notify("job", known={"job": Known(State.SUCCEEDED, load=lambda: done)})
    waiting.join(5)
    assert result == [done] and reads == []
    assert sleeping.qsize() == 0  # it went to sleep once: the claim did not wake it


def test_a_change_the_store_says_nothing_of_wakes_end_waiters() -> None:
    feed = ChangeFeed()
    seen = feed.version("job")
    woke: list[int] = []
    waiting = threading.Thread(target=lambda: woke.append(feed.wait_end("job", seen, 5)))
    waiting.start()
    wait_for(lambda: feed._end_waiters, 5, 0.001, "the waiter to register")
    feed.notify("job", known={"job": Known(State.RUNNING)})
    feed.notify("job")  # e.g. another process's write, or a delete
    waiting.join(5)
    assert woke and woke[0] != seen


def test_a_signal_wakes_its_waiter_once_however_often_it_is_set() -> None:
    """`Signal`, the feed's wake-up for one waiter: set before the wait, the wait
    returns at once; set twice, no error; never set, the wait times out; set from
    another thread, it wakes a waiter that waits without a time limit."""
    early = Signal()
    early.set()
    early.set()
    assert early.wait(0.0)
    assert not Signal().wait(0.01)
    signal = Signal()
    woke = queue.Queue[bool]()
    thread = threading.Thread(target=lambda: woke.put(signal.wait()))
    thread.start()
    signal.set()
    assert woke.get(timeout=5)
    thread.join(5)
    signal.set()  # after the wait: harmless
