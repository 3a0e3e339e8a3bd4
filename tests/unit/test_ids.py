"""Job ids: unique, in creation order, and carrying their time (ULID layout)."""

from __future__ import annotations

import threading
import time
from itertools import pairwise
from types import SimpleNamespace

import pytest

from underway import _util
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


def test_ids_count_up_across_the_digits_kept_from_the_id_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The digits of the millisecond and of the random part's upper 40 bits are kept from
    # one id to the next: counting up across a carry into those bits must change them.
    for name in ("_last_ms", "_last_rand", "_ms_digits", "_high", "_high_digits"):
        monkeypatch.setattr(_util, name, getattr(_util, name))
    monkeypatch.setattr(_util, "_last_ms", 0)
    ms = 1_800_000_000_123
    monkeypatch.setattr(_util, "time", SimpleNamespace(time_ns=lambda: ms * 1_000_000))
    start = (7 << 40) - 3  # three ids below a carry into the upper 40 bits
    monkeypatch.setattr(_util, "_random_bytes", lambda n: (start << 1).to_bytes(n, "big"))
    ids = [new_id() for _ in range(6)]
    assert [decode(job_id) for job_id in ids] == [(ms << 80) | (start + i) for i in range(6)]
