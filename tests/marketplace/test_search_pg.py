"""Marketplace search on the real PostgreSQL, what the shared search tests cannot see: the
documents stored out of line, the place of the weakest word deciding the order, and the
migration that rebuilds the documents exactly as publishing writes them."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from dataproduct.marketplace.migrations import alembic_config, upgrade_to_head
from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.search import SearchFilters, Viewer, search
from dataproduct.marketplace.store import MarketplaceStore
from tests.marketplace.documents import (  # noqa: F401 (fixtures)
    base_publication_fixture,
    only_datasets,
    postgres_url_fixture,
    store_fixture,
    variant,
    with_dataset,
)

pytestmark = pytest.mark.parametrize("store", ["postgresql"], indirect=True)

DOCUMENTS = "SELECT entry_id, product, dataset, document::text FROM search_documents ORDER BY 1"


def publish(store: MarketplaceStore, document: dict[str, Any], subject: str = "svc") -> None:
    store.publish(parse_publication(document), subject)


def test_documents_are_stored_out_of_line_so_searches_visit_narrow_rows(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, base_publication)
    with store.engine.connect() as connection:
        toast = connection.execute(
            text("SELECT reltoastrelid::regclass::text FROM pg_class "
                 "WHERE oid = 'search_documents'::regclass")
        ).scalar_one()  # fmt: skip
        stored = connection.execute(text(f"SELECT count(DISTINCT chunk_id) FROM {toast}"))
        sizes = connection.execute(
            text("SELECT count(*), max(pg_column_size(toast_pad)) FROM search_documents")
        ).one()
    assert sizes[0] == 3 == stored.scalar_one()  # the product and its two datasets
    assert sizes[1] < 100  # 2 kB of zeros, compressed in the row


def test_the_weakest_word_decides_the_order(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    base = only_datasets(base_publication, "customer_revenue")
    publish(store, variant(base, "both-described", description="Zorblat quux report."))
    named = with_dataset(
        variant(base, "other"),
        "zorblat_data",
        columns=[{"name": "quux_id", "type": "VARCHAR", "description": "An id"}],
    )
    publish(store, named)
    results = search(store, "zorblat quux")
    # both words in a description (level 1) before one in a name, one in a column (level 0)
    assert [(h.product, h.dataset) for h in results.hits] == [
        ("both-described", None),
        ("other", "zorblat_data"),
    ]
    assert [h.score for h in results.hits] == [0.2, 0.05]


def test_the_migration_rebuilds_the_documents_that_publishing_writes(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    hidden = variant(base_publication, "hidden-stock", tags=["inventory"], domain="ops/stock")
    hidden["product"]["visibility"] = {"groups": ["keepers", "auditors"]}
    publish(store, hidden, subject="svc-stock")
    publish(store, variant(base_publication, "open-sales", description="Open to all."))
    with store.engine.connect() as connection:
        written = connection.execute(text(DOCUMENTS)).all()
    try:
        with store.engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0003")
            old = connection.execute(text("SELECT document::text FROM search_documents"))
            assert all(":1A" in document for document in old.scalars())  # weighted again
    finally:
        upgrade_to_head(store.engine)
    with store.engine.connect() as connection:
        assert connection.execute(text(DOCUMENTS)).all() == written
    member = Viewer("someone", frozenset({"auditors"}))
    filters = SearchFilters(area="ops", tag="inventory", classification="pii")
    hits = search(store, "revenue", filters, viewer=member).hits
    assert [(h.product, h.dataset) for h in hits] == [("hidden-stock", "customer_revenue")]
    assert search(store, "revenue", filters, viewer=Viewer("outsider")).total == 0
