"""Access requests: a consumer's request for a dataset, its decision, grant and history.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _create_requests() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("product", sa.String(128), nullable=False),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("requester", sa.String(300), nullable=False),
        sa.Column("justification", sa.Text(), nullable=False),
        sa.Column("duration_days", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("grant_state", sa.String(20), nullable=True),
        sa.Column("grant_id", sa.String(200), nullable=True),
        sa.Column("control_url", sa.String(500), nullable=False),
        sa.Column("pending_key", sa.String(600), nullable=True),
        sa.Column("decided_by", sa.String(300), nullable=True),
        _when("decided_at", nullable=True),
        _when("expires_at", nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _when("next_attempt_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_access_requests"),
        sa.UniqueConstraint("pending_key", name="uq_access_requests_pending_key"),
    )
    for column in ("product", "requester", "status", "grant_state"):
        op.create_index(f"ix_access_requests_{column}", "access_requests", [column])


def _create_events() -> None:
    op.create_table(
        "access_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        _when("at"),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_events"),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["access_requests.id"],
            name="fk_access_events_request_id_access_requests",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_access_events_request_id", "access_events", ["request_id"])


def upgrade() -> None:
    """Create the access request and history tables."""
    _create_requests()
    _create_events()


def downgrade() -> None:
    """Drop the access request and history tables."""
    op.drop_table("access_events")
    op.drop_table("access_requests")
