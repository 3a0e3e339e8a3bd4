"""Hooks for the schemathesis runs of test_openapi_schemathesis.py (SCHEMATHESIS_HOOKS).

Hypothesis reuses short header values, so two different generated bodies often share
an `Idempotency-Key`; "same key, other parameters" is a 422 by contract, an answer to
the pair of requests and not to bad data in either. Keys are therefore made per
operation and body: a repeated key with the same body still exercises the replay.
"""

from __future__ import annotations

import hashlib
from typing import Any

import schemathesis


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers
    if not headers:
        return
    for name in list(headers):
        if name.lower() == "idempotency-key" and isinstance(headers[name], str):
            seed = f"{case.path}|{case.path_parameters}|{case.body!r}".encode()
            headers[name] += "." + hashlib.sha256(seed).hexdigest()[:16]
