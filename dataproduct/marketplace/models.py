"""The marketplace's tables (SQLAlchemy Core), shared by the store, search and migrations.

The search index has one part per dialect that lives outside this metadata (an FTS5 table
on SQLite, a weighted `tsvector` column with a GIN index on PostgreSQL); migrations create
it and `DIALECT_SEARCH_OBJECTS` names it so schema comparisons leave it aside.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# Created by the migrations per dialect; not part of `metadata`.
FTS_TABLE = "search_fts"
TSVECTOR_COLUMN = "document"
TSVECTOR_INDEX = "ix_search_entries_document"
DIALECT_SEARCH_OBJECTS = (FTS_TABLE, TSVECTOR_COLUMN, TSVECTOR_INDEX)


def _when(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False)


products = Table(
    "products",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("domain", String(300), nullable=False, index=True),
    Column("domain_parts", JSON, nullable=False),
    Column("version", String(200), nullable=False),
    Column("major", Integer, nullable=False),
    Column("owner_name", String(200), nullable=False),
    Column("owner_email", String(320), nullable=False, index=True),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("status", String(20), nullable=False, index=True),
    Column("url", String(200), nullable=False),
    Column("health", String(20), nullable=False),
    Column("publisher_subject", String(300), nullable=False),
    Column("digest", String(64), nullable=False),
    _when("first_seen"),
    _when("last_updated"),
    _when("last_seen"),
    Column("publication", JSON, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    Column(
        "product",
        String(128),
        ForeignKey("products.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("description", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("columns", JSON, nullable=False),
    Column("classifications", JSON, nullable=False),
    Column("row_count", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("quality_status", String(200), nullable=False),
    Column("sql", Text, nullable=True),
    Column("document", JSON, nullable=False),
)

dataset_versions = Table(
    "dataset_versions",
    metadata,
    Column(
        "product",
        String(128),
        ForeignKey("products.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("columns", JSON, nullable=False),
    Column("row_count", BigInteger, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    _when("superseded_at"),
    Column("document", JSON, nullable=False),
)

publications = Table(
    "publications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "product",
        String(128),
        ForeignKey("products.name", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("digest", String(64), nullable=False),
    Column("subject", String(300), nullable=False),
    _when("received_at"),
    Column("changed", Boolean, nullable=False),
    Index("ix_publications_product_received_at", "product", "received_at"),
)

# One row per product and per dataset: the text the full-text index covers and the
# values the filters test (denormalised so a search reads one table).
search_entries = Table(
    "search_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "product",
        String(128),
        ForeignKey("products.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("dataset", String(128), nullable=True),
    Column("domain", String(300), nullable=False, index=True),
    Column("owner_email", String(320), nullable=False, index=True),
    Column("owner_name", String(200), nullable=False),
    Column("title", String(300), nullable=False),
    Column("description", Text, nullable=False),
    Column("names", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("descriptions", Text, nullable=False),
    Column("columns", Text, nullable=False),
)

# The tags and classifications of each entry, for the filters.
search_facets = Table(
    "search_facets",
    metadata,
    Column("entry_id", Integer, primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("value", String(200), primary_key=True),
    ForeignKeyConstraint(["entry_id"], ["search_entries.id"], ondelete="CASCADE"),
    Index("ix_search_facets_kind_value", "kind", "value", "entry_id"),
)
