"""A job's output as one text: `GET /v1/jobs/{id}/output?as=text`.

A page that opens while a model is still streaming tokens wants the text so far in
one read, and then only what comes next, instead of replaying every token. So the
answer pairs the text with the id of the last event it covers:

    {"text": "Hello world", "attempt": 1, "next": 2, "last_event_id": 7,
     "done": false, "log": []}

A stream opened with `Last-Event-ID: 7` (or `?after=7`) then brings exactly the
items after the text: nothing missed, nothing twice.

Both come from one read of the job's event log, where every output item is an
event of its attempt. Reading the items (`Underway.output`) and the newest event id
separately would race a worker appending between the two reads; joining the output
events up to seq S gives, by construction, the items a stream resumed after S does
not send again. The read costs one store query per thousand events, on the server,
and one answer on the wire.

The text is the latest attempt's (a retry starts a fresh segment), or the given
`attempt`'s. Items that are not strings have no text: the view refuses them (409
`output-not-text`) rather than guess a rendering; `?as=items` (the default) reads
them. `log` holds the same segment's log lines up to `last_event_id`, so a page
that shows both resumes from one event id without losing either; `done` says the
job's `done` event is among those read (a stream resumed after it has nothing left).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..records import EventKind
from .problems import Problem

if TYPE_CHECKING:
    from ..app import Underway

READ_LIMIT = 1000  # events per store read


@dataclass(kw_only=True)
class TextView:
    """The joined output of one attempt, up to and including event `last_event_id`."""

    attempt: int
    parts: list[str] = field(default_factory=list)
    count: int = 0  # output items seen: the index the next one will have
    not_text: int | None = None  # index of the first item that is not a string
    log: list[Any] = field(default_factory=list)

    def to_dict(self, last_event_id: int, done: bool) -> dict[str, Any]:
        return {
            "text": "".join(self.parts),
            "attempt": self.attempt,
            "next": self.count,
            "last_event_id": last_event_id,
            "done": done,
            "log": self.log,
        }


def output_text(uw: Underway, job_id: str, attempt: int | None = None) -> dict[str, Any]:
    """The text view of `job_id`'s output (the caller checked that it may read it).

    `attempt`: the attempt to join; None for the latest one in the log."""
    view = TextView(attempt=attempt or 0)
    after = 0
    done = False
    while True:
        events = uw.events_after(job_id, after, READ_LIMIT)
        for event in events:
            if attempt is None and event.attempt > view.attempt:
                view = TextView(attempt=event.attempt)  # a retry: a fresh segment
            if event.kind is EventKind.DONE:
                done = True
            if event.attempt != view.attempt:
                continue
            if event.kind is EventKind.OUTPUT:
                item = event.data["item"]
                if isinstance(item, str):
                    view.parts.append(item)
                elif view.not_text is None:
                    view.not_text = view.count
                view.count += 1
            elif event.kind is EventKind.LOG:
                view.log.append(event.data)
        if events:
            after = events[-1].seq
        if len(events) < READ_LIMIT:
            break
    if view.not_text is not None:
        raise Problem(
            409,
            "output-not-text",
            f"output item {view.not_text} of attempt {view.attempt} is not a string; "
            "read the items with ?as=items",
        )
    return view.to_dict(after, done)


__all__ = ["output_text"]
