"""Job ids: unique, in creation order, and carrying their time (ULID layout)."""

from __future__ import annotations

import threading
import time
from itertools import pairwise

from underway._util import id_time, new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(job_id: str) -> int:
    value = 0
    for char in job_id:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_ids_made_in_a_burst_sort_in_creation_order_and_carry_their_time() -> None:
    made: list[tuple[int, str, int]] = []  # (ms before, id, ms after)
    for _ in range(20_000):
        before = time.time_ns() // 1_000_000
        job_id = new_id()
        made.append((before, job_id, time.time_ns() // 1_000_000))
    ids = [job_id for _, job_id, _ in made]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for before, job_id, after in made:
        assert len(job_id) == 26 and set(job_id) <= set(CROCKFORD)
        value = decode(job_id)
        assert value >> 128 == 0  # 130 bits written, 128 used
        stamp = id_time(job_id)
        assert stamp is not None and before <= round(stamp * 1000) <= after
        assert value >> 80 == round(stamp * 1000)
    # Within one millisecond the random part counts up by one.
    same_ms = [(decode(a), decode(b)) for a, b in pairwise(ids) if a[:10] == b[:10]]
    assert same_ms, "a burst of 20,000 ids spans some millisecond twice"
    assert all(b - a == 1 for a, b in same_ms)


def test_ids_made_by_many_threads_at_once_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def make(out: list[str]) -> None:
        start.wait()
        out.extend(new_id() for _ in range(5_000))

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for out in made for job_id in out]
    assert len(set(every)) == len(every) == 20_000
    for out in made:  # each thread's own ids in the order it made them
        assert out == sorted(out)
