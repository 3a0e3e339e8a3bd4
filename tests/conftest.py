from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from underway import Underway


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def uw(db_path: Path) -> Iterator[Underway]:
    """An app on a fresh SQLite file; closed (workers stopped) after the test."""
    app = Underway(f"sqlite:///{db_path}")
    yield app
    app.close()
