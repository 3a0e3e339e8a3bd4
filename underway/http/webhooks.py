"""Webhooks: POST a job's final record to its `callback_url` once it finishes.

Deliveries follow the Standard Webhooks convention (`underway.webhooks`): signed
with HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` under the operator's
secret (`whsec_...`), so a receiver calling `underway.webhooks.verify` rejects a
changed body, a stale timestamp and a replayed delivery. Failed deliveries are
retried with doubling delays, each attempt with its own id and timestamp. Every
attempt is recorded under the job's `webhook` member.

Only hosts on the operator's allow-list are ever contacted, and redirects are not
followed, so a submitter cannot make the server send requests into its network.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import webhooks as standard
from .._util import dumps, rfc3339
from ..errors import ConfigurationError
from ..records import TERMINAL
from .problems import invalid_query

if TYPE_CHECKING:
    import httpx

    from ..app import Underway

log = logging.getLogger("underway.webhooks")

SIGNATURE_HEADER = standard.SIGNATURE_HEADER
_DEFAULT_PORTS = {"http": 80, "https": 443}
_KEEP_STATUSES = 10_000  # deliveries this process tracks at most (the job keeps the record)


class HostAllowList:
    """Hosts a callback may reach: `example.com`, `*.example.com`, `10.0.0.5:8080`."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.entries: list[tuple[str, int | None]] = []
        for entry in entries:
            host, _, port = entry.strip().lower().rpartition(":")
            if not host or not port.isdigit():
                host, port = entry.strip().lower(), ""
            self.entries.append((host.strip("[]"), int(port) if port else None))

    def allows(self, host: str, port: int) -> bool:
        host = host.lower()
        for pattern, want_port in self.entries:
            if want_port is not None and want_port != port:
                continue
            if pattern == host:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False

    def url_pattern(self) -> str:
        """A regular expression for callback URLs this list allows (or the empty
        string), for the OpenAPI document. Narrower than `allows`: ports 1-9999 where
        any port is allowed, and plain path characters."""
        hosts: list[str] = []
        for pattern, port in self.entries:
            if pattern.startswith("*."):
                name = r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?" + re.escape(pattern[1:])
            elif ":" in pattern:
                name = re.escape(f"[{pattern}]")
            else:
                name = re.escape(pattern)
            hosts.append(name + (f":{port}" if port is not None else "(?::[1-9][0-9]{0,3})?"))
        path = r"(?:/[A-Za-z0-9._~/-]*)?(?:\?[A-Za-z0-9._~=&-]*)?"
        return rf"^(?:|https?://(?:{'|'.join(hosts)}){path})$"

    def __bool__(self) -> bool:
        return bool(self.entries)


@dataclass(kw_only=True)
class _Delivery:
    job_id: str
    url: str
    attempts: list[dict[str, Any]]
    state: str = "waiting"  # waiting (job not finished) | pending | delivered | failed

    def public(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "attempts": list(self.attempts)}


