"""The marketplace's tables (SQLAlchemy Core), shared by the store, search and migrations.

The search index has one part per dialect that lives outside this metadata (an FTS5 table
over `search_texts` on SQLite; on PostgreSQL `search_documents`: per entry a `document` of
lexemes stored out of line under a GIN index, see `search_pg`); migrations create it and
`DIALECT_SEARCH_OBJECTS` names it so schema comparisons leave it aside.
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
DOCUMENTS_TABLE = "search_documents"
DIALECT_SEARCH_OBJECTS = (
    FTS_TABLE,
    DOCUMENTS_TABLE,
    "pk_search_documents",
    "fk_search_documents_entry_id_search_entries",
    "ix_search_documents_document",
)


def _when(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False)


def _product(
    *, primary_key: bool = False, nullable: bool = False, index: bool = False
) -> Column[object]:
    """The `product` column of a table that belongs to a product (gone with it)."""
    return Column(
        "product",
        String(128),
        ForeignKey("products.name", ondelete="CASCADE"),
        primary_key=primary_key,
        nullable=nullable,
        index=index,
    )


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
    # The groups allowed to see the product ([]: everyone); `restricted` when there are some.
    Column("visibility_groups", JSON, nullable=False),
    Column("restricted", Boolean, nullable=False, index=True),
    Column("digest", String(64), nullable=False),
    _when("first_seen"),
    _when("last_updated"),
    _when("last_seen"),
    Column("publication", JSON, nullable=False),
)

datasets = Table(
    "datasets",
    metadata,
    _product(primary_key=True),
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
    _product(primary_key=True),
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
    _product(nullable=False),
    Column("digest", String(64), nullable=False),
    Column("subject", String(300), nullable=False),
    _when("received_at"),
    Column("changed", Boolean, nullable=False),
    Index("ix_publications_product_received_at", "product", "received_at"),
)

# One row per product and per dataset: what a hit shows and the values the filters test
# (denormalised so a search reads one narrow table).
search_entries = Table(
    "search_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    _product(nullable=False, index=True),
    Column("dataset", String(128), nullable=True),
    Column("domain", String(300), nullable=False, index=True),
    Column("owner_email", String(320), nullable=False, index=True),
    Column("owner_name", String(200), nullable=False, index=True),
    Column("title", String(300), nullable=False),
    Column("description", Text, nullable=False),
)

# The four weighted texts of each entry, read only to index it and for the snippets of a
# page of hits (the FTS5 table's external content on SQLite).
search_texts = Table(
    "search_texts",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=False),
    Column("names", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("descriptions", Text, nullable=False),
    Column("columns", Text, nullable=False),
    ForeignKeyConstraint(["entry_id"], ["search_entries.id"], ondelete="CASCADE"),
)

# The tags and classifications of each entry, for the filters, and the groups allowed to
# see a restricted product (kind `group`, on the product's own entry).
search_facets = Table(
    "search_facets",
    metadata,
    Column("entry_id", Integer, primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("value", String(200), primary_key=True),
    ForeignKeyConstraint(["entry_id"], ["search_entries.id"], ondelete="CASCADE"),
    Index("ix_search_facets_kind_value", "kind", "value", "entry_id"),
)
