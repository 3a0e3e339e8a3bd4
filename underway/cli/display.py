"""Showing jobs in the terminal: tables, records, and the live progress display."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from .._util import rfc3339
from ..errors import JobFinished
from ..records import TERMINAL, Event, JobRecord, Progress, State
from .common import EXIT_FOR_STATE, EXIT_INTERRUPTED
from .jobs import Jobs

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import TaskID


STATE_STYLE = {
    State.QUEUED: "cyan",
    State.RUNNING: "yellow",
    State.SUCCEEDED: "green",
    State.FAILED: "red",
    State.CANCELLED: "magenta",
}
TASK_WIDTH = 28


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # Soft wrap: long output lines stay whole for copying; the terminal folds them.
    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe_progress(progress: Progress, *, running: bool = True) -> str:
    parts = []
    if progress.percent is not None:
        parts.append(f"{progress.percent:.0f}%")
    elif progress.current is not None:
        parts.append(f"{progress.current:g}")
    if progress.eta_s is not None and running:
        parts.append(f"ETA {format_seconds(progress.eta_s)}")
    if progress.message:
        parts.append(progress.message)
    return " ".join(parts)


def output_item(data: Any) -> Any:
    """The emitted item of an `output` event (which also carries the item's index)."""
    if isinstance(data, dict) and "index" in data and "item" in data:
        return data["item"]
    return data


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def shorten_middle(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def print_table(records: list[JobRecord]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    now = time.time()
    rows = []
    for r in records:
        progress = describe_progress(r.progress, running=r.state is State.RUNNING)
        if r.state is State.QUEUED and r.position is not None:
            progress = f"#{r.position + 1} in queue"
        task = shorten_middle(r.task, TASK_WIDTH)
        rows.append((r.id, task, r.state, progress, format_seconds(now - r.created_at)))
    # Ids, task names and states must stay whole on a narrow terminal; the progress
    # text gives way. A task name longer than TASK_WIDTH (a Flask view's module path)
    # loses its middle, so that AGE stays on the line.
    for n, name in enumerate(("ID", "TASK", "STATE")):
        table.add_column(name, no_wrap=True, min_width=max(len(str(row[n])) for row in rows))
    table.add_column("AGE", justify="right", no_wrap=True, min_width=5)
    table.add_column("PROGRESS", no_wrap=True, overflow="ellipsis")
    for job_id, task, state, progress, age in rows:
        styled = f"[{STATE_STYLE[state]}]{state.value}[/]"
        table.add_row(job_id, escape(task), styled, age, escape(progress))
    console().print(table)


def print_record(record: JobRecord) -> None:
    from rich.markup import escape

    out = console()
    running = record.state is State.RUNNING
    rows: list[tuple[str, str]] = [
        ("id", record.id),
        ("task", record.task),
        ("state", f"[{STATE_STYLE[record.state]}]{record.state.value}[/]"),
        ("params", escape(json.dumps(record.params, ensure_ascii=False))),
        ("progress", escape(describe_progress(record.progress, running=running) or "-")),
        ("attempt", f"{record.attempt} of {record.max_attempts}"),
        ("output", f"{record.output_count} items"),
    ]
    if record.cancel_requested and record.state not in TERMINAL:
        rows.append(("cancel", "requested"))
    if record.state is State.QUEUED and record.position is not None:
        rows.append(("position", str(record.position + 1)))
    if record.state is State.QUEUED and record.waiting is not None:
        rows.append(("waiting", escape(record.waiting.message)))
    for label, ts in (
        ("created", record.created_at),
        ("started", record.started_at),
        ("finished", record.finished_at),
        ("expires", record.expires_at),
    ):
        if ts is not None:
            rows.append((label, rfc3339(ts) or ""))
    if record.started_at is not None and record.finished_at is not None:
        rows.append(("took", format_seconds(record.finished_at - record.started_at)))
    elif record.started_at is not None and running:
        rows.append(("running for", format_seconds(time.time() - record.started_at)))
    if record.owner:
        rows.append(("owner", escape(record.owner)))
    if record.result is not None:
        rows.append(("result", escape(as_text(record.result))))
    if record.error is not None:
        # A job back in the queue keeps the error of its previous attempt.
        label = "error" if record.finished else "last error"
        rows.append((label, f"[red]{escape(record.error.type)}[/]: {escape(record.error.message)}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        out.print(f"[bold]{label:<{width}}[/]  {value}")
    if record.error is not None and record.error.traceback:
        out.print(escape(record.error.traceback.rstrip()), style="dim")


# -- following a job -------------------------------------------------------------------
# How long a job may sit first in line, with nothing running, before --follow says
# that no worker seems to be taking jobs.
NO_WORKER_AFTER = 3.0


class Follower:
    """A live bar (percent, ETA, message) with output items printed above it as they come."""

    def __init__(self, jobs: Jobs, record: JobRecord) -> None:
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar

        self.jobs = jobs
        self.record = record
        self.out = console()
        self.bar: Bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[percent]:>4}"),
            TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[message]}", markup=False),
            console=self.out,
            auto_refresh=True,
            refresh_per_second=8,
        )
        self.row: TaskID = self.bar.add_task("", total=None, percent="", eta="", message="")
        self.items: list[Any] = []
        self.seq = 0
        self.state = record.state
        self._show_state(record.state)
        self._show_progress(record.progress)

    def _show_state(self, state: State) -> None:
        self.state = state
        style = STATE_STYLE[state]
        self.bar.update(self.row, description=f"{self.record.task} [{style}]{state.value:<9}[/]")

    def _show_progress(self, progress: Progress) -> None:
        percent = progress.percent
        eta = progress.eta_s
        self.bar.update(
            self.row,
            total=100 if percent is not None else None,
            completed=percent or 0,
            percent=f"{percent:.0f}%" if percent is not None else "",
            eta=f"ETA {format_seconds(eta)}"
            if eta is not None and self.state is State.RUNNING
            else "",
            message=progress.message or "",
        )

    def _apply(self, event: Event) -> dict[str, Any] | None:
        """Show one event; the `done` event's data is returned."""
        self.seq = event.seq
        kind = str(event.kind)
        if kind == "state":
            self._show_state(State(event.data["state"]))
        elif kind == "progress":
            self._show_progress(Progress.from_dict(event.data))
        elif kind == "output":
            item = output_item(event.data)
            self.items.append(item)
            self.out.print(as_text(item), markup=False)
        elif kind == "log":
            self.out.print(f"· {event.data}", style="dim", markup=False)
        elif kind == "done":
            data: dict[str, Any] = event.data
            return data
        return None

    def _run_until_done(self) -> dict[str, Any]:
        while True:
            got_any = False
            for event in self.jobs.events(self.record.id, self.seq):
                got_any = True
                done = self._apply(event)
                if done is not None:
                    return done
            # The stream ended early (a dropped connection): go by the record, or resume.
            record = self.jobs.get(self.record.id)
            if record.state in TERMINAL:
                return {
                    "state": record.state.value,
                    "result": record.result,
                    "error": record.error.to_dict() if record.error else None,
                }
            if not got_any:
                time.sleep(0.5)  # back off before reconnecting to a stream that keeps closing

    def follow(self, *, yes: bool) -> int:
        # A shell starts background commands with SIGINT ignored; following is
        # interactive, so an interrupt must reach it wherever it was started.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        stop_watching = threading.Event()
        watcher = threading.Thread(
            target=self._watch_queue, args=(stop_watching,), name="underway-queue-watch"
        )
        watcher.daemon = True
        watcher.start()
        try:
            return self._follow(yes=yes)
        finally:
            stop_watching.set()
            signal.signal(signal.SIGINT, previous)

    def _watch_queue(self, stop: threading.Event) -> None:
        """Say so when nobody takes the job. The store keeps no list of live workers,
        so this goes by what it shows: the job is still queued, first in line and due,
        NO_WORKER_AFTER seconds after submission, and no job at all is running."""
        while not stop.wait(NO_WORKER_AFTER):
            if self.state is not State.QUEUED:
                return
            try:
                running = self.jobs.list(state=State.RUNNING.value, task=None, limit=1)
                record = self.jobs.get(self.record.id)
            except Exception:
                return  # the main loop reports trouble with the store or server
            if record.state is not State.QUEUED or stop.is_set():
                return
            if record.waiting is not None:  # the engine knows why it waits
                if record.waiting.reason in ("no-worker", "concurrency-limit"):
                    lead = (
                        "no worker is taking jobs"
                        if record.waiting.reason == "no-worker"
                        else ("the job waits")
                    )
                    self.out.print(
                        f"{lead} from {self.jobs.where}: {record.waiting.message} "
                        "(Ctrl-C stops following)",
                        style="yellow",
                        markup=False,
                    )
                    self.bar.update(self.row, message=record.waiting.reason)
                    return
                continue
            if record.position in (0, None) and record.run_at <= time.time() and not running:
                self.out.print(
                    f"no worker is taking jobs from {self.jobs.where}: job {record.id} is "
                    f"first in line and nothing runs. Start one with: underway worker "
                    f"MODULE:ATTR (Ctrl-C stops following)",
                    style="yellow",
                    markup=False,
                )
                self.bar.update(self.row, message="waiting for a worker")
                return

    def _follow(self, *, yes: bool) -> int:
        cancel_sent = False
        with self.bar:
            while True:
                try:
                    done = self._run_until_done()
                    break
                except KeyboardInterrupt:
                    if cancel_sent:
                        self.bar.stop()
                        self.out.print(f"stopped following job {self.record.id}", style="dim")
                        return EXIT_INTERRUPTED
                    if not yes and not self._confirm_cancel():
                        self.bar.stop()
                        self.out.print(
                            f"job {self.record.id} keeps running; follow it again with: "
                            f"underway watch {self.record.id}",
                            markup=False,
                        )
                        return EXIT_INTERRUPTED
                    cancel_sent = True
                    try:
                        self.jobs.cancel(self.record.id)
                    except JobFinished:
                        pass  # it ended meanwhile; the stream tells how
                    self.out.print(f"cancelling job {self.record.id} …", style="dim")
            state = State(done["state"])
            self._show_state(state)
            self.bar.update(self.row, eta="")
            if state is State.SUCCEEDED:
                self.bar.update(self.row, total=100, completed=100, percent="100%")
        return self._summarise(state, done)

    def _confirm_cancel(self) -> bool:
        self.bar.stop()
        try:
            answer = click.confirm(f"\ncancel job {self.record.id}?", default=True, err=True)
        except click.Abort:
            answer = False  # no terminal to ask (or Ctrl-C again): leave the job alone
        if answer:
            self.bar.start()
        return answer

    def _summarise(self, state: State, done: dict[str, Any]) -> int:
        from rich.markup import escape

        job_id = self.record.id
        if state is State.SUCCEEDED:
            result = done.get("result")
            if result is not None and result != self.items:
                self.out.print(as_text(result), markup=False)
            self.out.print(f"[green]✓[/] job {job_id} succeeded")
        elif state is State.FAILED:
            error = done.get("error") or {}
            text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            self.out.print(f"[red]✗[/] job {job_id} failed: {escape(text)}")
        else:
            self.out.print(f"[magenta]■[/] job {job_id} cancelled")
        return EXIT_FOR_STATE[state]


# -- serving -----------------------------------------------------------------------------
