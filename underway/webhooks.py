"""Signing and verifying webhook deliveries, after the Standard Webhooks convention.

A delivery carries three headers:

- `webhook-id`: the delivery's id (one per attempt: `<job id>_<attempt>`; the job's
  id is in the body and in `Underway-Job`, for idempotent processing);
- `webhook-timestamp`: when it was sent, in integer seconds since the epoch;
- `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
  space-separated when there are several (during a key rotation).

The secret is a Standard Webhooks secret, `whsec_<base64 key>` (`generate_secret()`
makes one); bytes are used as the key itself. A receiver calls `verify`:

    from underway.webhooks import verify, WebhookVerificationError

    def receive(request):
        try:
            job = verify(SECRET, request.headers, request.body)
        except WebhookVerificationError:
            return 400
        ...

This module is part of the core: receivers need no server extra.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigurationError, UnderwayError

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300  # seconds a delivery's timestamp may be off the receiver's clock

# Called with (webhook id, timestamp) after a delivery checked out: True when that id
# was seen before (a replay), else it records it and answers False.
SeenStore = Callable[[str, int], bool]


class WebhookVerificationError(UnderwayError):
    """A delivery that must not be trusted; the subclass says why."""

    code = "webhook-invalid"


class MissingHeaders(WebhookVerificationError):
    """A `webhook-*` header is missing or malformed."""


class InvalidSignature(WebhookVerificationError):
    """No signature matches: another secret, or a body or header changed on the way."""


class StaleTimestamp(WebhookVerificationError):
    """The timestamp is further from now than the tolerance, in the past or future."""


class ReplayedDelivery(WebhookVerificationError):
    """A delivery id already seen within the tolerance window."""


def generate_secret() -> str:
    """A new secret in the Standard Webhooks form, `whsec_` + 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of `secret`: `whsec_<base64>` (or bare base64) decoded; bytes as is."""
    if isinstance(secret, bytes):
        if not secret:
            raise ConfigurationError("the webhook secret is empty")
        return secret
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            "a webhook secret is 'whsec_' + base64 (underway.webhooks.generate_secret() "
            "makes one), or bytes"
        ) from None
    if not key:
        raise ConfigurationError("the webhook secret is empty")
    return key


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for a delivery."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers_for(
    secret: str | bytes, webhook_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three `webhook-*` headers of a delivery of `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        ID_HEADER: webhook_id,
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: sign(secret, webhook_id, ts, body),
    }


class SeenIds:
    """An in-memory `SeenStore`: ids seen within the last `window` seconds, at most
    `max_ids` of them (the oldest are dropped first). Thread-safe.

    An id older than the window needs no memory: its timestamp is already stale. For
    several receiver processes, pass a shared store instead (say, Redis
    `SET webhook:<id> 1 NX EX <2 * tolerance>`, a replay when it was not set).
    """

    def __init__(self, window: float = 2 * DEFAULT_TOLERANCE, max_ids: int = 100_000) -> None:
        self.window = window
        self.max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()  # id -> when first seen
        self._lock = threading.Lock()

    def __call__(self, webhook_id: str, timestamp: int) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._ids and (
                len(self._ids) >= self.max_ids or next(iter(self._ids.values())) < now - self.window
            ):
                self._ids.popitem(last=False)
            if webhook_id in self._ids:
                return True
            self._ids[webhook_id] = now
            return False

    def __len__(self) -> int:
        return len(self._ids)


# The default memory for `verify` in this process. A receiver serving several
# secrets or wanting its own bounds passes `seen=SeenIds(...)`.
_DEFAULT_SEEN = SeenIds()


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    seen: SeenStore | None = _DEFAULT_SEEN,
    now: float | None = None,
) -> Any:
    """Check a delivery and return its body, parsed (the job's final record).

    Raises `MissingHeaders`, `InvalidSignature`, `StaleTimestamp` (more than
    `tolerance` seconds off, either way) or `ReplayedDelivery` (its id seen before,
    by `seen`; by default a bounded in-memory record in this process; None turns
    the check off). `headers` may be any mapping; names are matched case-insensitively.
    Pass the raw body: re-serialised JSON will not match the signature.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lower = _lower(headers)
    webhook_id = lower.get(ID_HEADER, "")
    stamp = lower.get(TIMESTAMP_HEADER, "")
    signatures = lower.get(SIGNATURE_HEADER, "")
    if not webhook_id or not signatures or not stamp.isdigit():
        raise MissingHeaders(
            f"a delivery needs {ID_HEADER}, {TIMESTAMP_HEADER} (integer seconds) and "
            f"{SIGNATURE_HEADER} headers"
        )
    timestamp = int(stamp)
    expected = sign(secret, webhook_id, timestamp, raw).partition(",")[2]
    if not any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (s.partition(",") for s in signatures.split())
    ):
        raise InvalidSignature("no webhook signature matches the body under this secret")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise StaleTimestamp(
            f"the delivery's timestamp is {current - timestamp:+.0f}s off (tolerance "
            f"{tolerance:g}s): stale, replayed, or a clock is wrong"
        )
    # Recorded only once signed and fresh, so forged deliveries cannot fill the memory.
    if seen is not None and seen(webhook_id, timestamp):
        raise ReplayedDelivery(f"delivery {webhook_id!r} was received before")
    return json.loads(raw) if raw.strip() else None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in (ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
        value = headers.get(name)  # case-insensitive mappings (frameworks' headers)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == name), None)
        if value is not None:
            out[name] = value
    return out


__all__ = [
    "DEFAULT_TOLERANCE",
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "MissingHeaders",
    "ReplayedDelivery",
    "SeenIds",
    "SeenStore",
    "StaleTimestamp",
    "WebhookVerificationError",
    "generate_secret",
    "headers_for",
    "secret_key",
    "sign",
    "verify",
]
