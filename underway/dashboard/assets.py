"""The dashboard's files and how to serve them, for any web framework (no imports
of one here: the Flask extension serves the same files as the Starlette app)."""

from __future__ import annotations

import html
from pathlib import Path

STATIC_DIR: Path = Path(__file__).resolve().parent / "static"
ELEMENT_JS = "underway-job.js"
STATIC_PREFIX = "/static/underway"
INDEX_HTML = "index.html"

MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}

# The page runs no inline script and loads nothing from elsewhere, so a strict policy
# costs nothing and turns any markup that slips into the page into inert text.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def render_index(
    root: str = "", *, csrf_token: str | None = None, csrf_header: str = "X-CSRFToken"
) -> str:
    """The dashboard page for an API mounted at `root` ("" or e.g. "/jobs").

    `csrf_token`: for an API behind a cookie session (Django), the token the page's
    requests carry in the `csrf_header` header."""
    template = (STATIC_DIR / INDEX_HTML).read_text(encoding="utf-8")
    csrf = ""
    if csrf_token:
        token = html.escape(csrf_token, quote=True)
        header = html.escape(csrf_header, quote=True)
        csrf = (
            f'<meta name="csrf-token" content="{token}">\n  '
            f'<meta name="csrf-header" content="{header}">\n  '
        )
    page = template.replace("{{csrf}}", csrf)
    return page.replace("{{root}}", html.escape(root.rstrip("/"), quote=True))


def static_file(name: str) -> Path | None:
    """The asset called `name`, or None: only plain file names that exist are served,
    so no request can walk out of the folder."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC_DIR / name
    if path.suffix not in MEDIA_TYPES or not path.is_file():
        return None
    return path
