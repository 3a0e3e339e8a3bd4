"""The subprocess executor: a fresh child process per job, started on demand."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from ..command import peek_exit_code, signal_group
from ..job import Job
from ..records import ErrorInfo, State
from . import _child
from ._child import Channel, JobSpec, TaskNotImportable
from .base import CANCELLED, Done, Executor, Outcome, failure

if TYPE_CHECKING:
    from ..tasks import Task

log = logging.getLogger("underway.executors.subprocess")

CHILD_MODULE = "underway.executors._child"


class _Child:
    """One job's child process, the leader of its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.lock = threading.Lock()
        self.killed = False  # kill() asked for it
        self.kill_at: float | None = None  # when the group's SIGTERM turns into SIGKILL
        self.kill_sent = False

    def exit_code(self) -> int | None:
        return peek_exit_code(self.proc)

    def stop_group(self, kill_wait: float) -> None:
        """SIGTERM to the whole group now; SIGKILL once `kill_wait` has passed."""
        with self.lock:
            if self.kill_at is not None:
                return
            self.kill_at = time.monotonic() + kill_wait
        signal_group(self.proc, signal.SIGTERM)

    @property
    def stopping(self) -> bool:
        """SIGTERM went out and SIGKILL has not yet."""
        return self.kill_at is not None and not self.kill_sent

    def escalate(self) -> None:
        with self.lock:
            due = self.stopping and time.monotonic() >= (self.kill_at or 0.0)
            if due:
                self.kill_sent = True
        if due:
            signal_group(self.proc, signal.SIGKILL)

    def reap(self) -> None:
        self.proc.wait()


class SubprocessExecutor(Executor):
    """Runs each job in a new `python -m underway.executors._child` process, in a
    session of its own: no pool and no daemon to deploy, and cancellation is hard.

    The job's spec goes to the child, and progress, output and the outcome come back,
    over a socket passed as an inherited file descriptor, so the task may print to its
    stdout freely. A cancel request is forwarded to the child first; `kill()` sends
    SIGTERM to the child's whole process group (grandchildren included) and SIGKILL
    `kill_wait` seconds later. A child that dies before reporting fails its job with
    error type `WorkerCrashed`. `size` is only a hint: the worker bounds concurrency.
    """

    name = "subprocess"

    def __init__(self, size: int = 4, *, kill_wait: float = 1.0, exit_wait: float = 5.0):
        self.size = size
        self.kill_wait = kill_wait
        self.exit_wait = exit_wait  # how long a child that reported may take to exit
        self._lock = threading.Lock()
        self._children: dict[str, _Child] = {}
        self._cleanups: set[threading.Thread] = set()
        self._stopping = threading.Event()

    # -- the seam ------------------------------------------------------------------------
    def run(self, job: Job, task: Task, done: Done) -> None:
        def follow() -> None:
            try:
                outcome = self.call(job, task)
            except Exception as exc:  # never lose a job to a bug in here
                log.exception("subprocess executor failed on job %s", job.id)
                outcome = failure(exc, type_name="ExecutorError")
            try:
                done(outcome)
            except Exception:
                log.exception("could not report the end of job %s", job.id)

        threading.Thread(target=follow, name=f"underway-subprocess-{job.id}", daemon=True).start()

    def call(self, job: Job, task: Task) -> Outcome:
        """Run the job in a new child and wait for its outcome, on the caller's thread."""
        try:
            spec = JobSpec.for_job(job, task, sys_path=True)
        except TaskNotImportable as exc:
            return Outcome(
                state=State.FAILED, error=ErrorInfo(type="TaskNotImportable", message=str(exc))
            )
        if job.cancelled:
            return CANCELLED  # asked to stop before it started
        if self._stopping.is_set():
            raise RuntimeError("the subprocess executor is shut down")
        child, channel = self._launch()
        with self._lock:
            self._children[job.id] = child
        reported = False
        try:
            try:
                channel.send({"op": "run", "spec": spec.to_dict()})
            except OSError:
                pass  # it died at once; the relay below finds out why
            outcome = _child.relay(
                channel, job, exited=lambda: child.exit_code() is not None, tick=child.escalate
            )
            reported = outcome is not None
            if outcome is None:
                outcome = self._after_exit(child)
            return outcome
        finally:
            with self._lock:
                self._children.pop(job.id, None)
            channel.close()
            self._clean_up_later(child, reported)

    def kill(self, job_id: str) -> bool:
        with self._lock:
            child = self._children.get(job_id)
        if child is None:
            return False
        child.killed = True
        child.stop_group(self.kill_wait)
        return True

    def shutdown(self, wait: bool = True) -> None:
        self._stopping.set()
        with self._lock:
            children = list(self._children.values())
            cleanups = list(self._cleanups)
        for child in children:
            child.killed = True
            child.stop_group(self.kill_wait)
        if wait:
            for thread in cleanups:
                thread.join(timeout=self.kill_wait + self.exit_wait + 1.0)

    # -- children ------------------------------------------------------------------------
    def _launch(self) -> tuple[_Child, Channel]:
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", CHILD_MODULE, "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: one signal reaches all
                env=_child_environment(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return _Child(proc), Channel(Connection(ours.detach()))

    def _after_exit(self, child: _Child) -> Outcome:
        """The child went away without reporting: killed on purpose, or crashed."""
        deadline = time.monotonic() + self.kill_wait
        while (code := child.exit_code()) is None:
            # It closed its end of the socket but lives on: make sure it ends.
            child.escalate()
            if time.monotonic() > deadline:
                child.stop_group(0.0)
            time.sleep(0.02)
        if child.killed:
            return _child.KILLED
        return _child.crashed(code, "subprocess")

    def _clean_up_later(self, child: _Child, reported: bool) -> None:
        thread = threading.Thread(
            target=self._clean_up, args=(child, reported), name="underway-subprocess-reaper"
        )
        thread.daemon = True
        with self._lock:
            self._cleanups.add(thread)
        thread.start()

    def _clean_up(self, child: _Child, reported: bool) -> None:
        """Reap the child after its job ended, off the worker's path. A child that
        reported is left to exit by itself for a while; the whole group of a killed or
        crashed job is stopped, so that nothing of it lives on."""
        try:
            if reported and not child.killed:
                deadline = time.monotonic() + self.exit_wait
                while child.exit_code() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                if child.exit_code() is not None:
                    child.reap()
                    return
            child.stop_group(self.kill_wait)
            while child.stopping:
                child.escalate()
                time.sleep(0.02)
            child.reap()
        except Exception:
            log.exception("could not reap child process %s", child.pid)
        finally:
            with self._lock:
                self._cleanups.discard(threading.current_thread())


def _child_environment() -> dict[str, str]:
    # The child starts with `-m underway...` before it learns the parent's sys.path,
    # so it must find this very copy of underway on its own.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env
