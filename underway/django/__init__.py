"""underway in a Django project.

    # settings.py
    INSTALLED_APPS += ["underway.django"]
    UNDERWAY = {"STORE": "sqlite:////srv/app/jobs.db", "START_WORKERS": True}

    # urls.py
    urlpatterns += [path("jobs/", include("underway.django.urls"))]

    # myapp/tasks.py (imported at start-up, like admin.py)
    from underway import Job
    from underway.django import task

    @task(timeout="10m")
    def report(job: Job, rows: int) -> dict: ...

    # myapp/views.py
    from underway.django import job_owner
    handle = report.submit(rows=100, owner=job_owner(request))

    $ python manage.py underway worker         # or any other `underway` command

The settings are described in `underway.django.conf`, the views (owners, staff,
CSRF) in `underway.django.views`, when workers start in `underway.django.apps`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

try:
    # Not `apps`: the submodule underway.django.apps takes that name in this package.
    from django.apps import apps as django_apps
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"underway.django needs Django: pip install 'underway[django]' ({exc})"
    ) from None

if TYPE_CHECKING:
    from ..app import Underway
    from ..tasks import Task
    from .apps import UnderwayConfig

F = TypeVar("F", bound=Callable[..., Any])


def _config() -> UnderwayConfig:
    try:
        config: UnderwayConfig = django_apps.get_app_config("underway")  # type: ignore[assignment]
    except LookupError:
        raise LookupError(
            'underway.django is not installed: add "underway.django" to INSTALLED_APPS'
        ) from None
    return config


def get_app() -> Underway:
    """This process's `Underway`, made from `settings.UNDERWAY` by the app config."""
    return _config().uw


@overload
def task(func: F, /) -> Task: ...


@overload
def task(func: None = None, /, **options: Any) -> Callable[[F], Task]: ...


def task(func: F | None = None, /, **options: Any) -> Task | Callable[[F], Task]:
    """Register a task on this project's `Underway`: `@task` or `@task(timeout="5m")`,
    with the options of `Underway.task` (executor, timeout, retries, concurrency,
    keep_for, queue, priority, cancel_grace, name)."""
    if func is not None:
        return get_app().task(func, **options)
    registered: Callable[[F], Task] = get_app().task(**options)
    return registered


def job_owner(request: Any) -> str | None:
    """The principal that owns the jobs `request` submits (see `underway.django.views`)."""
    from .views import job_owner as owner

    return owner(request)


__all__ = ["get_app", "job_owner", "task"]
