"""Full-text search on SQLite (FTS5) and on the real PostgreSQL (tsvector): ranking,
prefixes, filters, pagination and an index that follows every publish."""

from __future__ import annotations

from typing import Any

import pytest

from dataproduct.errors import BadRequestError
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


def publish(store: MarketplaceStore, document: dict[str, Any]) -> None:
    store.publish(parse_publication(document), document["product"]["name"])


def found(
    store: MarketplaceStore, query: str, viewer: Viewer | None = None, **filters: Any
) -> list[tuple[str, str | None]]:
    results = search(store, query, SearchFilters(**filters), limit=100, viewer=viewer)
    return [(h.product, h.dataset) for h in results.hits]


@pytest.fixture
def mesh(store: MarketplaceStore, base_publication: dict[str, Any]) -> MarketplaceStore:
    """Three products in two areas with distinct owners, tags and columns."""
    base = only_datasets(base_publication, "customer_revenue")
    shipments = variant(
        base,
        "logistics-shipments",
        domain="logistics/europe",
        owner_email="li@example.com",
        tags=["logistics"],
        description="Parcels shipped from our warehouses.",
    )
    shipments = with_dataset(
        shipments,
        "parcel_events",
        description="Scans of every parcel.",
        columns=[
            {"name": "parcel_id", "type": "VARCHAR", "description": "Tracking number"},
            {"name": "carrier", "type": "VARCHAR", "description": "Courier company",
             "classification": "internal"},
        ],
        tags=["tracking"],
    )  # fmt: skip
    stock = variant(
        base,
        "warehouse-stock",
        domain="logistics/americas",
        owner_email="mo@example.com",
        tags=["inventory"],
        description="Stock levels per warehouse, refreshed hourly.",
    )
    stock = with_dataset(
        stock,
        "stock_levels",
        description="Units on hand.",
        columns=[{"name": "sku", "type": "VARCHAR", "description": "Product code of the courier"}],
    )
    for document in (base, shipments, stock):
        publish(store, document)
    return store


def test_a_name_hit_ranks_above_description_and_column_hits(mesh: MarketplaceStore) -> None:
    hits = found(mesh, "courier")
    # a column description of both; nothing is named courier
    assert set(hits) == {
        ("logistics-shipments", "parcel_events"),
        ("warehouse-stock", "stock_levels"),
    }
    ranked = found(mesh, "warehouse")
    # product name (warehouse-stock) > product description (logistics-shipments, stock)
    assert ranked[0] == ("warehouse-stock", None)
    assert ("logistics-shipments", None) in ranked
    ranked = found(mesh, "parcel")
    assert ranked[0] == ("logistics-shipments", "parcel_events")  # name
    assert ranked.index(("logistics-shipments", "parcel_events")) < ranked.index(
        ("logistics-shipments", None)
    )
    scores = [h.score for h in search(mesh, "parcel").hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1] > 0


def test_a_column_name_hit_and_a_snippet(mesh: MarketplaceStore) -> None:
    results = search(mesh, "carrier")
    assert [(h.product, h.dataset) for h in results.hits] == [
        ("logistics-shipments", "parcel_events")
    ]
    hit = results.hits[0]
    assert hit.snippet is not None and "[carrier]" in hit.snippet
    assert (hit.title, hit.description, hit.domain) == (
        "parcel_events",
        "Scans of every parcel.",
        "logistics/europe",
    )


def test_partial_words_match_as_prefixes_and_all_words_must_match(
    mesh: MarketplaceStore,
) -> None:
    assert ("warehouse-stock", None) in found(mesh, "wareh")
    assert found(mesh, "parc scan") == [("logistics-shipments", "parcel_events")]
    assert found(mesh, "parcel zebra") == []
    assert found(mesh, "customer_revenue")[0] == ("logistics-shipments", "customer_revenue")
    assert found(mesh, "\"'*) OR 1=1 --") == []  # punctuation is not query syntax


def test_filter_by_business_area(mesh: MarketplaceStore) -> None:
    assert {p for p, _ in found(mesh, "revenue", area="logistics")} == {
        "logistics-shipments",
        "warehouse-stock",
    }
    assert {p for p, _ in found(mesh, "revenue", area="logistics/europe")} == {
        "logistics-shipments"
    }
    assert found(mesh, "revenue", area="logist") == []
    assert {p for p, _ in found(mesh, "revenue", area="sales")} == {"sales-eu"}


def test_filter_by_owner_tag_classification_and_kind(mesh: MarketplaceStore) -> None:
    assert {p for p, _ in found(mesh, "", owner="MO@example.com")} == {"warehouse-stock"}
    assert {p for p, _ in found(mesh, "", owner="ana silva")} == {"sales-eu"}
    assert found(mesh, "", tag="tracking") == [
        ("logistics-shipments", None),
        ("logistics-shipments", "parcel_events"),
    ]
    assert found(mesh, "scans", classification="internal") == [
        ("logistics-shipments", "parcel_events")
    ]
    assert sorted(found(mesh, "revenue", classification="pii")) == [
        ("logistics-shipments", "customer_revenue"),
        ("sales-eu", "customer_revenue"),
        ("warehouse-stock", "customer_revenue"),
    ]
    # the product holds a pii dataset (customer_revenue); parcel_events holds none
    assert found(mesh, "parcel", classification="pii") == [("logistics-shipments", None)]
    assert found(mesh, "", kind="product") == [
        ("logistics-shipments", None),
        ("sales-eu", None),
        ("warehouse-stock", None),
    ]
    # datasets carry their product's tags and name (weakly): the named one comes first
    assert found(mesh, "stock", kind="dataset", tag="inventory") == [
        ("warehouse-stock", "stock_levels"),
        ("warehouse-stock", "customer_revenue"),
    ]


