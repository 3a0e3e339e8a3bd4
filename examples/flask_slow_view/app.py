"""An existing Flask app whose `POST /render/<id>` takes minutes, made asynchronous
with one decorator: the request now gets `202 Accepted` and a status URL at once.
See README.md for how to run it."""

from __future__ import annotations

import os
import time

from flask import Flask, g, jsonify, request

from underway import Underway
from underway.http.flask import UnderwayFlask


def render_audio(text_list: list[str], voice: str, seconds_per_text: float) -> list[str]:
    """The slow part: a third-party text-to-speech API, one call per text (simulated)."""
    files = []
    for n, text in enumerate(text_list, 1):
        time.sleep(seconds_per_text)
        files.append(f"{voice}-{n:03d}-{len(text)}.wav")
        # Inside a background view, `g.underway_job` reports progress to the status URL.
        if job := g.get("underway_job"):
            job.progress(n, total=len(text_list), message=f"rendered {n} of {len(text_list)}")
    return files


def create_app(store: str | None = None, seconds_per_text: float | None = None) -> Flask:
    app = Flask(__name__)
    if seconds_per_text is None:
        seconds_per_text = float(os.environ.get("RENDER_SECONDS_PER_TEXT", "30"))
    uw = Underway(store or os.environ.get("UNDERWAY_STORE", "sqlite:///underway.db"))
    # The jobs API under /jobs (status URLs included), with workers in this process.
    jobs = UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True)

    @app.post("/render/<int:render_id>")
    @jobs.background_view(keep_for="5m")  # the one new line: finished jobs go after 5 minutes
    def render_script(render_id: int):
        # The view is unchanged: it still reads its request and returns its response;
        # it just runs on a worker, inside a copy of the request.
        data = request.get_json()
        voice = request.args.get("voice", "en")
        files = render_audio(data["text_list"], voice, seconds_per_text)
        return jsonify(id=render_id, voice=voice, files=files), 201

    return app


if __name__ == "__main__":
    create_app().run(port=5000, threaded=True)
