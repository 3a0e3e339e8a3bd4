"""Records made on the hot path (without the dataclass __init__) are whole records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from underway import State, Underway
from underway._util import dumps, loads
from underway.records import RECORD_FIELDS, JobRecord


def test_from_fields_is_the_same_record_as_the_constructor() -> None:
    made = JobRecord(id="a", task="t", params={"x": 1}, attempt=2, meta={"k": "v"})
    fast = JobRecord.from_fields({name: getattr(made, name) for name in RECORD_FIELDS})
    assert fast == made
    assert hash(fast.id) == hash(made.id)
    assert fast.evolve(attempt=3) == made.evolve(attempt=3)
    with pytest.raises(AttributeError):
        fast.attempt = 5  # type: ignore[misc]


def test_records_of_a_job_name_every_field(tmp_path: Path) -> None:
    """Submit, claim and the final row each give a record with every field set."""
    uw = Underway(f"sqlite:///{tmp_path}/r.db", workers=1)

    @uw.task(name="noop")
    def noop() -> int:
        return 1

    submitted = uw.enqueue("noop", {})
    assert sorted(vars(submitted)) == sorted(RECORD_FIELDS)
    uw.start()
    try:
        done = uw.wait(submitted.id, timeout=30)
    finally:
        uw.close()
    assert done.state is State.SUCCEEDED and done.result == 1
    assert sorted(vars(done)) == sorted(RECORD_FIELDS)
    with Underway(f"sqlite:///{tmp_path}/r.db") as reader:
        read = reader.get(submitted.id)
    assert read is not None and sorted(vars(read)) == sorted(RECORD_FIELDS)
    assert read.to_dict() == done.to_dict()


@pytest.mark.parametrize(
    "text", ["{}", "1", "null", '{"a": [1, 2.5, "é"]}', '"x"', "[]", " 1 ", "true"]
)
def test_loads_reads_what_json_reads(text: str) -> None:
    assert loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", "1 2", "nul", "{}x"])
def test_loads_refuses_what_json_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


@pytest.mark.parametrize(
    "value", [{}, [], 1, 1.5, -0.0, 10**30, 'é\n"', None, True, {"a": [1, {"b": None}]}]
)
def test_dumps_writes_what_json_writes(value: object) -> None:
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert dumps(value) == compact


def test_dumps_refuses_what_json_cannot_hold() -> None:
    looped: list[object] = []
    looped.append(looped)
    for bad in (float("nan"), looped):
        with pytest.raises(ValueError):
            dumps(bad)
    with pytest.raises(TypeError):
        dumps(object())
