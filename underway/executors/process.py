"""The process executor: a pool of long-lived child processes, for CPU-bound Python."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from ..job import Job
from ..records import ErrorInfo, State
from . import _child
from ._child import Channel, JobSpec, TaskNotImportable
from .base import CANCELLED, Done, Executor, Outcome, failure

if TYPE_CHECKING:
    from ..tasks import Task

log = logging.getLogger("underway.executors.process")


@dataclass(kw_only=True)
class _Work:
    job: Job
    spec: JobSpec
    done: Done


class _Slot:
    """One child process and the thread that feeds it jobs, one at a time."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.channel: Channel | None = None
        self.work: _Work | None = None
        self.killed = False  # kill() stopped the current job's child
        self.kill_at: float | None = None  # when SIGTERM turns into SIGKILL
        self.thread: threading.Thread | None = None


class ProcessExecutor(Executor):
    """Runs jobs in a pool of `size` child processes started with multiprocessing's
    "spawn" method (a fork of a threaded worker could copy held locks into the child).

    Each child runs one job at a time and imports the task's function by module and
    name. Progress and output are forwarded to the worker's `Job`; a cancel request is
    forwarded to the child's. `kill()` terminates a child whose job ignored its cancel
    request (SIGTERM, then SIGKILL after `kill_wait` seconds) and starts a fresh one in
    its slot; a child that dies by itself fails its job with error type `WorkerCrashed`.
    """

    name = "process"

    def __init__(self, size: int = 4, *, start_method: str = "spawn", kill_wait: float = 1.0):
        if start_method not in ("spawn", "forkserver"):
            raise ValueError("start_method must be 'spawn' or 'forkserver'")
        self.size = max(1, size)
        self.kill_wait = kill_wait
        self._ctx: SpawnContext | ForkServerContext = (
            multiprocessing.get_context("spawn")
            if start_method == "spawn"
            else multiprocessing.get_context("forkserver")
        )
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[_Work] = deque()
        self._slots: list[_Slot] = []
        self._started = False
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            self._slots = [_Slot(i) for i in range(self.size)]
            slots = list(self._slots)
        # Runs before multiprocessing's own exit hook (registered earlier, so called
        # later), which would otherwise wait forever on children idling in their loop.
        atexit.register(self._shutdown_at_exit)
        for slot in slots:
            slot.thread = threading.Thread(
                target=self._serve_slot,
                args=(slot,),
                name=f"underway-process-{slot.index}",
                daemon=True,
            )
            slot.thread.start()

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._stopping = True
            pending = list(self._pending)
            self._pending.clear()
            slots, self._slots = self._slots, []
            busy = [s for s in slots if s.work is not None]
            for slot in busy:
                slot.killed = True
                slot.kill_at = time.monotonic() + self.kill_wait
            self._wake.notify_all()
        for work in pending:
            _report(work, CANCELLED)
        for slot in busy:
            _terminate(slot.process)
        if wait:
            for slot in slots:
                if slot.thread is not None:
                    slot.thread.join(timeout=self.kill_wait + 5.0)
        atexit.unregister(self._shutdown_at_exit)

    def _shutdown_at_exit(self) -> None:
        self.shutdown(wait=True)

    # -- the seam ------------------------------------------------------------------------
    def run(self, job: Job, task: Task, done: Done) -> None:
        try:
            spec = JobSpec.for_job(job, task)
        except TaskNotImportable as exc:
            done(
                Outcome(
                    state=State.FAILED, error=ErrorInfo(type="TaskNotImportable", message=str(exc))
                )
            )
            return
        if not self._started:
            self.start()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the process executor is shut down")
            self._pending.append(_Work(job=job, spec=spec, done=done))
            self._wake.notify()

    def kill(self, job_id: str) -> bool:
        with self._lock:
            for work in self._pending:
                if work.job.id == job_id:
                    self._pending.remove(work)
                    break
            else:
                for slot in self._slots:
                    if slot.work is not None and slot.work.job.id == job_id:
                        if not slot.killed:
                            slot.killed = True
                            slot.kill_at = time.monotonic() + self.kill_wait
                            _terminate(slot.process)
                        return True
                return False
        _report(work, CANCELLED)  # it never started
        return True

    # -- one slot ------------------------------------------------------------------------
    def _serve_slot(self, slot: _Slot) -> None:
        try:
            self._spawn(slot)  # warm before the first job; _run_in_child retries if not
        except Exception:
            log.exception("could not start a child process for the process executor")
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    break
                work = slot.work = self._pending.popleft()
                slot.killed, slot.kill_at = False, None
            try:
                outcome = self._run_in_child(slot, work)
            except Exception as exc:  # never lose a job to a bug in here
                log.exception("process executor failed on job %s", work.job.id)
                outcome = failure(exc, type_name="ExecutorError")
            with self._lock:
                slot.work = None
                replace = slot.killed or not _alive(slot.process)
                slot.killed, slot.kill_at = False, None
                stopping = self._stopping
            _report(work, outcome)
            if replace and not stopping:
                self._replace(slot)
        self._retire(slot)

    def _run_in_child(self, slot: _Slot, work: _Work) -> Outcome:
        if work.job.cancelled:
            return CANCELLED  # asked to stop before it started
        if not _alive(slot.process):
            self._replace(slot)
        try:
            self._send_run(slot, work)
        except OSError:
            # The idle child died since its last job: the job has not started, so a
            # fresh child may take it.
            self._replace(slot)
            self._send_run(slot, work)
        process, channel = slot.process, slot.channel
        assert process is not None and channel is not None
        outcome = _child.relay(
            channel,
            work.job,
            exited=lambda: not process.is_alive(),
            tick=lambda: self._escalate(slot),
        )
        if outcome is not None:
            return outcome
        # The child went away before reporting: killed on purpose, or it crashed.
        deadline = time.monotonic() + self.kill_wait
        while _alive(process):
            self._escalate(slot)
            if time.monotonic() > deadline and not slot.killed:
                process.kill()  # it closed the pipe (or wrote garbage) yet lives on
            process.join(0.05)
        with self._lock:
            killed = slot.killed
        if killed:
            return _child.KILLED
        return _child.crashed(process.exitcode, "child process")

    def _send_run(self, slot: _Slot, work: _Work) -> None:
        assert slot.channel is not None
        slot.channel.send({"op": "run", "spec": work.spec.to_dict()})

    def _escalate(self, slot: _Slot) -> None:
        with self._lock:
            due = slot.kill_at is not None and time.monotonic() >= slot.kill_at
            if due:
                slot.kill_at = None
        if due and slot.process is not None and slot.process.is_alive():
            slot.process.kill()

    # -- children ------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_child.serve,
            args=(child_end,),
            name=f"underway-process-{slot.index}",
            # Not daemonic: a task may start processes of its own. The exit hook
            # above stops these children instead.
            daemon=False,
        )
        process.start()
        child_end.close()
        slot.process, slot.channel = process, Channel(parent_end)

    def _replace(self, slot: _Slot) -> None:
        self._retire(slot, hard=True)
        with self._lock:
            if self._stopping:
                return
        self._spawn(slot)

    def _retire(self, slot: _Slot, *, hard: bool = False) -> None:
        process, channel = slot.process, slot.channel
        slot.process = slot.channel = None
        if channel is not None:
            if not hard and process is not None and process.is_alive():
                try:
                    channel.send({"op": "exit"})
                except OSError:
                    pass
            channel.close()
        if process is not None:
            process.join(0 if hard else self.kill_wait)
            if process.is_alive():
                process.terminate()
                process.join(self.kill_wait)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()


def _alive(process: BaseProcess | None) -> bool:
    return process is not None and process.is_alive()


def _terminate(process: BaseProcess | None) -> None:
    try:
        if process is not None and process.is_alive():
            process.terminate()
    except (OSError, ValueError):
        pass  # already gone, or already closed


def _report(work: _Work, outcome: Outcome) -> None:
    try:
        work.done(outcome)
    except Exception:
        log.exception("could not report the end of job %s", work.job.id)
