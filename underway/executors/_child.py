"""The protocol between a worker and the child processes that run its jobs.

Both the process executor (a pool of long-lived children) and the subprocess
executor (a fresh child per job) speak it over a `multiprocessing.connection`
`Connection`; each message is one JSON object sent with `send_bytes`:

    parent -> child   {"op": "run", "spec": {...}}          run one job (see `JobSpec`)
                      {"op": "cancel", "job": id, "reason": r}
                      {"op": "exit"}
    child -> parent   {"op": "progress", "job": id, "current": c, "total": t, "message": m}
                      {"op": "items", "job": id, "items": [[kind, json], ...]}
                      {"op": "done", "job": id, "outcome": {...}}

The child side (`serve`, and `main` for `python -m underway.executors._child --fd N`)
builds a child-side `Job`, runs the task with `execute()` and forwards its progress
(coalesced, at most ten messages a second) and its output in order. The parent side
(`relay`) applies those messages to the worker's `Job` and forwards cancellation.
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import runpy
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._util import dumps, loads
from ..job import Job
from ..records import ErrorInfo, EventKind, JobRecord, State
from .base import Outcome, execute, failure

if TYPE_CHECKING:
    from ..tasks import Task

FLUSH_INTERVAL = 0.1  # seconds between progress/output messages from a child
POLL_INTERVAL = 0.05  # how often the parent side looks at the parent job's cancel flag
ORPHAN_GRACE = 10.0  # seconds a child whose parent vanished gives its job to stop

_MAIN_NAMES = ("__main__", "__mp_main__")


class TaskNotImportable(Exception):
    """The child cannot find the task's function by module and name."""


# -- the job spec ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a child needs to run one job; plain JSON on the wire."""

    job_id: str
    task: str  # the task's registered name
    module: str  # the function's module, as the parent sees it
    qualname: str  # the function's qualified name in that module
    params: dict[str, Any]
    attempt: int
    max_output_bytes: int
    main: dict[str, str] | None = None  # how to load the parent's __main__: {"path"|"module"}
    sys_path: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "task": self.task,
            "module": self.module,
            "qualname": self.qualname,
            "params": self.params,
            "attempt": self.attempt,
            "max_output_bytes": self.max_output_bytes,
            "main": self.main,
            "sys_path": self.sys_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(**data)

    @classmethod
    def for_job(cls, job: Job, task: Task, *, sys_path: bool = False) -> JobSpec:
        """Describe `job` so that a child can import `task`; TaskNotImportable when it
        cannot (a function defined inside another function, an interactive __main__)."""
        func = task.func
        module = getattr(func, "__module__", None) or ""
        qualname = getattr(func, "__qualname__", "") or ""
        if not module or not qualname or "<" in qualname:
            raise TaskNotImportable(
                f"task {task.name!r} ({qualname or func!r}) cannot be imported by a child "
                "process: define it at the top level of a module"
            )
        main = describe_main() if module in _MAIN_NAMES else None
        if module in _MAIN_NAMES and main is None:
            raise TaskNotImportable(
                f"task {task.name!r} is defined in an interactive __main__ that a child "
                "process cannot load: define it in a module or a script file"
            )
        return cls(
            job_id=job.id,
            task=task.name,
            module=module,
            qualname=qualname,
            params=job.params,
            attempt=job.attempt,
            max_output_bytes=job._max_output_bytes,
            main=main,
            sys_path=list(sys.path) if sys_path else [],
        )


def describe_main() -> dict[str, str] | None:
    """How a child can load this process's __main__ without running its main block:
    like multiprocessing's spawn, by running it again under the name __mp_main__."""
    main = sys.modules.get("__main__")
    if main is None:
        return None
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name and name not in _MAIN_NAMES:
        # `python -m pkg.mod`: the module can be run again by name.
        return {"module": name}
    path = getattr(main, "__file__", None)
    if path and os.path.exists(path):
        return {"path": os.path.abspath(path)}
    return None


