"""Logging for operators: every job transition is one line on the `underway` logger.

A library leaves logging to its application; `underway serve` and `underway worker`
configure it with `--log-level` and `--log-format text|json`. JSON lines carry the
job's id, task and attempt as fields of their own, for log pipelines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_FIELDS = ("job_id", "task", "attempt")


class _Seconds:
    """`time.strftime(fmt, convert(second))`, remembered for the latest second: a
    worker writes two lines a job, many in the same second."""

    __slots__ = ("fmt", "convert", "second", "text")

    def __init__(self, fmt: str, convert: Callable[[float | None], time.struct_time]) -> None:
        self.fmt, self.convert = fmt, convert
        self.second, self.text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            # Written in this order, so that a thread reading both meanwhile finds a
            # text of its second or of none (`second` still the old one: made again).
            self.second = -1
            self.text = time.strftime(self.fmt, self.convert(second))
            self.second = second
            return self.text
        text = self.text
        return text if self.second == second else time.strftime(self.fmt, self.convert(second))


class TextFormatter(logging.Formatter):
    """`time level logger: message`, the time as the stdlib's default formatter writes it
    (local time, milliseconds after a comma)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._seconds = _Seconds(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the job's fields."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _Seconds("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self._seconds(record.created) + f".{int(record.msecs):03d}Z",
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
