"""The HTTP API: framework-neutral handlers and thin Starlette and Flask adapters.

`asgi(uw)` (`underway.http.starlette.create_app`) serves it over ASGI;
`underway.http.flask.UnderwayFlask` registers it on a Flask app. The route table,
status codes and problem codes are fixed by DESIGN.md ("The HTTP contract").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import Underway

__all__ = ["asgi"]


def asgi(uw: Underway, **options: Any) -> Any:
    """The HTTP API as a Starlette app: `app.mount("/jobs", asgi(uw))`.

    Options go to `underway.http.starlette.create_app` (auth, limits). Needs the
    `server` extra."""
    try:
        from .starlette import create_app
    except ImportError as exc:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            f"the HTTP API needs its extra: pip install 'underway[server]' ({exc})"
        ) from None
    return create_app(uw, **options)