class WebhookDispatcher:
    """Watches jobs that carry a callback URL and delivers their final record.

    One scheduler thread (woken by the store's notifier) plus a few sender threads;
    started on first use, stopped by `close()`.
    """

    def __init__(
        self,
        uw: Underway,
        *,
        allowed_hosts: Iterable[str],
        secret: str | bytes | None,
        max_attempts: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 10.0,
        senders: int = 4,
        recheck: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.uw = uw
        self.allow = HostAllowList(allowed_hosts)
        if self.allow and not secret:
            raise ConfigurationError("webhooks need a signing secret: pass webhook_secret=...")
        # Checked now, so that a malformed secret stops the server from starting.
        self.secret = standard.secret_key(secret) if secret else b""
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.recheck = recheck  # for finishes this process's notifier does not hear
        self._senders = senders
        self._transport = transport
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deliveries: OrderedDict[str, _Delivery] = OrderedDict()
        self._waiting: dict[str, Callable[[], None]] = {}  # job id -> unsubscribe
        self._due: list[tuple[float, str]] = []  # (monotonic time, job id) heap
        self._changed: set[str] = set()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None

    # -- submission side -------------------------------------------------------------
    def check_url(self, url: str) -> str:
        """The URL if its host is allowed; else a 422 problem (and nothing is sent)."""
        field = "query.callback_url"
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            raise invalid_query(field, "is not a valid URL") from None
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise invalid_query(field, "must be an absolute http or https URL")
        if parts.username is not None or parts.password is not None:
            raise invalid_query(field, "must not carry credentials")
        if not self.allow.allows(parts.hostname, port):
            raise invalid_query(field, f"host {parts.hostname!r} is not on the allow-list")
        return url

    def watch(self, job_id: str, url: str, attempts: Iterable[dict[str, Any]] = ()) -> None:
        """Deliver `job_id`'s final record to `url` once it finishes."""
        self._ensure_started()
        with self._lock:
            if job_id in self._deliveries:
                return  # an idempotent resubmission of a job already watched
            self._deliveries[job_id] = _Delivery(job_id=job_id, url=url, attempts=list(attempts))
            while len(self._deliveries) > _KEEP_STATUSES:
                self._deliveries.popitem(last=False)
            self._changed.add(job_id)

        def changed() -> None:
            with self._lock:
                self._changed.add(job_id)
            self._wake.set()

        unsubscribe = self.uw.feed.subscribe(job_id, changed)
        with self._lock:
            self._waiting[job_id] = unsubscribe
        self._wake.set()

    def resume(self, scan: int = 10_000) -> int:
        """Pick up the deliveries a previous process left unfinished (it stopped or
        crashed): among the newest `scan` jobs, those with a callback URL whose
        delivery is neither done nor given up. Returns how many were resumed."""
        if not self.allow:
            return 0
        resumed = 0
        cursor: str | None = None
        seen = 0
        while seen < scan:
            page = self.uw.list_jobs(limit=min(500, scan - seen), cursor=cursor)
            for record in page.jobs:
                url = record.meta.get("callback_url")
                previous = record.meta.get("webhook") or {}
                if not url or previous.get("state") in ("delivered", "failed"):
                    continue
                attempts = previous.get("attempts") or []
                try:
                    self.check_url(url)
                except Exception:  # the operator took the host off the allow-list
                    self._record(record.id, {"url": url, "state": "failed", "attempts": attempts})
                    continue
                self.watch(record.id, url, attempts)
                resumed += 1
            seen += len(page.jobs)
            cursor = page.next_cursor
            if cursor is None:
                break
        if resumed:
            log.info("resumed %d webhook deliveries", resumed)
        return resumed

    def status(self, job_id: str) -> dict[str, Any] | None:
        """The delivery record for a job watched by this process, if any."""
        with self._lock:
            delivery = self._deliveries.get(job_id)
            return delivery.public() if delivery is not None else None

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        with self._lock:
            for unsubscribe in self._waiting.values():
                unsubscribe()
            self._waiting.clear()

    # -- scheduling ------------------------------------------------------------------
    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            import httpx

            self._client = httpx.Client(
                timeout=self.timeout, follow_redirects=False, transport=self._transport
            )
            self._pool = ThreadPoolExecutor(self._senders, thread_name_prefix="underway-webhook")
            self._thread = threading.Thread(
                target=self._schedule, name="underway-webhooks", daemon=True
            )
            self._thread.start()

    def _schedule(self) -> None:
        last_recheck = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._lock:
                changed, self._changed = self._changed, set()
                if now - last_recheck >= self.recheck:
                    changed |= set(self._waiting)
                    last_recheck = now
                due: list[str] = []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due)[1])
            for job_id in changed:
                self._check_finished(job_id)
            for job_id in due:
                assert self._pool is not None
                self._pool.submit(self._attempt, job_id)
            with self._lock:
                next_due = self._due[0][0] - time.monotonic() if self._due else self.recheck
            self._wake.wait(max(0.0, min(next_due, self.recheck)))
            self._wake.clear()

    def _check_finished(self, job_id: str) -> None:
        record = self.uw.find(job_id)
        if record is not None and record.state not in TERMINAL:
            return
        with self._lock:
            unsubscribe = self._waiting.pop(job_id, None)
            delivery = self._deliveries.get(job_id)
            if unsubscribe is None or delivery is None:
                return
            if record is None:
                delivery.state = "failed"  # deleted before it finished: nothing to send
            else:
                delivery.state = "pending"
                heapq.heappush(self._due, (time.monotonic(), job_id))
        unsubscribe()
        self._wake.set()

    # -- sending ---------------------------------------------------------------------
    def _attempt(self, job_id: str) -> None:
        with self._lock:
            delivery = self._deliveries.get(job_id)
        record = self.uw.find(job_id)
        if delivery is None or record is None or self._client is None:
            return
        payload = record.to_dict(include_owner=True)
        if payload["error"] is not None:
            # The receiver is outside the operator's walls: never send it a traceback.
            payload["error"] = {**payload["error"], "traceback": None}
        body = dumps(payload).encode()
        number = len(delivery.attempts) + 1
        headers = {
            "Content-Type": "application/json",
            # One id per attempt: a receiver that failed may take the retry, while a
            # captured attempt replayed is refused.
            **standard.headers_for(self.secret, f"{job_id}_{number}", body),
            "Underway-Job": job_id,
            "Underway-Delivery-Attempt": str(number),
            "User-Agent": "underway-webhook",
        }
        started = time.monotonic()
        entry: dict[str, Any] = {"attempt": number, "at": rfc3339(time.time())}
        try:
            response = self._client.post(delivery.url, content=body, headers=headers)
            entry["status"] = response.status_code
            ok = 200 <= response.status_code < 300
            entry["error"] = None if ok else f"HTTP {response.status_code}"
        except Exception as exc:  # any transport failure counts as a failed attempt
            entry["status"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"
            ok = False
        entry["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        with self._lock:
            delivery.attempts.append(entry)
            if ok:
                delivery.state = "delivered"
            elif number >= self.max_attempts:
                delivery.state = "failed"
            else:
                delay = min(self.backoff * 2 ** (number - 1), self.backoff_max)
                heapq.heappush(self._due, (time.monotonic() + delay, job_id))
            public = delivery.public()
        self._record(job_id, public)
        self._wake.set()
        if not ok:
            log.warning("webhook for job %s, attempt %d: %s", job_id, number, entry["error"])

    def _record(self, job_id: str, public: dict[str, Any]) -> None:
        """Keep the attempts on the job itself, where every process can see them."""
        try:
            self.uw.annotate(job_id, {"webhook": public})
        except Exception:
            log.exception("could not record webhook attempts on job %s", job_id)
