"""`import underway` stays light: the server, Redis, Flask and CLI parts load on use."""

from __future__ import annotations

import subprocess
import sys


def test_core_import_loads_no_extra() -> None:
    code = (
        "import sys, underway\n"
        "heavy = {'starlette', 'uvicorn', 'httpx', 'redis', 'flask', 'click', 'rich'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_public_api_is_what_all_says() -> None:
    import underway

    for name in underway.__all__:
        assert getattr(underway, name) is not None, name
    assert underway.Client.__module__ == "underway.client"  # loaded on first use