# -- the wire ----------------------------------------------------------------------------
class Channel:
    """A connection whose sends may come from several threads."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = dumps(message).encode()
        with self._lock:
            self.conn.send_bytes(data)

    def recv(self) -> dict[str, Any]:
        message: dict[str, Any] = loads(self.conn.recv_bytes())
        return message

    def poll(self, timeout: float) -> bool:
        return self.conn.poll(timeout)

    def close(self) -> None:
        self.conn.close()


# -- the child side ----------------------------------------------------------------------
def serve(conn: Connection, *, once: bool = False) -> None:
    """Run jobs sent over `conn` until told to exit (or after one job when `once`)."""
    # Ctrl-C in a terminal reaches the whole foreground group; the parent decides
    # when a child stops, so a pool child must not die of the user's interrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = Channel(conn)
    inbox: queue.SimpleQueue[tuple[JobSpec, Job] | None] = queue.SimpleQueue()
    state = _ChildState()
    reader = threading.Thread(
        target=_read_commands, args=(channel, inbox, state), name="underway-child-reader"
    )
    reader.daemon = True
    reader.start()
    try:
        while True:
            work = inbox.get()
            if work is None:
                break
            spec, job = work
            _run_one(channel, spec, job)
            with state.lock:
                state.current = None
            if once:
                break
    finally:
        state.finished.set()


@dataclass
class _ChildState:
    current: Job | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)


def _read_commands(
    channel: Channel, inbox: queue.SimpleQueue[tuple[JobSpec, Job] | None], state: _ChildState
) -> None:
    while True:
        try:
            message = channel.recv()
        except (EOFError, OSError):
            break
        op = message.get("op")
        if op == "run":
            spec = JobSpec.from_dict(message["spec"])
            # The Job exists before the next message is read, so a cancel that
            # follows a run at once always finds it.
            job = _child_job(spec)
            with state.lock:
                state.current = job
            inbox.put((spec, job))
        elif op == "cancel":
            with state.lock:
                job_or_none = state.current
            if job_or_none is not None and job_or_none.id == message.get("job"):
                job_or_none.request_cancel(str(message.get("reason") or "cancel"))
        elif op == "exit":
            inbox.put(None)
            return
    # The parent is gone: stop the job, and do not outlive it for long.
    with state.lock:
        orphan = state.current
    if orphan is not None:
        orphan.request_cancel("shutdown")
    inbox.put(None)
    if not state.finished.wait(ORPHAN_GRACE):
        os._exit(70)


def _child_job(spec: JobSpec) -> Job:
    record = JobRecord(id=spec.job_id, task=spec.task, params=spec.params, attempt=spec.attempt)
    return Job(record, max_output_bytes=spec.max_output_bytes)


def _run_one(channel: Channel, spec: JobSpec, job: Job) -> None:
    forwarder = _Forwarder(channel, job)
    forwarder.start()
    try:
        try:
            outcome = execute(resolve_task(spec), job)
        except TaskNotImportable as exc:
            outcome = Outcome(
                state=State.FAILED,
                error=ErrorInfo(type="TaskNotImportable", message=str(exc)),
            )
        except BaseException as exc:  # KeyboardInterrupt and the like: still report it
            outcome = failure(exc)
    finally:
        forwarder.stop()
    try:
        forwarder.flush()  # everything the task emitted goes out before its outcome
        channel.send({"op": "done", "job": job.id, "outcome": outcome.to_dict()})
    except OSError:
        pass  # the parent is gone; nobody is left to tell


class _Forwarder:
    """Sends the child job's progress and output to the parent a few times a second."""

    def __init__(self, channel: Channel, job: Job) -> None:
        self.channel = channel
        self.job = job
        self._sent_version = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="underway-child-forward")
        self._thread.daemon = True
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except OSError:
                return  # the parent is gone

    def flush(self) -> None:
        # Serialised so that output batches leave in the order they were taken.
        with self._lock:
            items = self.job.take_outbox()
            if items:
                self.channel.send(
                    {
                        "op": "items",
                        "job": self.job.id,
                        "items": [[kind.value, data] for kind, data in items],
                    }
                )
            version, current, total, message = self.job.snapshot()
            if version != self._sent_version and current is not None:
                self._sent_version = version
                self.channel.send(
                    {
                        "op": "progress",
                        "job": self.job.id,
                        "current": current,
                        "total": total,
                        "message": message,
                    }
                )


_resolved: dict[tuple[str, str], Task] = {}


def resolve_task(spec: JobSpec) -> Task:
    """Import the task's function by module and qualified name (cached per child)."""
    key = (spec.module, spec.qualname)
    task = _resolved.get(key)
    if task is None:
        task = _import_task(spec)
        _resolved[key] = task
    return task


def _import_task(spec: JobSpec) -> Task:
    from ..tasks import Task, TaskSettings

    if spec.sys_path and sys.path != spec.sys_path:
        sys.path[:] = spec.sys_path
    module = _load_main(spec) if spec.module in _MAIN_NAMES else _import(spec.module)
    obj: Any = module
    for part in spec.qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise TaskNotImportable(
                f"task {spec.task!r}: module {module.__name__!r} has no attribute "
                f"{spec.qualname!r}; a child process finds a task's function by its module "
                "and name, so it must be reachable at the top level of its module"
            )
    if isinstance(obj, Task):
        return obj
    if callable(obj):
        # Registered without rebinding the name (`uw.task(...)(func)`): the child only
        # needs the function and its signature, not the parent's settings.
        return Task(obj, name=spec.task, settings=TaskSettings())
    raise TaskNotImportable(
        f"task {spec.task!r}: {spec.module}.{spec.qualname} is not callable ({type(obj)!r})"
    )


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise TaskNotImportable(
            f"cannot import module {name!r} in the child process: {type(exc).__name__}: {exc}"
        ) from exc


