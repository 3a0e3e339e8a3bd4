"""A batch task over a folder of files, reporting "N files (P%)" as it goes.

Watch it from a terminal with `underway submit ... --follow`, or from the web page at
`/`, whose progress bar follows the job's Server-Sent Events. See README.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from flask import Flask, render_template_string

from underway import Job, Underway
from underway.http.flask import UnderwayFlask


def checksum_folder(job: Job, folder: str, pause: float = 0.0) -> dict[str, Any]:
    """Checksum every file in `folder` and its subfolders (SHA-256); `pause` slows each
    file down for a demo."""
    root = Path(folder)
    # Subfolders too: a folder such as Debian's /usr/share/doc holds only folders.
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    job.progress(0, total=len(files), message=f"0 files (0%) of {len(files)}")
    checksums = {}
    for n, path in enumerate(files, 1):
        if job.wait_cancelled(pause):  # also the place where a cancel is noticed
            job.check_cancelled()
        name = path.relative_to(root).as_posix()
        checksums[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        job.emit(f"{checksums[name][:12]}  {name}")
        job.progress(n, message=f"{n} files ({100 * n // len(files)}%)")
    return {"files": len(files), "checksums": checksums}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Checksums</title>
<style>body { font: 16px/1.5 system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; }
progress { width: 100%; height: 1.25rem; }</style></head>
<body>
<h1>Checksum a folder</h1>
<p>Folder: <code>{{ folder }}</code></p>
<button id="start">Start</button>
<progress id="bar" max="100" value="0"></progress>
<p id="status" role="status">not started</p>
<script>
  const bar = document.getElementById("bar");
  const status = document.getElementById("status");
  document.getElementById("start").addEventListener("click", async (click) => {
    click.target.disabled = true;
    // Start a job through the jobs API...
    const response = await fetch("/jobs/v1/tasks/checksum_folder/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({{ params | tojson }}),
    });
    const job = await response.json();
    status.textContent = "queued";
    // ...and follow its events: the browser reconnects and resumes by itself.
    const events = new EventSource(`/jobs/v1/jobs/${job.id}/events`);
    events.addEventListener("progress", (e) => {
      const progress = JSON.parse(e.data);
      bar.value = progress.percent ?? 0;
      status.textContent = progress.message;
    });
    events.addEventListener("done", (e) => {
      events.close();
      const done = JSON.parse(e.data);
      status.textContent = done.state === "succeeded"
        ? `done: ${done.result.files} files (100%)`
        : `${done.state}: ${done.error ? done.error.message : ""}`;
      click.target.disabled = false;
    });
  });
</script>
</body></html>
"""


def create_app(
    store: str | None = None, folder: str | None = None, pause: float | None = None
) -> Flask:
    app = Flask(__name__)
    uw = Underway(store or os.environ.get("UNDERWAY_STORE", "sqlite:///underway.db"))
    uw.task(keep_for="1h")(checksum_folder)
    # The jobs API under /jobs: the page and `underway submit --url .../jobs` use it.
    # It has no auth here; pass `tokens=` before letting others reach it.
    UnderwayFlask(uw, app, url_prefix="/jobs", start_workers=True)
    folder = str(Path(folder or os.environ.get("BATCH_FOLDER", ".")).resolve())
    pause = float(os.environ.get("BATCH_PAUSE", "0.2")) if pause is None else pause

    params = {"folder": folder, "pause": pause}  # what the page's Start button submits

    @app.get("/")
    def page() -> str:
        return render_template_string(PAGE, folder=folder, params=params)

    return app


if __name__ == "__main__":
    create_app().run(port=5000, threaded=True)
