"""The OpenAPI 3.1 document served at `/v1/openapi.json`.

Each registered task gets its own submit operation whose request body is the task's
parameter schema, so clients and generators see exactly what every task accepts.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from ..records import EventKind, State
from .handlers import CURSOR_PATTERN, MAX_INT64, MAX_PAGE, MAX_WAIT
from .problems import PROBLEM_MEDIA_TYPE

if TYPE_CHECKING:
    from ..app import Underway

_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Progress": {
        "type": "object",
        "required": ["current", "total", "percent", "message", "eta_s"],
        "properties": {
            "current": _NULLABLE_NUMBER,
            "total": _NULLABLE_NUMBER,
            "percent": _NULLABLE_NUMBER,
            "message": _NULLABLE_STRING,
            "eta_s": _NULLABLE_NUMBER,
        },
    },
    "JobError": {
        "type": "object",
        "required": ["type", "message"],
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "traceback": _NULLABLE_STRING,
        },
    },
    "WebhookDelivery": {
        "type": "object",
        "required": ["url", "state", "attempts"],
        "properties": {
            "url": {"type": "string"},
            "state": {"enum": ["waiting", "pending", "delivered", "failed"]},
            "attempts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["attempt", "at", "status", "error"],
                    "properties": {
                        "attempt": {"type": "integer", "minimum": 1},
                        "at": {"type": "string", "format": "date-time"},
                        "status": {"type": ["integer", "null"]},
                        "error": _NULLABLE_STRING,
                        "duration_ms": {"type": "number"},
                    },
                },
            },
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "id",
            "task",
            "params",
            "state",
            "progress",
            "result",
            "error",
            "cancel_requested",
            "attempt",
            "max_attempts",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "output_count",
            "position",
            "queue",
        ],
        "properties": {
            "id": {"type": "string"},
            "task": {"type": "string"},
            "params": {"type": "object"},
            "state": {"enum": [s.value for s in State]},
            "progress": {"$ref": "#/components/schemas/Progress"},
            "result": {},
            "error": {
                "oneOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}],
            },
            "cancel_requested": {"type": "boolean"},
            "attempt": {"type": "integer", "minimum": 0},
            "max_attempts": {"type": "integer", "minimum": 1},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _NULLABLE_TIME,
            "finished_at": _NULLABLE_TIME,
            "expires_at": _NULLABLE_TIME,
            "output_count": {"type": "integer", "minimum": 0},
            "position": {"type": ["integer", "null"], "minimum": 0},
            "queue": {"type": "string"},
            "owner": _NULLABLE_STRING,
            "webhook": {"$ref": "#/components/schemas/WebhookDelivery"},
            "waiting": {
                "description": "While queued: why it has not started",
                "type": "object",
                "required": ["reason", "message", "until"],
                "properties": {
                    "reason": {
                        "enum": [
                            "scheduled",
                            "retry-backoff",
                            "no-worker",
                            "concurrency-limit",
                            "queue",
                        ]
                    },
                    "message": {"type": "string"},
                    "until": _NULLABLE_TIME,
                },
            },
        },
    },
    "JobPage": {
        "type": "object",
        "required": ["jobs", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "next_cursor": _NULLABLE_STRING,
        },
    },
    "Task": {
        "type": "object",
        "required": ["name", "description", "params_schema", "executor"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "params_schema": {"type": "object"},
            "executor": {"enum": ["thread", "process", "subprocess"]},
            "timeout": _NULLABLE_NUMBER,
            "retries": {"type": "integer"},
            "concurrency": {"type": ["integer", "null"]},
            "keep_for": {"type": "number"},
            "queue": {"type": "string"},
        },
    },
    "TaskList": {
        "type": "object",
        "required": ["tasks"],
        "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}}},
    },
    "OutputPage": {
        "type": "object",
        "required": ["items", "after", "next", "attempt"],
        "properties": {
            "items": {"type": "array"},
            "after": {"type": "integer", "minimum": 0},
            "next": {"type": "integer", "minimum": 0},
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "The attempt whose output this is (each starts at index 0)",
            },
        },
    },
    "OutputText": {
        "description": (
            "`?as=text`: the attempt's output items joined into one text, up to and "
            "including event `last_event_id`; resume the event stream after it "
            "(`Last-Event-ID`) for exactly the items that follow. 409 `output-not-text` "
            "when an item is not a string."
        ),
        "type": "object",
        "required": ["text", "attempt", "next", "last_event_id", "done", "log"],
        "properties": {
            "text": {"type": "string", "description": "The string items, joined"},
            "attempt": {
                "type": "integer",
                "minimum": 0,
                "description": "The attempt whose output this is (the latest, or `attempt`)",
            },
            "next": {
                "type": "integer",
                "minimum": 0,
                "description": "How many items the text joins: the index of the next one",
            },
            "last_event_id": {
                "type": "integer",
                "minimum": 0,
                "description": "The last event the text covers: resume the stream after it",
            },
            "done": {
                "type": "boolean",
                "description": "The job's `done` event is among those covered",
            },
            "log": {
                "type": "array",
                "description": "The attempt's log lines up to `last_event_id`",
            },
        },
    },
    "ServerSentEvent": {
        "description": "One event of a job's stream (keep-alive comments are not events).",
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"enum": [k.value for k in EventKind]},
            "data": {"type": "string", "description": "The event's JSON"},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer", "minimum": 0},
        },
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": _NULLABLE_STRING,
                        "message": {"type": "string"},
                        "type": _NULLABLE_STRING,
                    },
                },
            },
            "job": {"$ref": "#/components/schemas/Job"},
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return out


PROBLEM_RESPONSE = {
    "description": "An error, as RFC 9457 problem details with a stable `code`.",
    "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}},
}

_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_RETRY = "Seconds before asking again, while the job is not finished."


def _operation(
    op_id: str, summary: str, responses: dict[str, Any], parameters: list[Any] | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "responses": {**responses, "default": PROBLEM_RESPONSE},
    }
    if parameters:
        op["parameters"] = parameters
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema or {"type": "string"},
        "description": description,
    }


_EVENT_ID = {"type": "integer", "minimum": 0, "maximum": MAX_INT64}


def _task_schema(name: str, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """The task's schema with its `$defs` moved into components (refs rewritten)."""
    schema = copy.deepcopy(schema)
    defs = schema.pop("$defs", {})
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                node["$ref"] = f"#/components/schemas/{prefix}.{ref[len('#/$defs/') :]}"
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)
        return node

    for def_name, definition in defs.items():
        components[f"{prefix}.{def_name}"] = rewrite(definition)
    components[f"{prefix}.params"] = rewrite(schema)
    return _ref(f"{prefix}.params")


