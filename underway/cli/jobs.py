"""Where job commands act: a local store or a remote server, behind one interface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import click

from .. import Underway
from ..records import Event, JobRecord
from .common import C, CliError, load_app, sqlite_file

if TYPE_CHECKING:
    pass


class Jobs(Protocol):
    """What the job commands need, from a store or over HTTP."""

    where: str

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord: ...
    def get(self, job_id: str) -> JobRecord: ...
    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]: ...
    def cancel(self, job_id: str) -> JobRecord: ...
    def delete(self, job_id: str) -> None: ...
    def events(self, job_id: str, after: int) -> Iterator[Event]: ...
    def purge(self, older_than: float | None) -> int: ...


class LocalJobs:
    def __init__(self, app: Underway) -> None:
        self.app = app
        self.where = f"store {app.where}"

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord:
        return self.app.enqueue(task, params)

    def get(self, job_id: str) -> JobRecord:
        return self.app.get(job_id)

    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]:
        return self.app.list_jobs(state=state, task=task, limit=limit).jobs

    def cancel(self, job_id: str) -> JobRecord:
        return self.app.cancel(job_id)

    def delete(self, job_id: str) -> None:
        self.app.delete(job_id)

    def events(self, job_id: str, after: int) -> Iterator[Event]:
        return self.app.job(job_id).events(after)

    def purge(self, older_than: float | None) -> int:
        return self.app.purge(older_than=older_than)


class RemoteJobs:
    def __init__(self, url: str, token: str | None) -> None:
        try:
            from ..client import Client
        except ImportError as exc:
            raise CliError(
                f"the client needs its extra: pip install 'underway[server]' ({exc})"
            ) from None
        if not url.startswith(("http://", "https://")):
            raise CliError(f"bad --url {url!r}: use http://host:port or https://...")
        self.client = Client(url, token=token)
        self.where = f"server {url}"

    def submit(self, task: str, params: dict[str, Any]) -> JobRecord:
        return self.client.submit(task, **params).record

    def get(self, job_id: str) -> JobRecord:
        return self.client.get(job_id)

    def list(self, *, state: str | None, task: str | None, limit: int) -> list[JobRecord]:
        return self.client.list_jobs(state=state, task=task, limit=limit).jobs

    def cancel(self, job_id: str) -> JobRecord:
        return self.client.cancel(job_id)

    def delete(self, job_id: str) -> None:
        self.client.delete(job_id)

    def events(self, job_id: str, after: int) -> Iterator[Event]:
        return self.client.events(job_id, after=after)

    def purge(self, older_than: float | None) -> int:
        raise CliError("purge works on a store, not over HTTP: use --store URL")


def open_jobs(
    *, url: str | None, token: str | None, store: str | None, app_spec: str | None, existing: bool
) -> Jobs:
    """The jobs the options point at. `existing`: a SQLite file must already be there
    (reading from a mistyped path should not leave an empty database behind)."""
    if url:
        return RemoteJobs(url, token)
    uw = load_app(app_spec) if app_spec else Underway(store)
    if store:
        uw.configure(store=store)
    if existing and isinstance(uw.store_url, str | None):
        path = sqlite_file(uw.store_url)
        if path is not None and not path.is_file():
            raise CliError(f"no job store at {path} (choose one with --store or --url)")
    uw.where  # noqa: B018 - open it now so a bad store fails here, as one line
    return LocalJobs(uw)


def jobs_options(func: C) -> C:
    options = [
        click.option("--url", envvar="UNDERWAY_URL", help="A remote server, e.g. http://host:8000"),
        click.option("--token", envvar="UNDERWAY_TOKEN", help="Bearer token for --url."),
        click.option("--store", envvar="UNDERWAY_STORE", help="A local store URL."),
        click.option("--app", "app_spec", envvar="UNDERWAY_APP", help="MODULE:ATTR of the app."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


# -- showing jobs ------------------------------------------------------------------------
