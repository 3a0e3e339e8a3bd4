"""Task: a registered callable, its parameter schema (pydantic) and its run settings."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic

from ._util import parse_duration
from .errors import ValidationError
from .job import Job
from .records import EMPTY_PROGRESS, State

if TYPE_CHECKING:
    from .handle import JobHandle

EXECUTORS = ("thread", "process", "subprocess")


@dataclass(frozen=True, kw_only=True)
class TaskSettings:
    executor: str = "thread"
    timeout: float | None = None  # seconds; the job fails with Timeout past it
    retries: int = 0  # extra attempts after a failure
    retry_backoff: float = 1.0  # first delay; doubles per attempt, capped at retry_backoff_max
    retry_backoff_max: float = 300.0
    concurrency: int | None = None  # at most this many running at once, across all workers
    keep_for: float = 86400.0  # finished jobs are deleted after this many seconds
    queue: str = "default"
    priority: int = 0
    cancel_grace: float = 5.0  # seconds a cancelled job may take before it is stopped hard


class Task:
    """A callable registered with `Underway.task`. Call it to run it inline, or `.submit()`."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str,
        settings: TaskSettings,
        app: Any = None,
        description: str | None = None,
    ) -> None:
        if settings.executor not in EXECUTORS:
            raise ValueError(
                f"unknown executor {settings.executor!r} (choose from {', '.join(EXECUTORS)})"
            )
        self.func = func
        self.name = name
        self.settings = settings
        self.app = app
        self.description = description or inspect.getdoc(func) or ""
        self.is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
        self.wants_job, self.model = _build_model(func, name)
        self._fields = tuple(self.model.model_fields)
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", name)
        self.__qualname__ = getattr(func, "__qualname__", name)
        self.__module__ = getattr(func, "__module__", __name__)
        self._record_base: tuple[TaskSettings, dict[str, Any]] | None = None

    def new_record_fields(self) -> dict[str, Any]:
        """The fields of a new queued job of this task, as its settings give them (a new
        dict each call): a submission sets its own (id, parameters, times, owner, meta,
        keys) on a copy, rather than build every field on every submission. The id,
        the parameters, the meta and the times are left for it to set (None here: no
        mutable value is shared between the copies)."""
        base = self._record_base
        settings = self.settings
        if base is None or base[0] is not settings:
            fields = {
                "id": None,
                "task": self.name,
                "params": None,
                "state": State.QUEUED,
                "progress": EMPTY_PROGRESS,
                "result": None,
                "error": None,
                "cancel_requested": False,
                "attempt": 0,
                "max_attempts": settings.retries + 1,
                "created_at": None,
                "started_at": None,
                "finished_at": None,
                "expires_at": None,
                "output_count": 0,
                "position": None,
                "owner": None,
                "queue": settings.queue,
                "priority": settings.priority,
                "run_at": None,
                "timeout": settings.timeout,
                "keep_for": settings.keep_for,
                "idempotency_key": None,
                "supersede_key": None,
                "worker": None,
                "lease_until": None,
                "meta": None,
                "waiting": None,
            }
            base = self._record_base = (settings, fields)
        return base[1].copy()

    # -- parameters --------------------------------------------------------------------
    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check `params` against the signature; return them as JSON-ready values."""
        if not params and not self._fields:
            return {}  # nothing to check or convert
        return self.model.model_validate(params).model_dump(mode="json")

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        """Like validate(), raising underway's ValidationError with one entry per field."""
        if not isinstance(params, dict):
            raise ValidationError(
                f"parameters of task {self.name!r} must be an object",
                [{"field": None, "message": "expected an object", "type": "type"}],
            )
        try:
            return self.validate(params)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid parameters for task {self.name!r}", field_errors(exc)
            ) from None

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stored JSON parameters back to the Python values the function expects."""
        if not params and not self._fields:
            return {}
        model = self.model.model_validate(params)
        return {name: getattr(model, name) for name in self._fields}

    def schema(self) -> dict[str, Any]:
        schema = self.model.model_json_schema()
        schema.setdefault("title", self.name)
        return schema

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.schema(),
            "executor": s.executor,
            "timeout": s.timeout,
            "retries": s.retries,
            "concurrency": s.concurrency,
            "keep_for": s.keep_for,
            "queue": s.queue,
        }

    # -- calling -----------------------------------------------------------------------
    def submit(self, **params: Any) -> JobHandle:
        if self.app is None:
            raise RuntimeError(f"task {self.name!r} is not registered with an Underway app")
        handle: JobHandle = self.app.submit(self.name, **params)
        return handle

    def submit_many(self, params_list: Iterable[dict[str, Any]]) -> list[JobHandle]:
        if self.app is None:
            raise RuntimeError(f"task {self.name!r} is not registered with an Underway app")
        handles: list[JobHandle] = self.app.submit_many(self.name, params_list)
        return handles

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} executor={self.settings.executor}>"


def make_settings(**options: Any) -> TaskSettings:
    for key in ("timeout", "keep_for", "retry_backoff", "retry_backoff_max", "cancel_grace"):
        if key in options:
            options[key] = parse_duration(options[key])
    if options.get("keep_for") is None:
        options.pop("keep_for", None)
    return TaskSettings(**options)


def field_errors(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        out.append({"field": loc or None, "message": err.get("msg", ""), "type": err.get("type")})
    return out


def _build_model(func: Callable[..., Any], name: str) -> tuple[bool, type[pydantic.BaseModel]]:
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: fall back to Any
        hints = {}
    params = list(sig.parameters.values())
    wants_job = False
    if params and (hints.get(params[0].name) is Job or params[0].name == "job"):
        wants_job = True
        params = params[1:]
    fields: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, Any)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, default)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        f"{name}_params",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return wants_job, model