def build_openapi(
    uw: Underway, *, root: str = "", secured: bool = True, callback_pattern: str | None = None
) -> dict[str, Any]:
    """The document for `uw`'s tasks, with `root` (the mount prefix) as its server.

    `callback_pattern`: the URLs `?callback_url=` accepts (from the operator's host
    allow-list); None when the server sends no webhooks, and the parameter is left out.
    """
    components: dict[str, Any] = copy.deepcopy(SCHEMAS)
    job_headers = {"Retry-After": _RETRY}
    paths: dict[str, Any] = {
        "/v1/tasks": {
            "get": _operation(
                "list_tasks",
                "The tasks and their parameter schemas",
                {"200": _json(_ref("TaskList"), "The registered tasks")},
            )
        },
        "/v1/jobs": {
            "get": _operation(
                "list_jobs",
                "A page of jobs, newest first",
                {"200": _json(_ref("JobPage"), "A page of jobs")},
                [
                    _query("task", {"type": "string"}, "Only jobs of this task"),
                    _query("state", {"enum": [s.value for s in State]}, "Only jobs in this state"),
                    _query(
                        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Page size"
                    ),
                    _query(
                        "cursor",
                        {"type": "string", "pattern": CURSOR_PATTERN},
                        "`next_cursor` of the previous page",
                    ),
                ],
            )
        },
        "/v1/jobs/{id}": {
            "get": _operation(
                "get_job",
                "The job",
                {"200": _json(_ref("Job"), "The job", **job_headers)},
                [
                    _JOB_ID,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0},
                        "Long-poll: hold the answer until the job changes (seconds; the "
                        f"server caps it, by default at {MAX_WAIT:g})",
                    ),
                ],
            ),
            "delete": _operation(
                "delete_job",
                "Delete a finished job and its output",
                {"204": {"description": "Deleted"}},
                [_JOB_ID],
            ),
        },
        "/v1/jobs/{id}/result": {
            "get": _operation(
                "get_result",
                "The result once succeeded; 202 while not finished; 409 if failed or cancelled",
                {
                    "200": _json({}, "The job's result"),
                    "202": _json(
                        _ref("Job"), "Not finished yet", Location="The job", **job_headers
                    ),
                },
                [_JOB_ID],
            )
        },
        "/v1/jobs/{id}/output": {
            "get": _operation(
                "get_output",
                "Output items of the latest attempt (or of `attempt`) after the first `after`; "
                "`as=text`: all of them joined into one text, with the event id to resume at",
                {
                    "200": _json(
                        {"oneOf": [_ref("OutputPage"), _ref("OutputText")]},
                        "Output items in order (`as=items`), or the text (`as=text`)",
                    ),
                    "409": {
                        **PROBLEM_RESPONSE,
                        "description": "`as=text` and an item is not a string (output-not-text)",
                    },
                },
                [
                    _JOB_ID,
                    _query(
                        "as",
                        {"enum": ["items", "text"]},
                        "items (default): a page of items; text: the whole segment joined "
                        "(`after` and `limit` do not apply)",
                    ),
                    _query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": MAX_INT64},
                        "Items to skip",
                    ),
                    _query(
                        "attempt",
                        {"type": "integer", "minimum": 1, "maximum": MAX_INT64},
                        "The attempt to read (default: the latest)",
                    ),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "At most"),
                ],
            )
        },
        "/v1/jobs/{id}/events": {
            "get": _operation(
                "stream_events",
                "Server-Sent Events: state, progress, output, log, done",
                {
                    "200": {
                        "description": "An event stream that ends after `done`",
                        "content": {"text/event-stream": {"schema": _ref("ServerSentEvent")}},
                    }
                },
                [
                    _JOB_ID,
                    _query("after", _EVENT_ID, "Resume after this id"),
                    _header("Last-Event-ID", "Resume after this id (wins over `after`)", _EVENT_ID),
                ],
            )
        },
        "/v1/jobs/{id}/cancel": {
            "post": _operation(
                "cancel_job",
                "Ask the job to stop (idempotent)",
                {"202": _json(_ref("Job"), "Cancel requested", **job_headers)},
                [_JOB_ID],
            )
        },
    }
    paths["/v1/openapi.json"] = {
        "get": _operation(
            "openapi", "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}
        )
    }
    health = _operation(
        "healthz",
        "Liveness: the store answers",
        {"200": _json({"type": "object", "required": ["status"]}, "Up")},
    )
    health["security"] = []  # public
    paths["/healthz"] = {"get": health}
    paths["/metrics"] = {
        "get": _operation(
            "metrics",
            "Prometheus text format (the metrics token, when one is set)",
            {
                "200": {
                    "description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    }
    for name, task in uw.tasks.items():
        body_schema = _task_schema(name, task.schema(), components)
        parameters = [
            _header("Idempotency-Key", "Same key and body: the same job"),
            _header("Prefer", f"wait=N: hold the answer up to N (at most {MAX_WAIT:g}) s"),
            _query("supersede", {"type": "string"}, "Cancel active jobs with this key"),
        ]
        if callback_pattern is not None:
            parameters.append(
                _query(
                    "callback_url",
                    {"type": "string", "pattern": callback_pattern},
                    "POST the final job here (an allowed host; empty: none)",
                )
            )
        op = _operation(
            f"submit_{name}",
            f"Submit a job of {name}",
            {
                "200": _json(
                    _ref("Job"),
                    "Finished within `Prefer: wait`",
                    Location="The job",
                    **{"Preference-Applied": "The wait that was applied"},
                ),
                "202": _json(_ref("Job"), "Queued", Location="The job", **job_headers),
            },
            parameters,
        )
        op["description"] = task.description
        op["requestBody"] = {
            # An empty body is `{}`: enough for a task without required parameters.
            "required": bool(task.schema().get("required")),
            "content": {"application/json": {"schema": body_schema}},
        }
        paths[f"/v1/tasks/{name}/jobs"] = {"post": op}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": f"{uw.name} jobs", "version": "1"},
        "servers": [{"url": root or "/"}],
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
