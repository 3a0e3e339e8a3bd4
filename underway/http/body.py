"""Reading a request body under the API's size limit, for adapters on blocking streams.

A declared `Content-Length` over the limit is refused before anything is read; a
body with no length (chunked) is read up to one byte past the limit, so an endless
upload never fills the memory.
"""

from __future__ import annotations

from collections.abc import Callable

from .problems import payload_too_large


def read_limited(read: Callable[[int], bytes], declared: str | int | None, limit: int) -> bytes:
    """The body from `read(n)`; a 413 problem when it is (or says it is) over `limit`."""
    if declared is not None and str(declared).isdigit() and int(declared) > limit:
        raise payload_too_large(limit)
    body = read(limit + 1)
    if len(body) > limit:
        raise payload_too_large(limit)
    return body


__all__ = ["read_limited"]
