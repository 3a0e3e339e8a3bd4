"""The executor seam, and running a task's code against a `Job` context.

An executor is a strategy object: the worker hands it a claimed job and a `done`
callback and never asks which kind it is. `execute()` is the one place that calls a
task's function (sync, generator, async, async generator) and turns whatever
happens into an `Outcome`; the process and subprocess executors call it in the child.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._util import dumps, to_jsonable
from ..errors import Cancelled
from ..job import Job
from ..records import ErrorInfo, State

if TYPE_CHECKING:
    from ..tasks import Task


@dataclass(frozen=True, kw_only=True)
class Outcome:
    state: State  # SUCCEEDED, FAILED or CANCELLED
    result: Any = None  # JSON-ready
    error: ErrorInfo | None = None
    result_json: str | None = field(default=None, compare=False)  # `result`, encoded

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            state=State(data["state"]),
            result=data.get("result"),
            error=ErrorInfo.from_dict(data.get("error")),
        )


Done = Callable[[Outcome], None]


class Executor(ABC):
    """Runs jobs. `run` returns at once; `done` is called exactly once per job."""

    name: str

    def start(self) -> None:
        """Get ready (start pools); called once before the first `run`."""

    @abstractmethod
    def run(self, job: Job, task: Task, done: Done) -> None:
        """Start running `task` for `job`; report the end through `done`."""

    def call(self, job: Job, task: Task) -> Outcome:
        """Run the job and wait for its end; the worker calls this from one of its slots."""
        finished = threading.Event()
        outcomes: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            outcomes.append(outcome)
            finished.set()

        self.run(job, task, done)
        finished.wait()
        return outcomes[0]

    def kill(self, job_id: str) -> bool:
        """Stop a job that ignored its cancel request. True when `done` will still be
        called for it; False when it cannot be stopped (the worker then gives up on it)."""
        return False

    def shutdown(self, wait: bool = True) -> None:
        """Release pools and children."""


def failure(exc: BaseException, *, type_name: str | None = None) -> Outcome:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Outcome(
        state=State.FAILED,
        error=ErrorInfo(type=type_name or type(exc).__name__, message=str(exc), traceback=tb),
    )


CANCELLED = Outcome(
    state=State.CANCELLED, error=ErrorInfo(type="Cancelled", message="the job was cancelled")
)


def execute(task: Task, job: Job) -> Outcome:
    """Run the task's function for `job` and describe how it ended."""
    try:
        kwargs = task.bind(job.params)
        args = (job,) if task.wants_job else ()
        if task.is_async:
            result = asyncio.run(_run_async(task, job, args, kwargs))
        else:
            result = task.func(*args, **kwargs)
            if inspect.isgenerator(result):
                result = _drain(job, result)
    except Cancelled:
        return CANCELLED
    except SystemExit as exc:
        return failure(exc, type_name="SystemExit")
    except Exception as exc:
        return failure(exc)
    try:
        try:
            encoded = dumps(result)  # plain JSON values need no conversion
        except (TypeError, ValueError):
            result = to_jsonable(result)
            encoded = dumps(result)
    except Exception as exc:
        return Outcome(
            state=State.FAILED,
            error=ErrorInfo(
                type="ResultNotSerializable",
                message=f"the task's result cannot be stored as JSON: {exc}",
            ),
        )
    return Outcome(state=State.SUCCEEDED, result=result, result_json=encoded)


def _drain(job: Job, gen: Any) -> Any:
    items: list[Any] = []
    try:
        while True:
            job.check_cancelled()
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value if stop.value is not None else items
            job.emit(item)
            items.append(item)
    finally:
        gen.close()


async def _run_async(task: Task, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    async def body() -> Any:
        if inspect.isasyncgenfunction(task.func):
            items: list[Any] = []
            async for item in task.func(*args, **kwargs):
                job.check_cancelled()
                job.emit(item)
                items.append(item)
            return items
        return await task.func(*args, **kwargs)

    main = asyncio.ensure_future(body())

    async def watch() -> None:
        # Cancellation arrives on another thread: turn it into asyncio cancellation.
        while not main.done():
            if job.cancelled:
                main.cancel()
                return
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch())
    try:
        return await main
    except asyncio.CancelledError:
        raise Cancelled() from None
    finally:
        watcher.cancel()
