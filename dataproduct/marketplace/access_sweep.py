"""The access sweep: expire approved requests whose time is up (revoking their grant on
the product), retry failed grants and revocations; `AccessSweeper` runs it in a thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, or_, select, update

from dataproduct.marketplace.access_grants import GrantWriter
from dataproduct.marketplace.access_models import access_requests
from dataproduct.marketplace.access_store import (
    APPROVED,
    EXPIRED,
    GRANT_PENDING,
    GRANTED,
    NO_GRANT,
    REVOKE_PENDING,
    REVOKED,
    SYSTEM,
    one_request,
    one_request_now,
    record_event,
    record_revoked,
    utc_now,
)
from dataproduct.marketplace.grant_client import GrantError

log = logging.getLogger("dataproduct.marketplace.access")


@dataclass
class SweepResult:
    """What one sweep did (request ids)."""

    granted: list[int] = field(default_factory=list)
    grant_failed: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)
    revoke_failed: list[int] = field(default_factory=list)


class AccessSweep(GrantWriter):
    """The sweep part of `AccessRequests`."""

    def sweep(self, *, now: datetime | None = None) -> SweepResult:
        """Expire what is due (revoking on the product), retry failed grants and revocations."""
        moment = utc_now(now)
        result = SweepResult()
        for request_id in self._due_expiries(moment):
            self._expire(request_id, moment, result)
        for request_id in self._due(REVOKE_PENDING, moment):
            if self._claim(request_id, REVOKE_PENDING, moment):
                self._revoke(request_id, moment, result)
        for request_id in self._due(GRANT_PENDING, moment):
            if self._claim(request_id, GRANT_PENDING, moment):
                granted = self._try_grant(request_id, moment)
                (result.granted if granted else result.grant_failed).append(request_id)
        return result

    def _due_expiries(self, now: datetime) -> list[int]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(access_requests.c.id).where(
                        access_requests.c.status == APPROVED, access_requests.c.expires_at <= now
                    )
                ).scalars()
            )

    def _due(self, state: str, now: datetime) -> list[int]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    select(access_requests.c.id).where(
                        access_requests.c.grant_state == state,
                        access_requests.c.status.in_([APPROVED, EXPIRED]),
                        or_(
                            access_requests.c.next_attempt_at.is_(None),
                            access_requests.c.next_attempt_at <= now,
                        ),
                        or_(
                            access_requests.c.status == EXPIRED,
                            access_requests.c.expires_at > now,
                        ),
                    )
                ).scalars()
            )

    def _expire(self, request_id: int, now: datetime, result: SweepResult) -> None:
        for state in (GRANTED, GRANT_PENDING):
            if self._claim(request_id, state, now):
                break
        else:
            return  # someone else is working on it; the next sweep expires it
        with self.engine.connect() as connection:
            row = one_request(connection, request_id)
        if row.grant_state == GRANT_PENDING:
            self._mark_expired(row, now, NO_GRANT, "the grant had not been written")
            result.expired.append(request_id)
            return
        try:
            gone = not self.client.revoke(row.control_url, row.grant_id)
        except GrantError as error:
            self._mark_expired(row, now, REVOKE_PENDING, "the time is up")
            self._failed(one_request_now(self.engine, request_id), now, "revoke_failed", error)
            result.expired.append(request_id)
            result.revoke_failed.append(request_id)
            return
        self._mark_expired(row, now, REVOKED, "the time is up", revoked=True, gone=gone)
        result.expired.append(request_id)
        result.revoked.append(request_id)

    def _mark_expired(
        self,
        row: Row[Any],
        now: datetime,
        grant_state: str,
        note: str,
        *,
        revoked: bool = False,
        gone: bool = False,
    ) -> None:
        with self._writing() as connection:
            connection.execute(
                update(access_requests)
                .where(access_requests.c.id == row.id)
                .values(
                    status=EXPIRED, grant_state=grant_state, attempts=0, next_attempt_at=now,
                    last_error=None, updated_at=now,
                )
            )  # fmt: skip
            if revoked:
                record_revoked(connection, row, now, gone)
            record_event(connection, row.id, "expired", SYSTEM, now, note)

    def _revoke(self, request_id: int, now: datetime, result: SweepResult) -> None:
        with self.engine.connect() as connection:
            row = one_request(connection, request_id)
        try:
            gone = not self.client.revoke(row.control_url, row.grant_id)
        except GrantError as error:
            self._failed(row, now, "revoke_failed", error)
            result.revoke_failed.append(request_id)
            return
        with self._writing() as connection:
            connection.execute(
                update(access_requests)
                .where(access_requests.c.id == request_id)
                .values(grant_state=REVOKED, next_attempt_at=None, last_error=None, updated_at=now)
            )
            record_revoked(connection, row, now, gone)
        result.revoked.append(request_id)


class AccessSweeper:
    """A daemon thread that sweeps every `interval_s` until `stop`."""

    def __init__(self, access: AccessSweep, interval_s: float) -> None:
        self.access = access
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-sweeper", daemon=True)

    def start(self) -> None:
        """Start sweeping."""
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the current sweep to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.access.sweep()
            except Exception:  # a store hiccup must not end the thread
                log.exception("the access sweep failed; trying again later")