def test_pagination_is_stable_and_totals_count_every_match(mesh: MarketplaceStore) -> None:
    everything = search(mesh, "", limit=100)
    assert everything.total == 8 == len(everything.hits)
    pages = [search(mesh, "", limit=3, offset=offset) for offset in (0, 3, 6)]
    assert [len(p.hits) for p in pages] == [3, 3, 2]
    assert {p.total for p in pages} == {8}
    assert [h for p in pages for h in p.hits] == everything.hits
    ranked = search(mesh, "revenue", limit=100)
    paged = [
        h
        for o in range(0, ranked.total, 2)
        for h in search(mesh, "revenue", limit=2, offset=o).hits
    ]
    assert [(h.product, h.dataset) for h in paged] == [(h.product, h.dataset) for h in ranked.hits]
    assert search(mesh, "revenue", limit=5, offset=100).hits == []
    with pytest.raises(BadRequestError):
        search(mesh, "x", limit=0)
    with pytest.raises(BadRequestError):
        search(mesh, "x", offset=-1)


def test_the_index_follows_each_publish(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, variant(base_publication, "catalogue", description="Kangaroo sightings"))
    assert found(store, "kangaroo") == [("catalogue", None)]
    publish(store, variant(base_publication, "catalogue", description="Wombat sightings"))
    assert found(store, "kangaroo") == []
    assert found(store, "wombat") == [("catalogue", None)]
    assert search(store, "", limit=100).total == 3  # the product and its two datasets


def test_a_restricted_product_and_its_datasets_are_hidden_from_outsiders(
    mesh: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    """Search (ranked and browsing, with filters, and its totals) leaves out a restricted
    product and its datasets for callers outside its groups; members and its publisher
    find them."""
    stock = variant(
        only_datasets(base_publication, "customer_revenue"),
        "warehouse-stock",
        domain="logistics/americas",
        owner_email="mo@example.com",
        tags=["inventory"],
        description="Stock levels per warehouse, refreshed hourly.",
    )
    stock["product"]["visibility"] = {"groups": ["stock-keepers"]}
    publish(mesh, stock)
    outsider = Viewer("bob", frozenset({"logistics"}))
    member = Viewer("mo", frozenset({"stock-keepers", "other"}))
    publisher = Viewer("warehouse-stock")
    assert found(mesh, "warehouse", outsider) == [("logistics-shipments", None)]
    assert found(mesh, "warehouse", Viewer()) == [("logistics-shipments", None)]
    assert found(mesh, "stock", outsider, tag="inventory") == []
    assert found(mesh, "revenue", outsider, area="logistics") == [
        ("logistics-shipments", "customer_revenue")
    ]
    assert found(mesh, "", outsider, kind="product") == [
        ("logistics-shipments", None),
        ("sales-eu", None),
    ]
    assert search(mesh, "", viewer=outsider).total == 5
    assert search(mesh, "revenue", viewer=outsider, limit=1).total == 2
    for viewer in (member, publisher, None):
        assert found(mesh, "warehouse", viewer)[0] == ("warehouse-stock", None)
        assert found(mesh, "revenue", viewer, area="logistics/americas") == [
            ("warehouse-stock", "customer_revenue")
        ]
        assert search(mesh, "", viewer=viewer).total == 7


def test_a_word_ranks_by_where_it_is_found_names_tags_descriptions_then_columns(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    base = only_datasets(base_publication, "customer_revenue")
    columned = with_dataset(
        variant(base, "columned"),
        "plain_data",
        columns=[{"name": "zorblat_code", "type": "VARCHAR", "description": "A code"}],
    )
    for document in (
        variant(base, "zorblat-hub"),
        variant(base, "tagged", tags=["zorblat"]),
        variant(base, "described", description="All about zorblat things."),
        columned,
    ):
        publish(store, document)
    hits = found(store, "zorbl")
    order = [("zorblat-hub", None), ("tagged", None), ("described", None)]
    assert [hit for hit in hits if hit in order] == order
    assert hits.index(("described", None)) < hits.index(("columned", "plain_data"))


def test_filter_values_are_matched_literally(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    """Quotes, backslashes and query syntax in a filter value match only that value."""
    odd = variant(
        only_datasets(base_publication, "customer_revenue"),
        "odd-values",
        tags=["it's", "back\\slash", "a' | 'b", "x:*"],
    )
    odd["product"]["owner"] = {"name": "D'Arcy O\\Brien", "email": "d'arcy@example.com"}
    publish(store, odd)
    expected = found(store, "revenue")
    assert expected == [("odd-values", "customer_revenue")]
    for tag in ("it's", "back\\slash", "a' | 'b", "x:*"):
        assert found(store, "revenue", tag=tag) == expected, tag
    for owner in ("d'arcy o\\brien", "D'ARCY@example.com"):
        assert found(store, "revenue", owner=owner) == expected, owner
    for tag in ("it", "a", "b", "x", "back"):
        assert found(store, "revenue", tag=tag) == [], tag


def test_a_long_word_matches_by_its_first_64_characters(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    long_word = "quasi" + "x" * 95
    publish(store, variant(base_publication, "long-words", description=f"Has {long_word}."))
    for query in ("quasi", long_word[:64], long_word):
        assert found(store, query) == [("long-words", None)], len(query)
    assert found(store, long_word[:63] + "y") == []
