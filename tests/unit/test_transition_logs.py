"""Transition lines go through the `underway` logger like any other: levels, filters and
handlers apply, and each record says where it comes from and which job it is about."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from typing import Any

import pytest

from tests.contract.helpers import record
from underway import lifecycle, logs
from underway.records import State


def test_a_claim_line_names_its_origin_and_carries_the_jobs_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = record("report", state=State.RUNNING, attempt=1, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="underway"):
        lifecycle.log_claimed(job, "worker-1")
    [line] = [r for r in caplog.records if r.name == "underway.jobs"]
    assert line.getMessage() == (
        f"job {job.id} report attempt 1/3: queued -> running (worker worker-1)"
    )
    assert (line.filename, line.funcName, line.levelno) == (
        "lifecycle.py",
        "log_claimed",
        logging.INFO,
    )
    assert line.lineno == lifecycle.log_claimed.__code__.co_firstlineno
    assert (line.job_id, line.task, line.attempt) == (job.id, "report", 1)  # type: ignore[attr-defined]


def test_filters_and_levels_apply_to_transition_lines(caplog: pytest.LogCaptureFixture) -> None:
    job = record("report")
    logger = logging.getLogger("underway.jobs")

    def drop_reports(line: logging.LogRecord) -> bool:
        return getattr(line, "task", None) != "report"

    logger.addFilter(drop_reports)
    try:
        with caplog.at_level(logging.INFO, logger="underway"):
            lifecycle.log_submitted(job)
            lifecycle.log_submitted(record("other"))
    finally:
        logger.removeFilter(drop_reports)
    assert [r.task for r in caplog.records if r.name == "underway.jobs"] == ["other"]  # type: ignore[attr-defined]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="underway"):
        lifecycle.log_submitted(job)
    assert caplog.records == []


def _claim_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="underway"):
        lifecycle.log_claimed(record("report", state=State.RUNNING, attempt=1), "worker-1")
    [line] = [r for r in caplog.records if r.name == "underway.jobs"]
    return line


def test_a_line_is_the_record_the_stdlib_would_make(caplog: pytest.LogCaptureFixture) -> None:
    # Lines after the first of a thread are made from a copy of it: each must still say
    # what the stdlib's own record would, its message and time its own.
    _claim_line(caplog)
    before = time.time()
    line = _claim_line(caplog)
    code = lifecycle.log_claimed.__code__
    made = lifecycle.log.makeRecord(
        lifecycle.log.name,
        logging.INFO,
        lifecycle.__file__,
        code.co_firstlineno,
        line.msg,
        line.args,
        None,
        code.co_name,
        {"job_id": line.job_id, "task": "report", "attempt": 1},  # type: ignore[attr-defined]
    )
    # Formatters add `message` and `asctime`.
    timed = {"created", "msecs", "relativeCreated", "message", "asctime"}
    assert {k: v for k, v in vars(line).items() if k not in timed} == {
        k: v for k, v in vars(made).items() if k not in timed
    }
    assert before <= line.created <= made.created
    assert line.msecs == int((line.created - int(line.created)) * 1000)
    apart = made.relativeCreated - line.relativeCreated
    assert abs(apart - (made.created - line.created) * 1e3) < 1
    assert line.getMessage() != _claim_line(caplog).getMessage()  # each job its own line


def test_a_renamed_thread_and_a_forked_child_name_themselves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread = threading.current_thread()
    name = thread.name
    _claim_line(caplog)
    thread.name = "renamed-for-the-test"
    try:
        assert _claim_line(caplog).threadName == "renamed-for-the-test"
    finally:
        thread.name = name
    assert _claim_line(caplog).threadName == name
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of a fork beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report the process its line names, then leave at once
        try:
            os.write(write, str(_claim_line(caplog).process).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        named = pipe.read()
    os.waitpid(pid, 0)
    assert named == str(pid)


def test_an_applications_record_factory_makes_every_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[logging.LogRecord] = []
    default = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        line = default(*args, **kwargs)
        made.append(line)
        return line

    logging.setLogRecordFactory(factory)
    try:
        lines = [_claim_line(caplog), _claim_line(caplog)]
    finally:
        logging.setLogRecordFactory(default)
    assert [id(line) for line in made] == [id(line) for line in lines]


def test_the_text_format_writes_the_time_as_the_stdlib_does() -> None:
    ours = logs.TextFormatter()
    stdlib = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Across second boundaries, in and out of order (lines of several threads).
    for created in (1700000000.999, 1700000001.0005, 1700000000.25, 1700000061.5, time.time()):
        line = logging.LogRecord("underway.jobs", logging.INFO, "x.py", 1, "m %s", ("a",), None)
        line.created, line.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(line) == stdlib.format(line)
    line.created = 1700000000.0
    assert ours.formatTime(line, "%H") == stdlib.formatTime(line, "%H")


def test_the_text_format_follows_a_converter_set_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # An application that logs in UTC sets the formatter's converter: it applies at
    # once, within the second already written in local time.
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30: local and UTC times differ
    time.tzset()
    try:
        ours = logs.TextFormatter()
        stdlib = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        line = logging.LogRecord("underway.jobs", logging.INFO, "x.py", 1, "m", (), None)
        line.created, line.msecs = 1700000000.5, 500.0
        local = ours.format(line)
        assert local == stdlib.format(line)
        ours.converter = stdlib.converter = time.gmtime  # type: ignore[method-assign]
        assert ours.format(line) == stdlib.format(line) != local
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_json_format_writes_each_lines_own_time() -> None:
    formatter = logs.JsonFormatter()
    for created in (1700000000.999, 1700000001.0005, 1700000000.25, 1700000061.5):
        line = logging.LogRecord("underway.jobs", logging.INFO, "x.py", 1, "m", (), None)
        line.created, line.msecs = created, int((created - int(created)) * 1000) + 0.0
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert json.loads(formatter.format(line))["time"] == f"{expected}.{int(line.msecs):03d}Z"
