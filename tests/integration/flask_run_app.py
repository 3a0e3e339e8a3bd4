"""A Flask app with embedded workers, for `flask --app tests.integration.flask_run_app
run`: the store comes from UNDERWAY_STORE; two slots; running jobs get 3 s to drain."""

from __future__ import annotations

import time

from flask import Flask

from underway import Job, Underway
from underway.http.flask import UnderwayFlask

uw = Underway(workers=2)


@uw.task(retries=1)  # a job stopped at shutdown goes back while attempts remain
def steps(job: Job, count: int, pause: float) -> int:
    """`count` steps of `pause` seconds, one output item each; stops when cancelled."""
    for i in range(count):
        job.check_cancelled()
        time.sleep(pause)
        job.emit(i)
    return count


app = Flask(__name__)
jobs = UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True, drain=3.0)
