"""The table of discovery URLs the marketplace crawls, on the shared `metadata`.

One row per registered URL (normalised to the product's base URL): how often to crawl it,
who registered it, and what the last crawl found. Revision 0003 creates it.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Float, String, Table, Text

from dataproduct.marketplace.models import metadata

crawl_targets = Table(
    "crawl_targets",
    metadata,
    Column("url", String(500), primary_key=True),
    Column("product", String(128), nullable=True),
    Column("interval_s", Float, nullable=False),
    Column("added_by", String(300), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("last_crawled_at", DateTime(timezone=True), nullable=True),
    Column("last_status", String(20), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("next_due_at", DateTime(timezone=True), nullable=False, index=True),
)