def _load_main(spec: JobSpec) -> ModuleType:
    global _parent_main
    if _parent_main is not None:
        return _parent_main
    if spec.main is None:
        raise TaskNotImportable(f"task {spec.task!r} is defined in the parent's __main__")
    # A spawned multiprocessing child has already run the parent's main script as
    # __mp_main__. (Importing multiprocessing also aliases __mp_main__ to this
    # process's own __main__, hence the check that it is the parent's.)
    loaded = sys.modules.get("__mp_main__")
    if loaded is not None and _is_main(loaded, spec.main):
        _parent_main = loaded
        return loaded
    module = ModuleType("__mp_main__")
    sys.modules["__mp_main__"] = module
    try:
        if "module" in spec.main:
            namespace = runpy.run_module(spec.main["module"], run_name="__mp_main__")
        else:
            namespace = runpy.run_path(spec.main["path"], run_name="__mp_main__")
    except BaseException as exc:
        del sys.modules["__mp_main__"]
        where = spec.main.get("module") or spec.main.get("path")
        raise TaskNotImportable(
            f"cannot load the parent's main script {where!r} in the child process: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    module.__dict__.update(namespace)
    _parent_main = module
    return module


_parent_main: ModuleType | None = None


def _is_main(module: ModuleType, main: dict[str, str]) -> bool:
    if "module" in main:
        return getattr(getattr(module, "__spec__", None), "name", None) == main["module"]
    path = getattr(module, "__file__", None)
    return path is not None and os.path.abspath(path) == main.get("path")


def main(argv: list[str] | None = None) -> int:
    """`python -m underway.executors._child --fd N`: run one job sent over fd N."""
    parser = argparse.ArgumentParser(prog="underway.executors._child")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the parent")
    args = parser.parse_args(argv)
    # The task's own child processes must not hold the parent's socket open.
    os.set_inheritable(args.fd, False)
    conn = Connection(args.fd)
    try:
        serve(conn, once=True)
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


# -- the parent side ---------------------------------------------------------------------
def apply(job: Job, message: dict[str, Any]) -> Outcome | None:
    """Apply one child message to the parent's `job`; the outcome once it is done."""
    op = message.get("op")
    if op == "items":
        job.put_raw([(EventKind(kind), data) for kind, data in message["items"]])
    elif op == "progress":
        job.progress(message["current"], message.get("total"), message.get("message"))
    elif op == "done":
        return Outcome.from_dict(message["outcome"])
    return None


def relay(
    channel: Channel,
    job: Job,
    *,
    exited: Callable[[], bool],
    tick: Callable[[], None] = lambda: None,
) -> Outcome | None:
    """Follow a running job until the child reports its outcome (returned) or the
    child goes away first (None). Forwards the parent job's cancel request once;
    `tick` runs every poll (the caller escalates kills there)."""
    cancel_sent = False
    while True:
        if not cancel_sent and job.cancelled:
            cancel_sent = True
            try:
                channel.send({"op": "cancel", "job": job.id, "reason": job.stop_reason})
            except OSError:
                pass  # the child is gone; the read below notices
        tick()
        try:
            if channel.poll(POLL_INTERVAL):
                outcome = apply(job, channel.recv())
                if outcome is not None:
                    return outcome
            elif exited():
                # The child died, but another process may still hold its end of the
                # socket open: read what the child sent before it went.
                while channel.poll(0):
                    outcome = apply(job, channel.recv())
                    if outcome is not None:
                        return outcome
                return None
        except (EOFError, OSError):
            return None
        except (ValueError, KeyError, TypeError):
            return None  # garbage on the wire: treat the child as broken


def describe_exit(code: int | None) -> str:
    """'exited with code 3' or 'was killed by signal SIGSEGV (11)'."""
    if code is None:
        return "stopped for an unknown reason"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal"
        return f"was killed by signal {name} ({-code})"
    return f"exited with code {code}"


def crashed(code: int | None, kind: str) -> Outcome:
    return Outcome(
        state=State.FAILED,
        error=ErrorInfo(
            type="WorkerCrashed",
            message=f"the {kind} running the job {describe_exit(code)} before reporting a result",
        ),
    )


KILLED = Outcome(
    state=State.CANCELLED,
    error=ErrorInfo(
        type="Cancelled", message="the job did not stop when asked and its process was killed"
    ),
)


if __name__ == "__main__":
    sys.exit(main())
