"""The batch over a folder on a real werkzeug server: followed from the terminal
(`underway submit --follow` as a subprocess) and from the web page in Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.batch_progress.app import create_app
from tests.support.browser import launch_chromium
from tests.support.http_server import serve_wsgi

try:
    from playwright.sync_api import Browser, expect
except ImportError:  # launch_chromium() reports it
    pass

pytestmark = pytest.mark.timeout(60)
FILES = 5


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # Only subfolders at the top, as in Debian's /usr/share/doc.
    photos = tmp_path / "photos"
    for n in range(1, FILES + 1):
        album = photos / album_of(n)
        album.mkdir(parents=True, exist_ok=True)
        (album / f"photo-{n}.jpg").write_bytes(bytes([n]) * 1000 * n)
    return photos


def album_of(n: int) -> str:
    return "2024" if n <= 3 else "2025"


@pytest.fixture
def base_url(tmp_path: Path, folder: Path) -> Iterator[str]:
    app = create_app(store=f"sqlite:///{tmp_path / 'jobs.db'}", folder=str(folder), pause=0.2)
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.extensions["underway"].uw.close()


def test_follow_the_batch_from_the_terminal(base_url: str, folder: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERWAY_", "FORCE_COLOR"))}
    env.update(COLUMNS="100", PYTHONUNBUFFERED="1")
    command = ["underway", "submit", "checksum_folder", f"folder={folder}", "pause=0.02"]
    command += ["--url", f"{base_url}/jobs", "--follow"]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Each file as it is done, then the bar's last state, then the outcome.
    assert [line.split()[-1] for line in lines[:FILES]] == [
        f"{album_of(n)}/photo-{n}.jpg" for n in range(1, FILES + 1)
    ]
    assert re.search(r"100%.*5 files \(100%\)", lines[FILES]), lines[FILES]
    assert "succeeded" in lines[-1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


@pytest.mark.browser
def test_watch_the_batch_on_the_web_page(base_url: str, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(base_url)
        status, bar = page.get_by_role("status"), page.locator("#bar")
        expect(status).to_have_text("not started")
        page.get_by_role("button", name="Start").click()
        # Part of the way through: "N files (P%)", with the bar at P.
        expect(status).to_have_text(re.compile(r"^[1-4] files \(\d+%\)$"))
        expect(status).to_have_text("done: 5 files (100%)", timeout=10_000)
        expect(bar).to_have_js_property("value", 100)
        expect(page.get_by_role("button", name="Start")).to_be_enabled()
    finally:
        context.close()
    assert errors == []
