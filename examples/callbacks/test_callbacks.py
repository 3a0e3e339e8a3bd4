"""The panel starts the heavy function and updates its own state from the callbacks:
progress while it runs, then the result, or the failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.callbacks.app import TrainingPanel, create_underway
from underway import JobRecord, Underway

pytestmark = pytest.mark.timeout(30)


class RecordingPanel(TrainingPanel):
    """The panel, noting each progress update it was given."""

    def __init__(self, uw: Underway, *, every: float) -> None:
        super().__init__(uw, every=every)
        self.seen: list[float | None] = []  # the percent shown at each update

    def show_progress(self, record: JobRecord) -> None:
        super().show_progress(record)
        self.seen.append(self.percent)


@pytest.fixture
def uw(tmp_path: Path) -> Iterator[Underway]:
    with create_underway(f"sqlite:///{tmp_path / 'jobs.db'}") as app:
        app.start()
        yield app


def test_a_good_run_updates_the_panel_with_the_model(uw: Underway) -> None:
    panel = RecordingPanel(uw, every=0.05)
    panel.on_train_clicked(epochs=10, seconds_per_epoch=0.05)
    assert panel.finished.wait(10)
    assert panel.status == "trained" and panel.percent == 100.0 and panel.error is None
    assert panel.model is not None
    assert panel.model["weight"] == pytest.approx(3, abs=0.5)
    assert panel.model["bias"] == pytest.approx(2, abs=0.5)
    # Progress came while it ran (None until the first report reached the store),
    # and only went forward; the last epoch reports 100% before the job ends, so a
    # progress update may show it.
    known = [p for p in panel.seen if p is not None]
    assert known and all(0 <= p <= 100 for p in known) and known == sorted(known)
    assert [level for level, _ in panel.notifications] == ["info", "success"]


def test_a_failed_run_shows_the_error(uw: Underway) -> None:
    panel = TrainingPanel(uw, every=0.05)
    panel.on_train_clicked(epochs=8, learning_rate=5.0, seconds_per_epoch=0.01)
    assert panel.finished.wait(10)
    assert panel.status == "failed" and panel.model is None
    assert panel.error == "training diverged at epoch 4 (loss 1.86e+06)"
    assert panel.notifications[-1] == ("error", f"training failed: {panel.error}")


def test_the_panel_can_train_again_after_a_failure(uw: Underway) -> None:
    panel = TrainingPanel(uw, every=0.05)
    panel.on_train_clicked(epochs=5, learning_rate=5.0, seconds_per_epoch=0)
    assert panel.finished.wait(10) and panel.status == "failed"
    panel.on_train_clicked(epochs=5, seconds_per_epoch=0)
    assert panel.finished.wait(10) and panel.status == "trained"
    assert panel.error is None and panel.model is not None
