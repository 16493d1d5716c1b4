"""Crawl targets: discovery URLs of products that cannot push, crawled on a schedule.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the crawl targets table."""
    op.create_table(
        "crawl_targets",
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("product", sa.String(128), nullable=True),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("added_by", sa.String(300), nullable=False),
        _when("added_at"),
        _when("last_crawled_at", nullable=True),
        sa.Column("last_status", sa.String(20), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _when("next_due_at"),
        sa.PrimaryKeyConstraint("url", name="pk_crawl_targets"),
    )
    op.create_index("ix_crawl_targets_next_due_at", "crawl_targets", ["next_due_at"])


def downgrade() -> None:
    """Drop the crawl targets table."""
    op.drop_index("ix_crawl_targets_next_due_at", table_name="crawl_targets")
    op.drop_table("crawl_targets")
