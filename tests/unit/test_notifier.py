"""The in-process wake-up table: wakes the right waiters and stays small."""

from __future__ import annotations

import threading

from underway.feed import ChangeFeed


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
