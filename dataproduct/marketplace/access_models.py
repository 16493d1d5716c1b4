"""The tables of access requests and their history, on the marketplace's `metadata`.

`pending_key` is set while a request is pending and cleared once it is decided: its
unique constraint keeps one pending request per requester, product and dataset.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Integer, String, Table, Text

from dataproduct.marketplace.models import metadata


def _when(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


access_requests = Table(
    "access_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("product", String(128), nullable=False, index=True),
    Column("dataset", String(128), nullable=False),
    Column("requester", String(300), nullable=False, index=True),
    Column("justification", Text, nullable=False),
    Column("duration_days", Integer, nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("grant_state", String(20), nullable=True, index=True),
    Column("grant_id", String(200), nullable=True),
    Column("control_url", String(500), nullable=False),
    Column("pending_key", String(600), nullable=True, unique=True),
    Column("decided_by", String(300), nullable=True),
    _when("decided_at", nullable=True),
    _when("expires_at", nullable=True),
    Column("attempts", Integer, nullable=False),
    _when("next_attempt_at", nullable=True),
    Column("last_error", Text, nullable=True),
    _when("created_at"),
    _when("updated_at"),
)

access_events = Table(
    "access_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "request_id",
        Integer,
        ForeignKey("access_requests.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("kind", String(20), nullable=False),
    Column("actor", String(300), nullable=False),
    _when("at"),
    Column("note", Text, nullable=True),
    Column("detail", JSON, nullable=True),
)
