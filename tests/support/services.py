"""Finding what a test needs on this machine, or saying clearly that it is missing.

With UNDERWAY_REQUIRE_SERVICES=1 (CI) a missing service fails the test; elsewhere it
is skipped with the reason, so a laptop without Chromium can still run the rest.
"""

from __future__ import annotations

import os
import socket
from typing import NoReturn

import pytest


def services_required() -> bool:
    return os.environ.get("UNDERWAY_REQUIRE_SERVICES") == "1"


def missing(what: str) -> NoReturn:
    message = f"{what} is not available"
    if services_required():
        pytest.fail(f"{message} (UNDERWAY_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
