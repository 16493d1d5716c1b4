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

This module is the decision flow; the rows, events and views live in `access_store`, the
grant writing in `access_grants`, the sweep and its thread in `access_sweep`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from dataproduct.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from dataproduct.marketplace.access_models import access_requests
from dataproduct.marketplace.access_store import (
    APPROVED,
    DENIED,
    EXPIRED,
    GRANT_PENDING,
    GRANTED,
    MAX_DAYS,
    MAX_TEXT,
    NO_GRANT,
    PENDING,
    REVOKE_PENDING,
    REVOKED,
    SYSTEM,
    ProductFacts,
    checked_text,
    has_dataset,
    one_request,
    pending_key,
    product_facts,
    record_event,
    request_rows,
    request_views,
    utc_now,
)
from dataproduct.marketplace.access_sweep import AccessSweep, AccessSweeper, SweepResult
from dataproduct.marketplace.grant_client import GrantClient
from dataproduct.security import Principal

__all__ = [
    "APPROVED",
    "DENIED",
    "EXPIRED",
    "GRANTED",
    "GRANT_PENDING",
    "MAX_DAYS",
    "MAX_TEXT",
    "NO_GRANT",
    "PENDING",
    "REVOKED",
    "REVOKE_PENDING",
    "SYSTEM",
    "AccessRequests",
    "AccessSweeper",
    "ProductFacts",
    "SweepResult",
]


class AccessRequests(AccessSweep):
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
        moment = utc_now(now)
        reason = checked_text(justification, "justification", required=True)
        if not 1 <= duration_days <= MAX_DAYS:
            raise ValidationError(
                f"duration_days must be between 1 and {MAX_DAYS}", where="duration_days"
            )
        try:
            with self._writing() as connection:
                facts = product_facts(connection, product)
                if facts is None or not has_dataset(connection, product, dataset):
                    raise NotFoundError(
                        f"there is no dataset {dataset!r} in product {product!r}", where="dataset"
                    )
                created = connection.execute(
                    insert(access_requests).values(
                        product=product, dataset=dataset, requester=principal.subject,
                        justification=reason, duration_days=duration_days, status=PENDING,
                        control_url=facts.control_url, attempts=0, created_at=moment,
                        updated_at=moment,
                        pending_key=pending_key(principal.subject, product, dataset),
                    )
                )  # fmt: skip
                request_id = int(created.inserted_primary_key[0])  # type: ignore[index]
                record_event(connection, request_id, "requested", principal.subject, moment, reason)
        except IntegrityError:
            raise ConflictError(
                f"you already have a pending request for {product}/{dataset}", where="dataset"
            ) from None
        return self.get(request_id)

    # -- reading -----------------------------------------------------------------------

    def get(self, request_id: int) -> dict[str, Any]:
        """One request with its history (404 if there is none)."""
        with self.engine.connect() as connection:
            found = request_rows(connection, access_requests.c.id == request_id, limit=1)
            if not found:
                raise NotFoundError(f"there is no access request {request_id}", where="id")
            return request_views(connection, found)[0]

    def visible(self, request_id: int, principal: Principal) -> dict[str, Any]:
        """One request, for its requester or one of its approvers (404 for anyone else)."""
        view = self.get(request_id)
        if view["requester"] != principal.subject:
            with self.engine.connect() as connection:
                facts = product_facts(connection, view["product"])
            if not self.is_approver(principal, facts):
                raise NotFoundError(f"there is no access request {request_id}", where="id")
        return view

    def mine(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        """The requests of `principal`, newest first."""
        with self.engine.connect() as connection:
            rows = request_rows(connection, access_requests.c.requester == principal.subject, limit)
            return request_views(connection, rows)

    def pending(self, principal: Principal, limit: int = 100) -> list[dict[str, Any]]:
        """The pending requests `principal` may decide, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(access_requests)
                .where(access_requests.c.status == PENDING)
                .order_by(access_requests.c.id)
            ).all()
            facts = {
                name: product_facts(connection, name) for name in {row.product for row in rows}
            }
            mine = [
                row
                for row in rows
                if row.requester != principal.subject
                and self.is_approver(principal, facts[row.product])
            ]
            return request_views(connection, mine[:limit])

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
        moment = utc_now(now)
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
        self._decide(request_id, principal, note, DENIED, utc_now(now))
        return self.get(request_id)

    def _decide(
        self, request_id: int, principal: Principal, note: str | None, status: str, now: datetime
    ) -> None:
        text = checked_text(note, "note", required=False)
        with self._writing() as connection:
            row = one_request(connection, request_id)
            facts = product_facts(connection, row.product)
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
            record_event(connection, request_id, status, principal.subject, now, text)
