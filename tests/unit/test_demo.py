"""The demo tasks, run through the engine with their delays turned down."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.wait import wait_for
from underway import JobCancelled, JobFailed, State, Task, Underway, demo


@pytest.fixture
def app(db_path: Path) -> Iterator[Underway]:
    """The demo's tasks on a fresh store; the demo module's own app stays untouched."""
    app = Underway(f"sqlite:///{db_path}", workers=2)
    for task in demo.uw.tasks.values():
        app.tasks[task.name] = Task(task.func, name=task.name, settings=task.settings, app=app)
    app.start()
    yield app
    app.close()


def test_the_demo_has_a_task_for_each_feature() -> None:
    assert set(demo.uw.tasks) == {"count", "long_process", "batch_files", "chat", "render", "fail"}
    assert demo.uw.tasks["render"].settings.executor == "process"


def test_no_parameter_is_shadowed_by_an_option_of_submit() -> None:
    options = {
        name
        for name, p in inspect.signature(Underway.submit).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    for task in demo.uw.tasks.values():
        assert not options & set(task.model.model_fields), task.name


def test_count_streams_each_number(app: Underway) -> None:
    job = app.submit("count", to=4, pause=0)
    assert job.wait(timeout=10) == [1, 2, 3, 4]
    assert job.output() == [1, 2, 3, 4]
    assert job.progress.percent == 100


def test_long_process_emits_interim_results(app: Underway) -> None:
    job = app.submit("long_process", steps=4, pause=0)
    assert job.wait(timeout=10) == "1 2 3 4"
    assert job.output() == ["1", "1 2", "1 2 3", "1 2 3 4"]
    assert job.progress.message == "step 4 of 4"


def test_long_process_honours_cancel(app: Underway) -> None:
    job = app.submit("long_process", steps=10, pause=30)
    wait_for(lambda: job.state is State.RUNNING, what="the job to start")
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(timeout=10)  # far less than one 30 s step: the pause was cut short


def test_batch_files_over_a_temporary_folder(app: Underway) -> None:
    job = app.submit("batch_files", files=5, pause=0)
    assert job.wait(timeout=10) == {"files": 5, "bytes": job.result["bytes"]}
    assert [item["file"] for item in job.output()] == [f"sample-{n:03d}.txt" for n in range(1, 6)]
    assert job.progress.message == "5 files (100%)"
    assert job.progress.percent == 100


def test_batch_files_over_a_given_folder(app: Underway, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("one\ntwo\n")
    (folder / "b.txt").write_text("three\n")
    job = app.submit("batch_files", folder=str(folder), pause=0)
    assert job.wait(timeout=10) == {"files": 2, "bytes": 14}
    assert job.output() == [
        {"file": "a.txt", "bytes": 8, "lines": 2},
        {"file": "b.txt", "bytes": 6, "lines": 1},
    ]


def test_batch_files_of_a_missing_folder_fails_clearly(app: Underway, tmp_path: Path) -> None:
    job = app.submit("batch_files", folder=str(tmp_path / "nope"), pause=0)
    with pytest.raises(JobFailed, match="not a folder"):
        job.wait(timeout=10)


def test_chat_streams_the_tokens_of_its_answer(app: Underway) -> None:
    job = app.submit("chat", prompt="why?", tokens_per_second=0)
    answer = job.wait(timeout=10)
    assert answer.startswith("You asked: 'why?'.")
    tokens = job.output()
    assert len(tokens) > 20
    assert "".join(tokens) == answer


def test_fail_reports_progress_then_a_clear_error(app: Underway) -> None:
    job = app.submit("fail", after=2, pause=0)
    with pytest.raises(JobFailed, match="failed on purpose after 2 steps"):
        job.wait(timeout=10)
    record = job.refresh()
    assert record.error is not None and record.error.type == "RuntimeError"
    assert record.progress.current == 2 and record.progress.percent == 50


@pytest.mark.skipif(
    importlib.util.find_spec("underway.executors.process") is None,
    reason="the process executor is not in this tree yet",
)
def test_render_runs_on_the_process_executor(app: Underway) -> None:
    job = app.submit("render", width=24, height=6, iterations=50)
    result = job.wait(timeout=30)
    assert result["width"] == 24 and result["height"] == 6
    rows = job.output()
    assert len(rows) == 6 and all(len(row) == 24 for row in rows)
    assert job.progress.percent == 100
