"""Who is asking: bearer tokens mapped to principals, or the host application's hook.

Tokens come from a dict, a file (`token=principal` per line, `#` comments), or the
`UNDERWAY_TOKENS` environment variable (`token1=alice,token2=bob`). A principal owns
the jobs it submits and sees only those. With no tokens and no hook, the API is
open and every caller sees every job (the CLI keeps such a server on loopback).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

TOKENS_ENV = "UNDERWAY_TOKENS"

# The hook receives the framework's own request object (Starlette's or Flask's) and
# returns the principal, or None for "not signed in" (401). It may be a coroutine
# function under Starlette.
AuthHook = Callable[[Any], Any]
TokenSource = Mapping[str, str] | str | os.PathLike[str]


def parse_tokens(text: str) -> dict[str, str]:
    """`token=principal` pairs separated by commas or newlines; `#` starts a comment."""
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        for chunk in line.split("#", 1)[0].split(","):
            item = chunk.strip()
            if not item:
                continue
            token, sep, principal = (part.strip() for part in item.partition("="))
            if not sep or not token or not principal:
                # Never echo the entry: it may be a secret with a typo in it.
                raise ConfigurationError("bad token entry: use token=principal")
            pairs[token] = principal
    return pairs


def load_tokens(source: TokenSource | None = None) -> dict[str, str]:
    """Tokens from a mapping, a file path, or (when None) `UNDERWAY_TOKENS`."""
    if source is None:
        return parse_tokens(os.environ.get(TOKENS_ENV, ""))
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the token file {path}: {exc.strerror}") from None
    return parse_tokens(text)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Resolves a request's principal. `anonymous` is True when auth is off."""

    def __init__(self, tokens: TokenSource | None = None, hook: AuthHook | None = None) -> None:
        self.hook = hook
        # Looking tokens up by their hash keeps the comparison from leaking, through
        # timing, how much of a guessed token was right.
        self._principals = {_digest(t): p for t, p in load_tokens(tokens).items()}

    @property
    def anonymous(self) -> bool:
        return self.hook is None and not self._principals

    def from_header(self, authorization: str | None) -> str | None:
        """The principal for an `Authorization: Bearer ...` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._principals.get(_digest(token.strip()))
