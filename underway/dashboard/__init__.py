"""The dashboard and the `<underway-job>` element: static files, no build step.

`routes(uw)` gives the Starlette routes `create_app` adds: the single-page dashboard
at `/` (hash-routed, so it never competes with `/v1`, `/healthz` or `/metrics`) and
its assets under `/static/underway/`. Other frameworks serve the same files from
`STATIC_DIR`; `ELEMENT_JS` is the one script a page needs for `<underway-job>`.

Everything the pages show comes from the HTTP API, with the caller's own bearer
token, so the dashboard sees exactly the jobs its principal may see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._util import dumps
from ..http.problems import PROBLEM_MEDIA_TYPE, no_such_file
from .assets import (
    ELEMENT_JS,
    MEDIA_TYPES,
    SECURITY_HEADERS,
    STATIC_DIR,
    STATIC_PREFIX,
    render_index,
    static_file,
)

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ..app import Underway


def routes(uw: Underway) -> list[BaseRoute]:
    """The dashboard page at `/` and its assets at `/static/underway/{name}`."""
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, Response
    from starlette.routing import Route

    async def index(request: Request) -> Response:
        root = str(request.scope.get("root_path", ""))
        return HTMLResponse(
            render_index(root), headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        )

    async def asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        path = static_file(name)
        if path is None:
            problem = no_such_file(name)
            return Response(
                dumps(problem.to_dict(request.url.path)),
                status_code=problem.status,
                media_type=PROBLEM_MEDIA_TYPE,
                headers={"X-Content-Type-Options": "nosniff"},
            )
        return FileResponse(
            path,
            media_type=MEDIA_TYPES[path.suffix],
            # Revalidated on every load (cheap with the ETag), so an upgrade of the
            # package never leaves a browser running yesterday's script.
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Route(STATIC_PREFIX + "/{name}", asset, methods=["GET", "HEAD"]),
    ]


__all__ = ["ELEMENT_JS", "STATIC_DIR", "STATIC_PREFIX", "render_index", "routes", "static_file"]
