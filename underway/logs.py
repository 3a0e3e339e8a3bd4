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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the job's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
