"""The first marketplace schema: products, datasets, versions, history, search index.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _product_fk() -> sa.Column[object]:
    return sa.Column("product", sa.String(128), nullable=False)


def _cascade_to_products(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["product"], ["products.name"], name=f"fk_{table}_product_products", ondelete="CASCADE"
    )


def _create_products() -> None:
    op.create_table(
        "products",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("domain", sa.String(300), nullable=False),
        sa.Column("domain_parts", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("major", sa.Integer(), nullable=False),
        sa.Column("owner_name", sa.String(200), nullable=False),
        sa.Column("owner_email", sa.String(320), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("url", sa.String(200), nullable=False),
        sa.Column("health", sa.String(20), nullable=False),
        sa.Column("publisher_subject", sa.String(300), nullable=False),
        sa.Column("visibility_groups", sa.JSON(), nullable=False),
        sa.Column("restricted", sa.Boolean(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        _when("first_seen"),
        _when("last_updated"),
        _when("last_seen"),
        sa.Column("publication", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_products"),
    )
    for column in ("domain", "owner_email", "status", "restricted"):
        op.create_index(f"ix_products_{column}", "products", [column])


def _create_datasets() -> None:
    op.create_table(
        "datasets",
        _product_fk(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("classifications", sa.JSON(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        _when("updated_at", nullable=True),
        sa.Column("quality_status", sa.String(200), nullable=False),
        sa.Column("sql", sa.Text(), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("product", "name", name="pk_datasets"),
        _cascade_to_products("datasets"),
    )
    op.create_table(
        "dataset_versions",
        _product_fk(),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        _when("updated_at", nullable=True),
        _when("superseded_at"),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("product", "name", "version", name="pk_dataset_versions"),
        _cascade_to_products("dataset_versions"),
    )


def _create_publications() -> None:
    op.create_table(
        "publications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _product_fk(),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        _when("received_at"),
        sa.Column("changed", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_publications"),
        _cascade_to_products("publications"),
    )
    op.create_index(
        "ix_publications_product_received_at", "publications", ["product", "received_at"]
    )


def _create_search_tables() -> None:
    op.create_table(
        "search_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _product_fk(),
        sa.Column("dataset", sa.String(128), nullable=True),
        sa.Column("domain", sa.String(300), nullable=False),
        sa.Column("owner_email", sa.String(320), nullable=False),
        sa.Column("owner_name", sa.String(200), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_search_entries"),
        _cascade_to_products("search_entries"),
    )
    for column in ("product", "domain", "owner_email", "owner_name"):
        op.create_index(f"ix_search_entries_{column}", "search_entries", [column])
    op.create_table(
        "search_texts",
        sa.Column("entry_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("names", sa.Text(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("descriptions", sa.Text(), nullable=False),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name="pk_search_texts"),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["search_entries.id"],
            name="fk_search_texts_entry_id_search_entries",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "search_facets",
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "kind", "value", name="pk_search_facets"),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["search_entries.id"],
            name="fk_search_facets_entry_id_search_entries",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_search_facets_kind_value", "search_facets", ["kind", "value", "entry_id"])


def _create_text_index() -> None:
    """The dialect's full-text index: on SQLite FTS5 over `search_texts` (external content,
    prefix indexes for 2 and 3 characters); on PostgreSQL `search_documents`."""
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE search_fts USING fts5("
            "names, tags, descriptions, columns, content='search_texts', "
            "content_rowid='entry_id', prefix='2 3', tokenize='unicode61 remove_diacritics 2')"
        )
        return
    # One weighted vector per entry, both matched (GIN) and ranked: rows below the toast
    # threshold stay inline whatever the table's options, so a second (ranking) vector would
    # only widen every row a broad query reads.
    op.execute(
        "CREATE TABLE search_documents (entry_id integer NOT NULL, document tsvector NOT NULL, "
        "CONSTRAINT pk_search_documents PRIMARY KEY (entry_id), "
        "CONSTRAINT fk_search_documents_entry_id_search_entries FOREIGN KEY (entry_id) "
        "REFERENCES search_entries (id) ON DELETE CASCADE)"
    )
    op.execute("CREATE INDEX ix_search_documents_document ON search_documents USING gin (document)")


def upgrade() -> None:
    """Create every table and the full-text index."""
    _create_products()
    _create_datasets()
    _create_publications()
    _create_search_tables()
    _create_text_index()


def downgrade() -> None:
    """Drop everything the upgrade created."""
    op.execute(
        "DROP TABLE search_fts"
        if op.get_bind().dialect.name == "sqlite"
        else "DROP TABLE search_documents"
    )
    for table in ("search_facets", "search_texts", "search_entries", "publications"):
        op.drop_table(table)
    for table in ("dataset_versions", "datasets", "products"):
        op.drop_table(table)
