"""The app config: one `Underway` per process, built from `settings.UNDERWAY`.

At start-up (`ready()`) it checks the settings and imports every installed app's
`tasks.py`, whose `@task` functions register themselves on this process's
`Underway`. Nothing is opened and no thread starts here: `migrate`, `shell` and
every other management command load the apps and must leave the jobs alone.

Embedded workers (`START_WORKERS`) start with the first request the process serves
(Django's `request_started` signal), never earlier:

- only servers send that signal, so no management command ever runs jobs, and
  neither does the parent process of `runserver`'s auto-reloader;
- a server that imports the project before it forks its workers (gunicorn
  `--preload`, uWSGI without `lazy-apps`) starts the threads in each forked worker,
  after the fork, never in the parent where they would not survive it.

When the process exits, running jobs get `DRAIN` seconds to finish; the rest go
back to the queue for another worker.
"""

from __future__ import annotations

import atexit
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.signals import request_started, setting_changed
from django.utils.module_loading import autodiscover_modules

from .conf import UnderwaySettings, load_settings

if TYPE_CHECKING:
    from ..app import Underway
    from .api import DjangoApi

_START_UID = "underway.django.start_workers"


class UnderwayConfig(AppConfig):
    name = "underway.django"
    label = "underway"
    verbose_name = "underway"
    default = True

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        self._lock = threading.Lock()
        self._exit_hook = False

    @cached_property
    def underway_settings(self) -> UnderwaySettings:
        return load_settings(getattr(django_settings, "UNDERWAY", None))

    @cached_property
    def uw(self) -> Underway:
        """This process's `Underway` (the store opens on first use)."""
        from ..app import Underway

        s = self.underway_settings
        return Underway(s.store, workers=s.workers, lease=s.lease)

    @cached_property
    def api(self) -> DjangoApi:
        """The HTTP API over `uw`; callers are resolved by `underway.django.views`."""
        from ..http.auth import Authenticator
        from .api import DjangoApi
        from .views import job_owner

        s = self.underway_settings
        tracebacks = bool(django_settings.DEBUG) if s.tracebacks is None else s.tracebacks
        return DjangoApi(
            self.uw,
            # A hook (rather than tokens) makes the API refuse callers without a principal.
            authenticator=Authenticator({}, job_owner),
            max_body=s.max_body,
            max_wait=s.max_wait,
            tracebacks=tracebacks,
        )

    def ready(self) -> None:
        self.underway_settings  # noqa: B018 - a bad setting fails at start-up, with its name
        autodiscover_modules(self.underway_settings.tasks_module)
        self._arm()
        setting_changed.connect(self._setting_changed, weak=False)

    def start_workers(self) -> None:
        """Start the embedded workers now (idempotent); they stop when the process exits."""
        with self._lock:
            self.uw.start()
            if not self._exit_hook:
                atexit.register(self._stop_workers)
                self._exit_hook = True

    def _arm(self) -> None:
        """Start the workers with the first request, when the settings ask for them."""
        if self.underway_settings.start_workers:
            request_started.connect(self._on_request, dispatch_uid=_START_UID, weak=False)
        else:
            request_started.disconnect(dispatch_uid=_START_UID)

    def _on_request(self, sender: Any, **kwargs: Any) -> None:
        request_started.disconnect(dispatch_uid=_START_UID)
        self.start_workers()

    def _stop_workers(self) -> None:
        if "uw" in self.__dict__:
            self.uw.stop(drain=self.underway_settings.drain)

    def _setting_changed(self, setting: str, **kwargs: Any) -> None:
        """Tests that override `UNDERWAY` get an app built from the new value (the old
        one is closed; its tasks move over); `DEBUG` decides the default tracebacks."""
        if setting == "DEBUG":
            self.__dict__.pop("api", None)
        if setting != "UNDERWAY":
            return
        old = self.__dict__.get("uw")
        for name in ("underway_settings", "uw", "api"):
            self.__dict__.pop(name, None)
        if old is not None:
            for task in old.tasks.values():
                task.app = self.uw
                self.uw.tasks[task.name] = task
            old.close()
        self._arm()


__all__ = ["UnderwayConfig"]
