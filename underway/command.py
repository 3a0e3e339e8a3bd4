"""Running an external program as part of a job.

`run_command(job, argv)` (or `job.run_command(argv)`) starts the program in a process
group of its own, turns its output lines into the job's output, log and progress, and
stops the whole group (SIGTERM, then SIGKILL) when the job is cancelled.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal

from .errors import Cancelled, UnderwayError

if TYPE_CHECKING:
    from .job import Job

__all__ = ["CommandFailed", "CommandResult", "CommandTimeout", "run_command"]

Output = Literal["lines", "log", "none"]
ProgressParser = Callable[[str], tuple[float, float | None, str | None] | None]

KEEP_STDOUT_LINES = 1000  # the tail of stdout a CommandResult holds
KEEP_STDERR_LINES = 50  # the tail of stderr kept for errors
SHOWN_STDERR_LINES = 10  # of which an error message quotes the last few
_POLL = 0.05  # seconds between looks at the job's cancel flag


class CommandFailed(UnderwayError):
    """The program exited with a non-zero code (`check=True`); `stderr_tail` holds
    the last lines it wrote to stderr."""

    code = "command-failed"

    def __init__(self, argv: Sequence[str], returncode: int, stderr_tail: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = tuple(stderr_tail)
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"command {shlex.join(self.argv)!r} {_describe_exit(self.returncode)}"
        shown = self.stderr_tail[-SHOWN_STDERR_LINES:]
        if shown:
            text += "; last lines of stderr:\n" + "\n".join(shown)
        return text


class CommandTimeout(CommandFailed):
    """The program ran longer than its `timeout` and was stopped."""

    code = "command-timeout"

    def __init__(
        self, argv: Sequence[str], returncode: int, stderr_tail: Sequence[str], timeout: float
    ) -> None:
        self.timeout = timeout
        super().__init__(argv, returncode, stderr_tail)

    def _describe(self) -> str:
        return (
            f"command {shlex.join(self.argv)!r} ran longer than {self.timeout:g}s and was stopped"
        )


@dataclass(frozen=True, kw_only=True)
class CommandResult:
    """How a program run by `run_command` ended."""

    argv: tuple[str, ...]
    returncode: int
    lines: tuple[str, ...]  # the last KEEP_STDOUT_LINES lines of stdout, progress lines too
    stderr_tail: tuple[str, ...]  # the last KEEP_STDERR_LINES lines of stderr


def run_command(
    job: Job,
    argv: Sequence[str | os.PathLike[str]],
    *,
    progress: str | re.Pattern[str] | ProgressParser | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    check: bool = True,
    output: Output = "lines",
    grace: float = 5.0,
) -> CommandResult:
    """Run `argv` (no shell) for `job` and wait for it.

    Each stdout line becomes an output item (`output="lines"`, the default: the
    program's output is the job's output), a log line (`"log"`), or is only kept in
    the result (`"none"`). Stderr lines are logged (except with `"none"`) and the last
    of them are quoted by `CommandFailed`.

    `progress` turns lines of either stream into `job.progress()`: a regular
    expression with named groups `current` and optionally `total` and `message`
    (`r"(?P<current>\\d+)/(?P<total>\\d+)"`), or a callable `line -> (current, total,
    message) | None`. A line taken as progress is not repeated as output or log.

    `env` is added to the current environment. When the job is cancelled, the
    program's process group gets SIGTERM, SIGKILL `grace` seconds later, and
    `Cancelled` is raised; past `timeout` seconds the same happens with
    `CommandTimeout`. A non-zero exit raises `CommandFailed` unless `check=False`.
    """
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of arguments, not a string (no shell is used)")
    args = [os.fspath(a) for a in argv]
    if output not in ("lines", "log", "none"):
        raise ValueError(f"output must be 'lines', 'log' or 'none', not {output!r}")
    parse = _progress_parser(progress)
    job.check_cancelled()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **env} if env is not None else None,
        start_new_session=True,  # its own process group: one signal reaches all of it
        text=True,  # universal newlines: a progress bar's '\r' ends a line too
        encoding="utf-8",
        errors="replace",
    )
    run = _Run(job, args, proc, parse, output, grace)
    try:
        returncode = run.follow(timeout)
    except BaseException:
        run.stop()
        raise
    finally:
        run.close()
    result = CommandResult(
        argv=tuple(args),
        returncode=returncode,
        lines=tuple(run.stdout_tail),
        stderr_tail=tuple(run.stderr_tail),
    )
    if check and returncode != 0:
        raise CommandFailed(args, returncode, result.stderr_tail)
    return result


class _Run:
    """One running program: its readers, the line handling, and stopping it."""

    def __init__(
        self,
        job: Job,
        argv: list[str],
        proc: subprocess.Popen[str],
        parse: ProgressParser | None,
        output: Output,
        grace: float,
    ) -> None:
        self.job = job
        self.argv = argv
        self.proc = proc
        self.parse = parse
        self.output = output
        self.grace = grace
        self.stdout_tail: deque[str] = deque(maxlen=KEEP_STDOUT_LINES)
        self.stderr_tail: deque[str] = deque(maxlen=KEEP_STDERR_LINES)
        # Lines of both streams arrive on one queue, so that the parser and the job
        # are only ever called from the task's own thread.
        self.lines: queue.SimpleQueue[tuple[bool, str | None]] = queue.SimpleQueue()
        self.readers = [
            self._reader(proc.stdout, is_stderr=False),
            self._reader(proc.stderr, is_stderr=True),
        ]

    def _reader(self, stream: IO[str] | None, *, is_stderr: bool) -> threading.Thread:
        def read() -> None:
            assert stream is not None
            try:
                for line in stream:
                    self.lines.put((is_stderr, line.rstrip("\r\n")))
            except (OSError, ValueError):
                pass  # closed under us while stopping
            finally:
                self.lines.put((is_stderr, None))

        thread = threading.Thread(target=read, name="underway-command-reader", daemon=True)
        thread.start()
        return thread

    def follow(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        open_streams = 2
        while True:
            if self.job.cancelled:
                self.stop()
                raise Cancelled()
            if deadline is not None and time.monotonic() > deadline:
                assert timeout is not None
                returncode = self.stop()
                raise CommandTimeout(self.argv, returncode, tuple(self.stderr_tail), timeout)
            if open_streams:
                try:
                    is_stderr, line = self.lines.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                else:
                    self._handle(line, is_stderr)
                continue
            try:
                return self.proc.wait(_POLL)
            except subprocess.TimeoutExpired:
                continue  # it closed its output but has not exited yet

    def _handle(self, line: str, is_stderr: bool) -> None:
        (self.stderr_tail if is_stderr else self.stdout_tail).append(line)
        if self.parse is not None:
            parsed = self.parse(line)
            if parsed is not None:
                current, total, message = parsed
                self.job.progress(current, total, message)
                return
        if self.output == "none":
            return
        if is_stderr or self.output == "log":
            self.job.log(line)
        else:
            self.job.emit(line)

    def stop(self) -> int:
        """Stop the program's whole group: SIGTERM, then SIGKILL after the grace period
        (or as soon as the leader is gone, for members that ignore SIGTERM)."""
        if self.proc.returncode is None:
            signal_group(self.proc, signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            while peek_exit_code(self.proc) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            signal_group(self.proc, signal.SIGKILL)
        return self.proc.wait()

    def close(self) -> None:
        for reader in self.readers:
            reader.join(timeout=1.0)  # a process that left the group may hold a pipe open
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def peek_exit_code(proc: subprocess.Popen[Any]) -> int | None:
    """The exit code of `proc` once it exited, without reaping it: while it is an
    unreaped zombie its pid, and so its process group id, cannot be given to another
    process, which keeps signalling the group safe."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        status = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.wait()  # reaped already; Popen has the code
    if status is None:
        return None
    return status.si_status if status.si_code == os.CLD_EXITED else -status.si_status


def signal_group(proc: subprocess.Popen[Any], signum: signal.Signals) -> None:
    """Send `signum` to the process group that `proc` leads, unless it was reaped."""
    if proc.returncode is not None:
        return  # reaped: the group id may belong to another process by now
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in the group


def _progress_parser(
    progress: str | re.Pattern[str] | ProgressParser | None,
) -> ProgressParser | None:
    if progress is None or callable(progress):
        return progress
    pattern = re.compile(progress) if isinstance(progress, str) else progress
    if "current" not in pattern.groupindex:
        raise ValueError("a progress pattern needs a named group 'current', e.g. (?P<current>\\d+)")

    def parse(line: str) -> tuple[float, float | None, str | None] | None:
        match = pattern.search(line)
        if match is None:
            return None
        groups = match.groupdict()
        try:
            current = _number(groups["current"])
            total = _number(groups["total"]) if groups.get("total") else None
        except (TypeError, ValueError):
            return None
        return current, total, groups.get("message")

    return parse


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "a signal"
        return f"was killed by {name}"
    return f"exited with code {returncode}"
