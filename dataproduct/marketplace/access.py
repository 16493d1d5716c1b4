"""Access requests: a consumer asks for a dataset, an approver decides, the marketplace
writes the grant on the product's control port and revokes it when the time is up.

Who approves a request for a product: its owner (a principal whose subject is the owner's
email, compared without case), a member of one of the marketplace's `approver_groups`, or
a member of one of the product's own approver groups (`product.access_approvers` in its
publication). Nobody decides their own request.

Every change of a request and the event that records it are written in one transaction.
A grant the product could not take is retried with backoff by `sweep` (the approval is
kept, `grant_state` stays `pending`); `sweep` also expires approved requests whose time is
up, revoking their grant on the product (a failed revocation is retried the same way).
Decisions and retries race safely: each is a conditional UPDATE that only one caller wins,
and a retry first claims the request for `lease_s` so two sweeps never write two grants.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from dataproduct.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from dataproduct.marketplace.access_models import access_events, access_requests
from dataproduct.marketplace.grant_client import GrantClient, GrantError, grant_body
from dataproduct.marketplace.models import datasets, products
from dataproduct.security import Principal

log = logging.getLogger("dataproduct.marketplace.access")

PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
GRANT_PENDING, GRANTED, REVOKE_PENDING, REVOKED, NO_GRANT = (
    "pending",
    "granted",
    "revoke_pending",
    "revoked",
    "none",
)
SYSTEM = "marketplace"  # the actor of the events the marketplace itself causes
MAX_TEXT = 4000
MAX_DAYS = 365


@dataclass(frozen=True)
class ProductFacts:
    """What deciding and granting need to know about a product."""

    owner_email: str
    approver_groups: frozenset[str]
    control_url: str


@dataclass
class SweepResult:
    """What one sweep did (request ids)."""

    granted: list[int] = field(default_factory=list)
    grant_failed: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    revoked: list[int] = field(default_factory=list)
    revoke_failed: list[int] = field(default_factory=list)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    moment = _utc(now) or datetime.now(UTC)
    return moment


def _text(value: str | None, where: str, *, required: bool) -> str | None:
    text = (value or "").strip()
    if required and not text:
        raise ValidationError(f"{where} must not be empty", where=where)
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{where} is longer than {MAX_TEXT} characters", where=where)
    return text or None


class AccessRequests:
    """The store of access requests and their history, and the flow that acts on them."""

    def __init__(
        self,
        engine: Engine,
        client: GrantClient,
        *,
        approver_groups: list[str] | tuple[str, ...] = (),
        retry_base_s: float = 5.0,
        retry_max_s: float = 3600.0,
        lease_s: float = 60.0,
    ) -> None:
        self.engine = engine
        self.client = client
        self.approver_groups = frozenset(approver_groups)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.lease_s = lease_s

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction (SQLite takes its write lock at BEGIN)."""
        with self.engine.connect() as connection:
            connection.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with connection.begin():
                yield connection

    # -- asking ------------------------------------------------------------------------

    def request(
        self,
        principal: Principal,
        product: str,
        dataset: str,
        justification: str,
        duration_days: int,
        *,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """A new pending request of `principal` (404 unknown dataset, 409 one is pending)."""
        moment = _now(now)
        reason = _text(justification, "justification", required=True)
        if not 1 <= duration_days <= MAX_DAYS:
            raise ValidationError(
                f"duration_days must be between 1 and {MAX_DAYS}", where="duration_days"
            )
        try:
            with self._writing() as connection:
                facts = _facts(connection, product)
                if facts is None or not _has_dataset(connection, product, dataset):
                    raise NotFoundError(
                        f"there is no dataset {dataset!r} in product {product!r}", where="dataset"
                    )
                created = connection.execute(
                    insert(access_requests).values(
                        product=product, dataset=dataset, requester=principal.subject,
                        justification=reason, duration_days=duration_days, status=PENDING,
                        control_url=facts.control_url, attempts=0, created_at=moment,
                        updated_at=moment,
                        pending_key=_pending_key(principal.subject, product, dataset),
                    )
                )  # fmt: skip
                request_id = int(created.inserted_primary_key[0])  # type: ignore[index]
                _event(connection, request_id, "requested", principal.subject, moment, reason)
        except IntegrityError:
            raise ConflictError(
                f"you already have a pending request for {product}/{dataset}", where="dataset"
            ) from None
        return self.get(request_id)

    # -- reading -----------------------------------------------------------------------

    def get(self, request_id: int) -> dict[str, Any]:
        """One request with its history (404 if there is none)."""
        with self.engine.connect() as connection:
            found = _rows(connection, access_requests.c.id == request_id, limit=1)
            if not found:
                raise NotFoundError(f"there is no access request {request_id}", where="id")
            return _views(connection, found)[0]

    def visible(self, request_id: int, principal: Principal) -> dict[str, Any]:
        """One request, for its requester or one of its approvers (404 for anyone else)."""
        view = self.get(request_id)
        if view["requester"] != principal.subject:
            with self.engine.connect() as connection:
                facts = _facts(connection, view["product"])
            if not self.is_approver(principal, facts):
                raise NotFoundError(f"there is no access request {request_id}", where="id")
        return view

    def mine(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        """The requests of `principal`, newest first."""
        with self.engine.connect() as connection:
            rows = _rows(connection, access_requests.c.requester == principal.subject, limit)
            return _views(connection, rows)

    def pending(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        """The pending requests `principal` may decide, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(access_requests)
                .where(access_requests.c.status == PENDING)
                .order_by(access_requests.c.id)
            ).all()
            facts = {name: _facts(connection, name) for name in {row.product for row in rows}}
            mine = [
                row
                for row in rows
                if row.requester != principal.subject
                and self.is_approver(principal, facts[row.product])
            ]
            return _views(connection, mine[:limit])

    def is_approver(self, principal: Principal, facts: ProductFacts | None) -> bool:
        """Whether `principal` may decide requests for the product of `facts`."""
        if principal.groups & self.approver_groups:
            return True
        if facts is None:
            return False
        owner = facts.owner_email.casefold()
        return principal.subject.casefold() == owner or bool(
            principal.groups & facts.approver_groups
        )

    # -- deciding ----------------------------------------------------------------------

    def approve(
        self,
        request_id: int,
        principal: Principal,
        note: str | None = None,
        *,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Approve and write the grant on the product (kept `pending` if it is down)."""
        moment = _now(now)
        self._decide(request_id, principal, note, APPROVED, moment)
        self._try_grant(request_id, moment)
        return self.get(request_id)

    def deny(
        self,
        request_id: int,
        principal: Principal,
        note: str | None = None,
        *,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Deny a pending request."""
        self._decide(request_id, principal, note, DENIED, _now(now))
        return self.get(request_id)

    def _decide(
        self, request_id: int, principal: Principal, note: str | None, status: str, now: datetime
    ) -> None:
        text = _text(note, "note", required=False)
        with self._writing() as connection:
            row = _one(connection, request_id)
            facts = _facts(connection, row.product)
            if not self.is_approver(principal, facts):
                raise PermissionDeniedError(
                    f"only the owner of {row.product} or an approver may decide this request",
                    where="approver",
                )
            if row.requester == principal.subject:
                raise PermissionDeniedError("nobody decides their own request", where="approver")
            values: dict[str, Any] = {
                "status": status, "decided_by": principal.subject, "decided_at": now,
                "pending_key": None, "updated_at": now,
            }  # fmt: skip
            if status == APPROVED:
                values |= {
                    "grant_state": GRANT_PENDING,
                    "expires_at": now + timedelta(days=row.duration_days),
                    "next_attempt_at": now + timedelta(seconds=self.lease_s),  # ours to grant
                }
                if facts is not None:
                    values["control_url"] = facts.control_url
            changed = connection.execute(
                update(access_requests)
                .where(access_requests.c.id == request_id, access_requests.c.status == PENDING)
                .values(**values)
            ).rowcount
            if changed != 1:
                raise ConflictError(
                    f"access request {request_id} is already {row.status}", where="status"
                )
            _event(connection, request_id, status, principal.subject, now, text)

    # -- granting ----------------------------------------------------------------------

    def _try_grant(self, request_id: int, now: datetime) -> bool:
        """Write the grant of a claimed request; record success or failure."""
        with self.engine.connect() as connection:
            row = _one(connection, request_id)
        expires = _utc(row.expires_at)
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
                _event(connection, request_id, "granted", SYSTEM, now, None, grant_id=grant_id)
        if changed != 1:  # expired while we wrote it: take it back
            self._quietly_revoke(row.control_url, grant_id)
        return changed == 1

    def _failed(self, row: Row[Any], now: datetime, kind: str, error: GrantError) -> None:
        attempts = row.attempts + 1
        retry_at = now + timedelta(seconds=self._backoff_s(attempts))
        expires = _utc(row.expires_at)
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
            _event(
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

    # -- sweeping ----------------------------------------------------------------------

    def sweep(self, *, now: datetime | None = None) -> SweepResult:
        """Expire what is due (revoking on the product), retry failed grants and revocations."""
        moment = _now(now)
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
            row = _one(connection, request_id)
        if row.grant_state == GRANT_PENDING:
            self._mark_expired(row, now, NO_GRANT, "the grant had not been written")
            result.expired.append(request_id)
            return
        try:
            gone = not self.client.revoke(row.control_url, row.grant_id)
        except GrantError as error:
            self._mark_expired(row, now, REVOKE_PENDING, "the time is up")
            self._failed(_one_now(self.engine, request_id), now, "revoke_failed", error)
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
                _revoked_event(connection, row, now, gone)
            _event(connection, row.id, "expired", SYSTEM, now, note)

    def _revoke(self, request_id: int, now: datetime, result: SweepResult) -> None:
        with self.engine.connect() as connection:
            row = _one(connection, request_id)
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
            _revoked_event(connection, row, now, gone)
        result.revoked.append(request_id)


class AccessSweeper:
    """A daemon thread that sweeps every `interval_s` until `stop`."""

    def __init__(self, access: AccessRequests, interval_s: float) -> None:
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


# -- rows, facts and views ----------------------------------------------------------------


def _pending_key(requester: str, product: str, dataset: str) -> str:
    return f"{product}\x1f{dataset}\x1f{requester}"


def _facts(connection: Connection, product: str) -> ProductFacts | None:
    row = connection.execute(
        select(products.c.owner_email, products.c.url, products.c.publication).where(
            products.c.name == product
        )
    ).first()
    if row is None:
        return None
    document = (row.publication or {}).get("product", {})
    control = (document.get("ports") or {}).get("control") or {}
    control_url = control.get("url") if isinstance(control, dict) else None
    approvers = document.get("access_approvers") or []
    if isinstance(approvers, str):
        approvers = [approvers]
    return ProductFacts(
        owner_email=row.owner_email,
        approver_groups=frozenset(str(a) for a in approvers if a),
        control_url=str(control_url or f"{row.url.rstrip('/')}/control"),
    )


def _has_dataset(connection: Connection, product: str, dataset: str) -> bool:
    found = connection.execute(
        select(datasets.c.name).where(datasets.c.product == product, datasets.c.name == dataset)
    ).first()
    return found is not None


def _one(connection: Connection, request_id: int) -> Row[Any]:
    row = connection.execute(
        select(access_requests).where(access_requests.c.id == request_id)
    ).first()
    if row is None:
        raise NotFoundError(f"there is no access request {request_id}", where="id")
    return row


def _one_now(engine: Engine, request_id: int) -> Row[Any]:
    with engine.connect() as connection:
        return _one(connection, request_id)


def _rows(connection: Connection, condition: Any, limit: int) -> list[Row[Any]]:
    return list(
        connection.execute(
            select(access_requests)
            .where(condition)
            .order_by(access_requests.c.id.desc())
            .limit(limit)
        ).all()
    )


def _event(
    connection: Connection,
    request_id: int,
    kind: str,
    actor: str,
    at: datetime,
    note: str | None,
    **detail: Any,
) -> None:
    connection.execute(
        insert(access_events).values(
            request_id=request_id, kind=kind, actor=actor, at=at, note=note,
            detail=detail or None,
        )
    )  # fmt: skip


def _revoked_event(connection: Connection, row: Row[Any], now: datetime, gone: bool) -> None:
    note = "the product no longer had the grant" if gone else None
    _event(connection, row.id, "revoked", SYSTEM, now, note, grant_id=row.grant_id)


def _views(connection: Connection, rows: list[Row[Any]]) -> list[dict[str, Any]]:
    ids = [row.id for row in rows]
    history: dict[int, list[dict[str, Any]]] = {request_id: [] for request_id in ids}
    if ids:
        for event in connection.execute(
            select(access_events)
            .where(access_events.c.request_id.in_(ids))
            .order_by(access_events.c.id)
        ):
            history[event.request_id].append(_event_view(event))
    return [_view(row, history[row.id]) for row in rows]


def _iso(moment: datetime | None) -> str | None:
    aware = _utc(moment)
    return aware.isoformat() if aware else None


def _view(row: Row[Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "product": row.product,
        "dataset": row.dataset,
        "requester": row.requester,
        "justification": row.justification,
        "duration_days": row.duration_days,
        "status": row.status,
        "grant_state": row.grant_state,
        "grant_id": row.grant_id,
        "grant_attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at) if row.grant_state in _RETRIED else None,
        "last_error": row.last_error,
        "decided_by": row.decided_by,
        "decided_at": _iso(row.decided_at),
        "expires_at": _iso(row.expires_at),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "history": history,
    }


_RETRIED = (GRANT_PENDING, REVOKE_PENDING)


def _event_view(event: Row[Any]) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "actor": event.actor,
        "at": _iso(event.at),
        "note": event.note,
        **({"detail": event.detail} if event.detail else {}),
    }
