"""What one transition line costs, against the stdlib's own way of writing it, by hand:

    python bench/bench_logs.py [--lines 50000] [--rounds 5]

A worker writes two lines a job (its claim and its end) when `underway worker` or
`underway serve` sets logging up (INFO, to stderr). Each round times, interleaved, in
this one thread, with the handler writing to /dev/null:

- underway: `lifecycle.log_claimed`'s line through the `underway` logger, with the
  handler `underway.logs.configure` installs (text, then JSON);
- the stdlib: the same message, arguments and fields by `logger.info(..., extra=...)`
  through a `StreamHandler`, the way an application would: with `logging.Formatter` of
  the same text format, and with a `JsonFormatter` of its own for JSON (so that only
  the record's making differs there).

Prints microseconds per line (the minimum over the rounds) and the ratio to the
stdlib's.
"""

from __future__ import annotations

import argparse
import logging
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from underway import lifecycle, logs
from underway.records import State


def _to_null(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open("/dev/null", "w"))  # noqa: SIM115 - closed at exit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from tests.contract.helpers import record

    job = record("report", state=State.RUNNING, attempt=1, max_attempts=3)
    worker = "host:1234:ABCDEF"

    def ours() -> None:
        lifecycle.log_claimed(job, worker)

    plain = logging.getLogger("bench.stdlib")
    plain.propagate = False
    plain.setLevel(logging.INFO)
    fields: dict[str, Any] = {"job_id": job.id, "task": job.task, "attempt": job.attempt}
    message = "job %s %s attempt %d/%d: queued -> running (worker %s)"

    def theirs() -> None:
        plain.info(message, job.id, job.task, job.attempt, job.max_attempts, worker, extra=fields)

    text = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    for fmt, stdlib_formatter in (
        ("text", logging.Formatter(text)),
        ("json", logs.JsonFormatter()),
    ):
        logs.configure("info", fmt)
        _to_null(logging.getLogger("underway"))
        for handler in list(plain.handlers):
            plain.removeHandler(handler)
        handler = logging.StreamHandler(open("/dev/null", "w"))  # noqa: SIM115
        handler.setFormatter(stdlib_formatter)
        plain.addHandler(handler)
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a.append(timeit.timeit(ours, number=args.lines) / args.lines)
            b.append(timeit.timeit(theirs, number=args.lines) / args.lines)
        us, them = min(a) * 1e6, min(b) * 1e6
        print(
            f"{fmt}: a transition line {us:.2f} us, the stdlib's logger.info of the same "
            f"line {them:.2f} us; ratio {us / them:.2f} (minimum of {args.rounds} rounds of "
            f"{args.lines:,} lines, interleaved)"
        )


if __name__ == "__main__":
    main()
