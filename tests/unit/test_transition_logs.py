"""Transition lines go through the `underway` logger like any other: levels, filters and
handlers apply, and each record says where it comes from and which job it is about."""

from __future__ import annotations

import logging

import pytest

from tests.contract.helpers import record
from underway import lifecycle
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
