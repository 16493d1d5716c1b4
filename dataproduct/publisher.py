"""Publishing a product's metadata to the marketplace: on start, on every change, and as a
heartbeat.

A background thread does it, so a product never waits for the marketplace: changes that
arrive while it publishes are folded into the next publication (always the latest state),
a marketplace that is down or busy is retried with exponential backoff, and the product
catches up as soon as it answers. A refusal (a bad credential, a name owned by another
product) is not retried until the next change: repeating it would not help.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger("dataproduct.marketplace")

RETRIED_STATUSES = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class PublisherStatus:
    """What the last attempts did, for the control port."""

    published_at: str | None = None
    changed: bool | None = None
    attempts: int = 0
    last_error: str | None = None
    last_error_at: str | None = None
    pending: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "published_at": self.published_at,
            "changed": self.changed,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "pending": self.pending,
        }


class Publisher:
    """Pushes `build()` to `PUT {url}/api/v1/products/{name}` whenever told to."""

    def __init__(
        self,
        name: str,
        url: str,
        token: str | None,
        build: Callable[[], dict[str, Any]],
        *,
        heartbeat_s: float = 300.0,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = f"{url.rstrip('/')}/api/v1/products/{quote(name, safe='')}"
        self.token = token
        self.build = build
        self.heartbeat_s = heartbeat_s
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.status = PublisherStatus()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Publish now, then on every `notify` and every heartbeat."""
        if self._thread is not None:
            return
        self.notify("start")
        self._thread = threading.Thread(target=self._serve, name="marketplace", daemon=True)
        self._thread.start()

    def notify(self, reason: str) -> None:
        """Something the marketplace shows changed: publish (soon, once)."""
        with self._lock:
            self.status.pending = True
            self.status.reasons.append(reason)
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing (a publication under way is given `timeout_s` to finish)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _serve(self) -> None:
        delay = self.first_backoff_s
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                if not self._wake.wait(self.heartbeat_s):
                    self.notify("heartbeat")
                if self._stop.is_set():
                    return
                self._wake.clear()
                with self._lock:
                    if not self.status.pending:
                        continue
                    self.status.pending = False
                    reasons, self.status.reasons = self.status.reasons, []
                outcome = self._publish(client, reasons)
                if outcome == "retry":
                    with self._lock:
                        self.status.pending = True
                        self.status.reasons = reasons + self.status.reasons
                    if self._stop.wait(delay):
                        return
                    delay = min(delay * 2, self.max_backoff_s)
                    self._wake.set()
                else:
                    delay = self.first_backoff_s

    def _publish(self, client: httpx.Client, reasons: list[str]) -> str:
        """One attempt: `done`, `retry` (transient) or `refused` (until the next change)."""
        self.status.attempts += 1
        try:
            publication = self.build()
        except Exception as error:  # building must never kill the publisher
            log.exception("cannot build the publication")
            self._failed(f"cannot build the publication: {type(error).__name__}")
            return "refused"
        publication["published_at"] = datetime.now(UTC).isoformat()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = client.put(self.endpoint, json=publication, headers=headers)
        except httpx.HTTPError as error:
            self._failed(f"the marketplace is unreachable: {type(error).__name__}")
            return "retry"
        if response.status_code in RETRIED_STATUSES:
            self._failed(f"the marketplace answered {response.status_code}")
            return "retry"
        if response.status_code >= 400:
            self._failed(f"the marketplace refused the publication: {_reason(response)}")
            return "refused"
        body = _json(response)
        with self._lock:
            self.status.published_at = publication["published_at"]
            self.status.changed = bool(body.get("changed", True))
            self.status.last_error = None
        log.info("published to the marketplace (%s)", ", ".join(dict.fromkeys(reasons)))
        return "done"

    def _failed(self, message: str) -> None:
        with self._lock:
            self.status.last_error = message
            self.status.last_error_at = datetime.now(UTC).isoformat()
        log.warning("marketplace: %s", message)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(response: httpx.Response) -> str:
    error = _json(response).get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return f"{response.status_code} {message or response.reason_phrase}"
