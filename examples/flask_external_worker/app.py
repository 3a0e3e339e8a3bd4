"""A Flask app whose counting job runs in an external process started on demand.

`GET /count/<start>/<end>` creates a job and redirects the browser to a status page
that follows it live; when the job ends the page moves on to the results, or to an
error page. The job runs on the `subprocess` executor: a fresh Python process per
job, started by the web process's own worker, so there is no worker daemon to deploy
and keep in step with the app. Jobs live in Redis when `REDIS_URL` is set (then any
number of web processes share them), else in a SQLite file.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, redirect, render_template, request, send_from_directory, url_for

from underway import Job, JobNotFound, JobRecord, State, Underway
from underway.dashboard import STATIC_DIR
from underway.http.flask import UnderwayFlask

LIMIT = 1000  # the counter refuses to go past this, which shows what a failed job looks like


def count(job: Job, start: int, end: int, increment: int = 1, pause: float = 3.0) -> dict[str, Any]:
    """Count from `start` to `end` by `increment`, one number every `pause` seconds.

    This runs in its own process: it must be a top-level function of an importable
    module (or of the script being run), so that the new process can find it.
    """
    steps = range(start, end + 1, increment)
    numbers: list[int] = []
    for n in steps:
        if n > LIMIT:
            raise ValueError(f"refusing to count past {LIMIT}")
        job.wait_cancelled(pause)  # the slow part; a cancel cuts it short
        job.check_cancelled()
        numbers.append(n)
        job.emit(n)  # each number shows up on the status page as it is counted
        job.progress(len(numbers), total=len(steps), message=f"counted {n}")
    return {"numbers": numbers, "pid": os.getpid()}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        REDIS_URL=os.environ.get("REDIS_URL"),
        SQLITE_PATH=os.environ.get("SQLITE_PATH", "count-jobs.db"),
        COUNT_PAUSE=float(os.environ.get("COUNT_PAUSE", "3")),
    )
    app.config.update(config or {})
    store = app.config["REDIS_URL"] or f"sqlite:///{app.config['SQLITE_PATH']}"
    uw = Underway(store)
    uw.task(executor="subprocess", keep_for="1h")(count)
    # The jobs API under /jobs (the status page reads it); the worker runs in this
    # process and starts one child process per job.
    UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True)

    def find(job_id: str) -> JobRecord:
        try:
            return uw.get(job_id)
        except JobNotFound:
            abort(404)

    @app.get("/")
    def index() -> str:
        return render_template("index.html", limit=LIMIT)

    @app.get("/count/<int:start>/<int:end>")
    def start_count(start: int, end: int) -> Any:
        increment = request.args.get("increment", 1, type=int)
        if increment < 1:
            abort(400, "increment must be a positive whole number")
        job = uw.submit(
            "count", start=start, end=end, increment=increment, pause=app.config["COUNT_PAUSE"]
        )
        return redirect(url_for("status", job_id=job.id))

    @app.get("/status/<job_id>")
    def status(job_id: str) -> str:
        return render_template("status.html", job=find(job_id))

    @app.get("/results/<job_id>")
    def results(job_id: str) -> Any:
        job = find(job_id)
        if job.state is not State.SUCCEEDED:
            return redirect(url_for("error" if job.finished else "status", job_id=job_id))
        return render_template("results.html", job=job)

    @app.get("/error/<job_id>")
    def error(job_id: str) -> Any:
        job = find(job_id)
        if not job.finished or job.state is State.SUCCEEDED:
            return redirect(url_for("results" if job.finished else "status", job_id=job_id))
        return render_template("error.html", job=job)

    @app.get("/assets/underway/<name>")
    def underway_assets(name: str) -> Any:
        # The <underway-job> element's script ships with underway.
        return send_from_directory(STATIC_DIR, name)

    return app


if __name__ == "__main__":
    create_app().run(port=5000, threaded=True)
