"""Which `Host` names the API answers for: a guard against DNS rebinding.

A server without tokens trusts whoever can reach it, which on loopback means the
local user. A page on another site can still reach it through the browser: it
points its own name at 127.0.0.1 (DNS rebinding), and the browser then sends that
name as `Host`. So an open server answers only loopback names and addresses
(`localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]`, with any port) and the names the
operator lists (`--allowed-host`, `allowed_hosts=`); anything else gets a 421
problem. With tokens (or an auth hook), a rebinding page has no token to send, so
the check applies only when the operator lists names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def host_name(header: str) -> str:
    """The name in a `Host` header, without port or brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """`allows(host_header)`; built once per app.

    `allowed`: extra names (`jobs.example.com`, `*.example.com`; `*` allows any).
    None means none, and with `enforce=False` (an authenticated API) no check at all.
    """

    def __init__(self, allowed: Iterable[str] | None, *, enforce: bool) -> None:
        names = [host_name(n) for n in allowed or () if n.strip()]
        self.active = (enforce or allowed is not None) and "*" not in names
        self._exact = frozenset(n for n in names if not n.startswith("*."))
        self._suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, header: str | None) -> bool:
        if not self.active:
            return True
        if not header:
            return False  # HTTP/1.1 requires Host; without it nothing can be checked
        name = host_name(header)
        return (
            is_loopback_name(name)
            or name in self._exact
            or (bool(self._suffixes) and name.endswith(self._suffixes))
        )


__all__ = ["HostCheck", "host_name", "is_loopback_name"]
