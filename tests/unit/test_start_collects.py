"""Starting the embedded workers moves the process's pending full garbage collection
out of the first jobs' way."""

from __future__ import annotations

import gc
from typing import Any

from underway import Underway


def test_start_collects_so_that_the_first_jobs_meet_no_full_collection(uw: Underway) -> None:
    @uw.task
    def noop() -> int:
        return 1

    # A heap whose next full collection is due soon, as in a process that has just
    # imported everything: many objects made since the last one, kept, and the
    # collector's count one short of looking at the oldest generation (10).
    gc.collect()
    gc.disable()
    try:
        kept = [[i] for i in range(200_000)]
        for _ in range(10):
            gc.collect(1)
    finally:
        gc.enable()
    assert gc.get_count()[2] == 10

    full: list[str] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full.append(when)

    gc.callbacks.append(note)
    try:
        when = "start"
        uw.start(workers=2)
        when = "jobs"
        handles = [uw.submit("noop") for _ in range(2_000)]
        assert [h.wait(30) for h in handles] == [1] * 2_000
    finally:
        gc.callbacks.remove(note)
    assert full == ["start"]
    assert len(kept) == 200_000
