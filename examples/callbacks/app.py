"""A desktop- or notebook-style program that runs a heavy function in the background.

`TrainingPanel` stands for a window (or a notebook cell): it holds the state its user
sees. "Train" starts the heavy function as a job with two callbacks: `on_progress`,
called every few seconds while it runs, and `on_done`, called once when it ends; each
updates the panel's state from the job's record: the progress, then the result or
the failure. The panel never blocks while the job runs.

    python examples/callbacks/app.py                 # a good run, then one that diverges
"""

from __future__ import annotations

import math
import os
import random
import threading
from typing import Any

from underway import Job, JobRecord, State, Underway


def train_model(
    job: Job, epochs: int = 20, learning_rate: float = 0.5, seconds_per_epoch: float = 1.0
) -> dict[str, float]:
    """The heavy function: fit y = 3x + 2 by gradient descent, one slow epoch at a time.

    Too high a learning rate makes the loss blow up; the function then raises, which
    is how a real training run fails."""
    rng = random.Random(42)
    xs = [rng.uniform(-1, 1) for _ in range(200)]
    ys = [3 * x + 2 + rng.gauss(0, 0.1) for x in xs]
    weight = bias = 0.0
    loss = math.inf
    job.progress(0, total=epochs, message="starting")
    for epoch in range(1, epochs + 1):
        if job.wait_cancelled(seconds_per_epoch):  # stands for the real work of an epoch
            job.check_cancelled()
        errors = [weight * x + bias - y for x, y in zip(xs, ys, strict=True)]
        loss = sum(e * e for e in errors) / len(errors)
        if not loss < 1e6:
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss:.3g})")
        weight -= learning_rate * 2 * sum(e * x for e, x in zip(errors, xs, strict=True)) / len(xs)
        bias -= learning_rate * 2 * sum(errors) / len(errors)
        job.progress(epoch, total=epochs, message=f"epoch {epoch}/{epochs}, loss {loss:.4f}")
    return {"weight": weight, "bias": bias, "loss": loss}


class TrainingPanel:
    """The program's own state, updated by the callbacks (which run on underway's
    callback thread: a GUI toolkit would hand them to its UI thread, e.g. with
    `root.after(0, ...)` in Tkinter)."""

    def __init__(self, uw: Underway, *, every: float = 2.0) -> None:
        self.uw = uw
        self.every = every  # seconds between progress updates
        self.status = "idle"
        self.percent: float | None = None
        self.model: dict[str, float] | None = None
        self.error: str | None = None
        self.notifications: list[tuple[str, str]] = []  # (level, text), as toasts would show
        self.finished = threading.Event()

    def notify(self, level: str, text: str) -> None:
        self.notifications.append((level, text))
        print(f"[{level}] {text}")

    def on_train_clicked(self, **settings: Any) -> None:
        """What the "Train" button does: start the job, and return at once."""
        self.status, self.percent, self.model, self.error = "training", 0.0, None, None
        self.finished.clear()
        self.notify("info", "training started")
        self.uw.submit(
            "train_model",
            on_progress=self.show_progress,
            every=self.every,
            on_done=self.show_outcome,
            **settings,
        )

    def show_progress(self, record: JobRecord) -> None:
        self.percent = record.progress.percent
        self.status = record.progress.message or "training"
        print(f"  {self.percent or 0:3.0f}%  {self.status}")

    def show_outcome(self, record: JobRecord) -> None:
        if record.state is State.SUCCEEDED:
            self.model, self.percent, self.status = record.result, 100.0, "trained"
            self.notify("success", f"training finished: loss {record.result['loss']:.4f}")
        else:
            self.error = record.error.message if record.error else record.state.value
            self.status = record.state.value
            self.notify("error", f"training {record.state.value}: {self.error}")
        self.finished.set()


def create_underway(store: str | None = None) -> Underway:
    uw = Underway(store or os.environ.get("UNDERWAY_STORE", "sqlite:///underway.db"))
    uw.task(train_model)
    return uw


if __name__ == "__main__":
    # Jobs are kept in ./underway.db unless UNDERWAY_STORE names another store.
    with create_underway() as uw:
        uw.start()  # the workers run inside this program
        panel = TrainingPanel(uw, every=2.0)
        for settings in ({"learning_rate": 0.5}, {"learning_rate": 5.0}):
            panel.on_train_clicked(epochs=10, seconds_per_epoch=0.5, **settings)
            panel.finished.wait()  # a real program would go on with its event loop here
            print(f"panel: status={panel.status!r} model={panel.model} error={panel.error!r}")
