"""Small helpers shared by the engine: ids, time, JSON, durations."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 digits
_id_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
# The digits of the last id's millisecond and of its random part's upper 40 bits, which
# the ids made in one millisecond share (their random parts count up from the first).
_ms_digits = ""
_high = -1
_high_digits = ""


_pool = b""


def _random_bytes(n: int) -> bytes:
    """`n` bytes from the OS's random source, read ahead in blocks (one system call,
    which gives up the GIL, per 64 new milliseconds rather than per id). Call under
    `_id_lock`."""
    global _pool
    if len(_pool) < n:
        _pool = os.urandom(n * 64)
    out, _pool = _pool[:n], _pool[n:]
    return out


def new_id() -> str:
    """A 26-character, time-ordered, unique id (ULID layout: 48-bit ms + 80-bit random).

    Within one millisecond the random part is incremented, so ids made by one process
    sort in creation order.
    """
    global _last_ms, _last_rand, _ms_digits, _high, _high_digits
    pairs = _PAIRS
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _last_rand += 1
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(_random_bytes(10), "big") >> 1
            # 10 digits: the millisecond's 48 bits under two zero bits.
            _ms_digits = "".join([pairs[(ms >> shift) & 1023] for shift in (40, 30, 20, 10, 0)])
        rand = _last_rand & 0xFFFFFFFFFFFFFFFFFFFF
        high = rand >> 40
        if high != _high:
            _high = high
            _high_digits = "".join([pairs[(high >> shift) & 1023] for shift in (30, 20, 10, 0)])
        head = _ms_digits + _high_digits
    low = rand & 0xFFFFFFFFFF
    return (
        head + pairs[low >> 30] + pairs[(low >> 20) & 1023] + pairs[(low >> 10) & 1023]
    ) + pairs[low & 1023]


def id_time(job_id: str) -> float | None:
    """When an id made by `new_id` was made (epoch seconds); None for other strings."""
    if len(job_id) != 26:
        return None
    value = 0
    for char in job_id[:10]:
        digit = _CROCKFORD.find(char.upper())
        if digit < 0:
            return None
        value = value * 32 + digit
    return value / 1000.0


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: float | int | str | None) -> float | None:
    """Seconds from 30, 2.5, "30s", "5m", "1d"; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value!r}")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use seconds or e.g. '30s', '5m', '1d')")
    return float(match.group(1)) * _UNITS[match.group(2)]


# The C encoder that `json.dumps(..., separators=(",", ":"), ensure_ascii=False,
# allow_nan=False)` builds on every call, built once. Without a table of the objects
# being encoded (which one encoder shared by threads could not keep), a value that
# contains itself ends in RecursionError, turned into json's ValueError below.
_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None,
    json.JSONEncoder().default,
    json.encoder.encode_basestring,
    None,
    ":",
    ",",
    False,
    False,
    False,
)


def dumps(value: Any) -> str:
    """Compact JSON; raises TypeError/ValueError for what JSON cannot hold."""
    try:
        return "".join(_ENCODE(value, 0))
    except RecursionError:
        raise ValueError("Circular reference detected (or nesting too deep)") from None


# The decoder's scanner alone: `json.loads` spends most of a small document's time
# around it (type checks, keyword handling, a whitespace regex).
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]


def loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    if isinstance(text, str):
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            pass  # not JSON: json.loads raises the error that says where
        else:
            if end == len(text):
                return value
    return json.loads(text)


def to_jsonable(value: Any) -> Any:
    """Turn pydantic models, dataclasses, dates and the like into JSON-ready values."""
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)
