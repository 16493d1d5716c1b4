"""Writing an approved request's grant on the product, with backoff when it cannot.

`GrantWriter` is the part of `AccessRequests` that talks to a product's control port: it
writes a grant, records a failure and when to retry it, and claims a due request for
`lease_s` so that two sweeps never write two grants.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, or_, update

from dataproduct.marketplace.access_models import access_requests
from dataproduct.marketplace.access_store import (
    GRANT_PENDING,
    GRANTED,
    SYSTEM,
    as_utc,
    one_request,
    record_event,
)
from dataproduct.marketplace.grant_client import GrantClient, GrantError, grant_body

log = logging.getLogger("dataproduct.marketplace.access")


class GrantWriter:
    """Writes and retries grants; the class that uses it sets the attributes below."""

    engine: Engine
    client: GrantClient
    retry_base_s: float
    retry_max_s: float
    lease_s: float

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction (SQLite takes its write lock at BEGIN)."""
        with self.engine.connect() as connection:
            connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                yield connection

    def _try_grant(self, request_id: int, now: datetime) -> bool:
        """Write the grant of a claimed request; record success or failure."""
        with self.engine.connect() as connection:
            row = one_request(connection, request_id)
        expires = as_utc(row.expires_at)
        assert expires is not None
        body = grant_body(row.dataset, row.requester, expires)
        try:
            found = self.client.find(row.control_url, body) if row.attempts else None
            grant_id = found or self.client.add(row.control_url, body)
        except GrantError as error:
            self._failed(row, now, "grant_failed", error)
            return False
        with self._writing() as connection:
            changed = connection.execute(
                update(access_requests)
                .where(
                    access_requests.c.id == request_id,
                    access_requests.c.grant_state == GRANT_PENDING,
                )
                .values(
                    grant_state=GRANTED, grant_id=grant_id, attempts=row.attempts + 1,
                    next_attempt_at=None, last_error=None, updated_at=now,
                )
            ).rowcount  # fmt: skip
            if changed == 1:
                record_event(
                    connection, request_id, "granted", SYSTEM, now, None, grant_id=grant_id
                )
        if changed != 1:  # expired while we wrote it: take it back
            self._quietly_revoke(row.control_url, grant_id)
        return changed == 1

    def _failed(self, row: Row[Any], now: datetime, kind: str, error: GrantError) -> None:
        attempts = row.attempts + 1
        retry_at = now + timedelta(seconds=self._backoff_s(attempts))
        expires = as_utc(row.expires_at)
        if kind == "grant_failed" and expires is not None:
            retry_at = min(retry_at, expires)  # expiry is decided on time
        with self._writing() as connection:
            connection.execute(
                update(access_requests)
                .where(access_requests.c.id == row.id)
                .values(
                    attempts=attempts, next_attempt_at=retry_at, last_error=error.message,
                    updated_at=now,
                )
            )  # fmt: skip
            record_event(
                connection, row.id, kind, SYSTEM, now, error.message,
                attempt=attempts, transient=error.transient, retry_at=retry_at.isoformat(),
            )  # fmt: skip
        log.warning("access request %s: %s (attempt %s)", row.id, error.message, attempts)

    def _backoff_s(self, attempts: int) -> float:
        return float(min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts - 1, 30)))

    def _claim(self, request_id: int, state: str, now: datetime) -> bool:
        """Take a due request for `lease_s` so no other sweep works on it meanwhile."""
        due = or_(
            access_requests.c.next_attempt_at.is_(None), access_requests.c.next_attempt_at <= now
        )
        with self._writing() as connection:
            return (
                connection.execute(
                    update(access_requests)
                    .where(
                        access_requests.c.id == request_id,
                        access_requests.c.grant_state == state,
                        due,
                    )
                    .values(next_attempt_at=now + timedelta(seconds=self.lease_s))
                ).rowcount
                == 1
            )

    def _quietly_revoke(self, control_url: str, grant_id: str) -> None:
        try:
            self.client.revoke(control_url, grant_id)
        except GrantError as error:
            log.warning("could not take back grant %s: %s", grant_id, error.message)
