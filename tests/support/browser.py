"""A real Chromium for the browser tests: Debian's `chromium`, driven by Playwright.

Playwright's own browser downloads are not used: the tests run the system browser
through `executable_path`, so `.ci/run` only needs `apt-get install chromium`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .services import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    fallback = Path("/usr/bin/chromium")
    return str(fallback) if fallback.exists() else None


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Chromium under Playwright; skips (or fails, with UNDERWAY_REQUIRE_SERVICES=1)
    when either is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("chromium")
    path = chromium_path()
    if path is None:
        missing("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as launched:
        yield launched


def screenshot_path(name: str) -> Path:
    """Where a test saves the screenshot `name` (a test artefact, not committed)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
