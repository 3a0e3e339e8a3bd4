"""Logging for operators: every job transition is one line on the `underway` logger.

A library leaves logging to its application; `underway serve` and `underway worker`
configure it with `--log-level` and `--log-format text|json`. JSON lines carry the
job's id, task and attempt as fields of their own, for log pipelines.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_FIELDS = ("job_id", "task", "attempt")


class TextFormatter(logging.Formatter):
    """`time level logger: message`, the time as the stdlib's default formatter writes it
    (its `converter`, local time by default, and milliseconds after a comma), with each
    second's text made once: a worker writes two lines a job, many in the same second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        # (second, converter, text): one attribute, replaced whole, so that threads
        # formatting at once never read one second's text for another.
        self._second: tuple[int, Any, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, convert = int(record.created), self.converter
        cached = self._second
        if cached[0] != second or cached[1] != convert:
            text = time.strftime(self.default_time_format, convert(second))
            cached = self._second = (second, convert, text)
        msec = self.default_msec_format
        return msec % (cached[2], record.msecs) if msec else cached[2]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the job's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # each second's text, made once

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            cached = self._second = (second, text)
        data: dict[str, Any] = {
            "time": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send the `underway` logger's lines at `level` and above to stderr, as text or
    JSON (replacing a handler this function added before)."""
    if level not in LEVELS or fmt not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    logger = logging.getLogger("underway")
    for handler in list(logger.handlers):
        if getattr(handler, "_underway", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._underway = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
