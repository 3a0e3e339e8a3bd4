"""`GET /metrics` in the Prometheus text format: jobs by state, requests, streams."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..records import State

if TYPE_CHECKING:
    from .handlers import Api


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(api: Api) -> str:
    lines = [
        "# HELP underway_jobs Jobs in the store, by state.",
        "# TYPE underway_jobs gauge",
    ]
    for state in State:
        lines.append(f'underway_jobs{{state="{state.value}"}} {api.uw.count(state=state)}')
    lines += [
        "# HELP underway_tasks Registered tasks.",
        "# TYPE underway_tasks gauge",
        f"underway_tasks {len(api.uw.tasks)}",
        "# HELP underway_http_requests_total HTTP API requests answered, by route and status.",
        "# TYPE underway_http_requests_total counter",
    ]
    for (route, status), n in sorted(api.counts().items()):
        lines.append(
            f'underway_http_requests_total{{route="{_escape(route)}",status="{status}"}} {n}'
        )
    lines += [
        "# HELP underway_sse_connections Open event streams.",
        "# TYPE underway_sse_connections gauge",
        f"underway_sse_connections {api.sse_connections}",
        "# HELP underway_http_started_seconds When this API started (epoch seconds).",
        "# TYPE underway_http_started_seconds gauge",
        f"underway_http_started_seconds {api.started:.3f}",
    ]
    return "\n".join(lines) + "\n"
