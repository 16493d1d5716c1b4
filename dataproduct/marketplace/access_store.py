"""Access requests in the store: the states, the product facts a decision needs, the rows,
the events that record every change, and the views the ports show.

Shared by the decision flow (`access`), the grant writer (`access_grants`) and the sweep
(`access_sweep`); nothing here talks to a product.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, insert, select

from dataproduct.errors import NotFoundError, ValidationError
from dataproduct.marketplace.access_models import access_events, access_requests
from dataproduct.marketplace.models import datasets, products

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


def as_utc(moment: datetime | None) -> datetime | None:
    """`moment` in UTC (a naive one is taken as UTC), or None."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc_now(now: datetime | None) -> datetime:
    """`now` in UTC, or the current time when it is None."""
    moment = as_utc(now) or datetime.now(UTC)
    return moment


def checked_text(value: str | None, where: str, *, required: bool) -> str | None:
    """`value` stripped (None if empty); `ValidationError` if missing or too long."""
    text = (value or "").strip()
    if required and not text:
        raise ValidationError(f"{where} must not be empty", where=where)
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{where} is longer than {MAX_TEXT} characters", where=where)
    return text or None


# -- rows and facts -----------------------------------------------------------------------


def pending_key(requester: str, product: str, dataset: str) -> str:
    """The key that allows one pending request per requester and dataset."""
    return f"{product}\x1f{dataset}\x1f{requester}"


def product_facts(connection: Connection, product: str) -> ProductFacts | None:
    """Owner, approver groups and control URL of `product` (None if it is not listed)."""
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


def has_dataset(connection: Connection, product: str, dataset: str) -> bool:
    """Whether `product` lists `dataset`."""
    found = connection.execute(
        select(datasets.c.name).where(datasets.c.product == product, datasets.c.name == dataset)
    ).first()
    return found is not None


def one_request(connection: Connection, request_id: int) -> Row[Any]:
    """The row of one request (`NotFoundError` if there is none)."""
    row = connection.execute(
        select(access_requests).where(access_requests.c.id == request_id)
    ).first()
    if row is None:
        raise NotFoundError(f"there is no access request {request_id}", where="id")
    return row


def one_request_now(engine: Engine, request_id: int) -> Row[Any]:
    """The row of one request, read in a connection of its own."""
    with engine.connect() as connection:
        return one_request(connection, request_id)


def request_rows(connection: Connection, condition: Any, limit: int) -> list[Row[Any]]:
    """The requests matching `condition`, newest first."""
    return list(
        connection.execute(
            select(access_requests)
            .where(condition)
            .order_by(access_requests.c.id.desc())
            .limit(limit)
        ).all()
    )


def record_event(
    connection: Connection,
    request_id: int,
    kind: str,
    actor: str,
    at: datetime,
    note: str | None,
    **detail: Any,
) -> None:
    """Add one event to the history of a request."""
    connection.execute(
        insert(access_events).values(
            request_id=request_id, kind=kind, actor=actor, at=at, note=note,
            detail=detail or None,
        )
    )  # fmt: skip


def record_revoked(connection: Connection, row: Row[Any], now: datetime, gone: bool) -> None:
    """Record that the grant of `row` was taken back (or was already gone)."""
    note = "the product no longer had the grant" if gone else None
    record_event(connection, row.id, "revoked", SYSTEM, now, note, grant_id=row.grant_id)


# -- views --------------------------------------------------------------------------------


def request_views(connection: Connection, rows: list[Row[Any]]) -> list[dict[str, Any]]:
    """The views of `rows`, each with its history."""
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
    aware = as_utc(moment)
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
