"""The marketplace store on SQLite and on the real PostgreSQL: migrations, publish,
ownership, validation, the business-area tree, staleness and history."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select, text

from dataproduct.errors import NotFoundError, PayloadTooLargeError, PermissionDeniedError
from dataproduct.errors import ValidationError as PublicationError
from dataproduct.marketplace.migrations import (
    alembic_config,
    schema_differences,
    upgrade_to_head,
)
from dataproduct.marketplace.models import dataset_versions, datasets, products, publications
from dataproduct.marketplace.publication import (
    MAX_PUBLICATION_BYTES,
    parse_publication,
    publication_digest,
)
from dataproduct.marketplace.search import Viewer
from dataproduct.marketplace.store import MarketplaceStore
from tests.marketplace.documents import (  # noqa: F401 (fixtures)
    PG_ADMIN_URL,
    base_publication_fixture,
    only_datasets,
    postgres_url_fixture,
    store_fixture,
    variant,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def publish(
    store: MarketplaceStore, document: dict[str, Any], subject: str = "svc-sales", **kw: Any
) -> Any:
    return store.publish(parse_publication(document), subject, **kw)


def count(store: MarketplaceStore, table: Any) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty SQLite file or an empty PostgreSQL schema (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips when PostgreSQL is absent
    schema = f"mkt_empty_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_upgrade_of_an_empty_database_matches_the_models(empty_url: str) -> None:
    upgrade_to_head(empty_url)
    upgrade_to_head(empty_url)  # a second upgrade is a no-op
    engine = create_engine(empty_url)
    try:
        with engine.begin() as connection:
            assert schema_differences(connection) == []
            version = connection.execute(text("SELECT version_num FROM alembic_version"))
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert version.scalar_one() == head
            # the comparison does see a difference when there is one
            connection.execute(text("DROP INDEX ix_products_status"))
            differences = schema_differences(connection)
            assert [d[0] for d in differences] == ["add_index"]
            assert differences[0][1].name == "ix_products_status"
    finally:
        engine.dispose()


def test_publish_stores_the_product_and_its_datasets(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    result = publish(store, base_publication, now=T0)
    assert (result.product, result.changed, result.created) == ("sales-eu", True, True)
    assert result.version == "1.0.0" and len(result.digest) == 64
    product = store.product("sales-eu")
    assert product["domain"] == "sales/europe" and product["domain_parts"] == ["sales", "europe"]
    assert product["owner"] == {"name": "Ana Silva", "email": "ana.silva@example.com"}
    assert product["tags"] == ["sales", "eu", "example"]
    assert (product["status"], product["health"]) == ("active", "ready")
    assert product["first_seen"] == product["last_seen"] == product["last_updated"] == T0
    assert product["publication"]["lineage"] == base_publication["lineage"]
    summaries = {d["name"]: d for d in product["datasets"]}
    assert set(summaries) == {"customer_revenue", "daily_sales"}
    assert summaries["customer_revenue"]["classifications"] == ["confidential", "pii"]
    assert summaries["customer_revenue"]["row_count"] == 300
    dataset = store.dataset("sales-eu", "customer_revenue")
    assert dataset["current"] is True and dataset["version"] == 1
    assert [c["name"] for c in dataset["columns"]] == [
        "customer_id", "name", "country", "orders", "revenue"
    ]  # fmt: skip
    assert dataset["columns"][1]["classification"] == "pii"
    assert dataset["quality_status"] == "pass"
    assert "FROM staging.orders_clean" in dataset["sql"]
    assert dataset["updated_at"].tzinfo is not None
    with pytest.raises(NotFoundError):
        store.dataset("sales-eu", "nope")
    with pytest.raises(NotFoundError):
        store.product("nope")


def test_republishing_unchanged_content_only_refreshes_last_seen(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    first = publish(store, base_publication, now=T0)
    again = copy.deepcopy(base_publication)
    again["published_at"] = (T0 + timedelta(hours=1)).isoformat()
    for source in again["product"]["sources"].values():
        if source.get("freshness"):
            source["freshness"]["last_attempt_at"] = (T0 + timedelta(hours=1)).isoformat()
    second = publish(store, again, now=T0 + timedelta(hours=1))
    assert (second.changed, second.created, second.digest) == (False, False, first.digest)
    product = store.product("sales-eu")
    assert product["last_updated"] == T0
    assert product["last_seen"] == T0 + timedelta(hours=1)
    assert [h["changed"] for h in store.history("sales-eu")] == [False, True]
    assert count(store, datasets) == 2 and count(store, dataset_versions) == 0


def test_a_changed_publication_keeps_the_older_dataset_version(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, base_publication, now=T0)
    changed = copy.deepcopy(base_publication)
    changed["product"]["version"] = "2.0.0"
    revenue = changed["datasets"]["customer_revenue"]
    revenue["version"] = 2
    revenue["columns"] = [c for c in revenue["columns"] if c["name"] != "name"]
    result = publish(store, changed, now=T0 + timedelta(days=1))
    assert (result.changed, result.created, result.version) == (True, False, "2.0.0")
    assert result.archived_versions == (("customer_revenue", 1),)
    current = store.dataset("sales-eu", "customer_revenue")
    assert current["version"] == 2 and len(current["columns"]) == 4
    assert [(v["version"], v["current"]) for v in current["versions"]] == [(2, True), (1, False)]
    older = store.dataset("sales-eu", "customer_revenue", version=1)
    assert older["current"] is False and len(older["columns"]) == 5
    with pytest.raises(NotFoundError, match="version 7"):
        store.dataset("sales-eu", "customer_revenue", version=7)
    product = store.product("sales-eu")
    assert product["version"] == "2.0.0" and product["last_updated"] == T0 + timedelta(days=1)
    assert product["first_seen"] == T0
    # a dataset that disappears is kept as an older version too
    publish(store, only_datasets(changed, "customer_revenue"), now=T0 + timedelta(days=2))
    assert store.dataset("sales-eu", "daily_sales")["current"] is False
    assert count(store, dataset_versions) == 2


def test_another_subject_cannot_overwrite_a_product(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, base_publication, subject="svc-sales", now=T0)
    forged = copy.deepcopy(base_publication)
    forged["product"]["description"] = "taken over"
    with pytest.raises(PermissionDeniedError) as raised:
        publish(store, forged, subject="svc-intruder", now=T0 + timedelta(hours=1))
    assert raised.value.where == "product.name"
    assert raised.value.status == 403
    product = store.product("sales-eu")
    assert product["description"].startswith("Orders from EU shops")
    assert product["last_seen"] == T0
    assert [h["subject"] for h in store.history("sales-eu")] == ["svc-sales"]
    assert count(store, publications) == 1


def test_an_invalid_publication_is_rejected_with_its_path(
    base_publication: dict[str, Any],
) -> None:
    bad = copy.deepcopy(base_publication)
    bad["datasets"]["customer_revenue"]["columns"][2]["required"] = "yes"
    with pytest.raises(PublicationError) as raised:
        parse_publication(bad)
    assert raised.value.where == "datasets.customer_revenue.columns.2.required"
    assert raised.value.status == 422
    assert "valid boolean" in raised.value.message
    missing = copy.deepcopy(base_publication)
    del missing["product"]["owner"]["email"]
    missing["product"]["domain"] = "Sales//Europe"
    with pytest.raises(PublicationError) as raised:
        parse_publication(missing)
    assert [e["where"] for e in raised.value.details["errors"]] == [
        "product.domain",
        "product.owner.email",
    ]
    renamed = copy.deepcopy(base_publication)
    renamed["datasets"]["daily_sales"]["name"] = "other"
    with pytest.raises(PublicationError) as raised:
        parse_publication(renamed)
    assert raised.value.where == "datasets.daily_sales"
    with pytest.raises(PublicationError) as raised:
        parse_publication(b"{not json")
    assert raised.value.where == "publication"
    with pytest.raises(PayloadTooLargeError):
        parse_publication(b" " * (MAX_PUBLICATION_BYTES + 1))


def test_unknown_fields_are_kept_and_the_digest_ignores_volatile_ones(
    base_publication: dict[str, Any],
) -> None:
    extended = copy.deepcopy(base_publication)
    extended["product"]["brand_new_field"] = {"x": 1}
    parsed = parse_publication(json.dumps(extended))
    assert parsed.model_dump()["product"]["brand_new_field"] == {"x": 1}
    plain = publication_digest(parse_publication(base_publication))
    later = copy.deepcopy(base_publication)
    later["published_at"] = "2030-01-01T00:00:00+00:00"
    later["product"]["sources"]["orders"]["freshness"] = {"loaded_at": "2030-01-01T00:00:00Z"}
    assert publication_digest(parse_publication(later)) == plain
    assert publication_digest(parsed) != plain


def test_the_business_area_tree_counts_products(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    for name, domain in [
        ("sales-eu", "sales/europe"),
        ("sales-de", "sales/europe/germany"),
        ("sales-us", "sales/americas"),
        ("hr-core", "hr"),
    ]:
        publish(store, variant(base_publication, name, domain=domain), subject=name)
    tree = store.business_areas()
    assert [(n["path"], n["products"]) for n in tree] == [("hr", 1), ("sales", 3)]
    sales = tree[1]
    assert [(n["name"], n["products"]) for n in sales["children"]] == [
        ("americas", 1),
        ("europe", 2),
    ]
    europe = sales["children"][1]
    assert europe["children"] == [
        {"name": "germany", "path": "sales/europe/germany", "products": 1, "children": []}
    ]
    assert [p["name"] for p in store.products(area="sales/europe")] == ["sales-de", "sales-eu"]
    assert [p["name"] for p in store.products(area="sales/eu")] == []


def test_products_are_filtered_by_owner_tag_and_status(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, variant(base_publication, "p-a", owner_email="bo@x.org", tags=["finance"]))
    publish(store, variant(base_publication, "p-b", tags=["hr"]), now=T0)
    assert [p["name"] for p in store.products(owner="BO@x.org")] == ["p-a"]
    assert [p["name"] for p in store.products(owner="ana silva")] == ["p-b"]
    assert [p["name"] for p in store.products(tag="finance")] == ["p-a"]
    # a product has the tags of its datasets too
    assert [p["name"] for p in store.products(tag="public")] == ["p-a", "p-b"]
    assert [p["name"] for p in store.products(order="recent")] == ["p-a", "p-b"]
    assert [p["name"] for p in store.products(limit=1, offset=1)] == ["p-b"]
    store.mark_stale(timedelta(days=1))
    assert [p["name"] for p in store.products(status="stale")] == ["p-b"]


def test_products_not_seen_for_a_while_become_stale_then_unreachable(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, variant(base_publication, "old"), subject="a", now=T0)
    publish(store, variant(base_publication, "older"), subject="b", now=T0 - timedelta(days=10))
    publish(store, variant(base_publication, "fresh"), subject="c", now=T0 + timedelta(days=2))
    now = T0 + timedelta(days=2, hours=1)
    changed = store.mark_stale(timedelta(days=1), timedelta(days=7), now=now)
    assert changed == {"stale": 1, "unreachable": 1}
    statuses = {p["name"]: p["status"] for p in store.products()}
    assert statuses == {"old": "stale", "older": "unreachable", "fresh": "active"}
    assert store.mark_stale(timedelta(days=1), timedelta(days=7), now=now) == {
        "stale": 0,
        "unreachable": 0,
    }
    publish(store, variant(base_publication, "old"), subject="a", now=now)  # back again
    assert store.product("old")["status"] == "active"


def test_history_lists_publications_newest_first(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    publish(store, base_publication, now=T0)
    publish(store, base_publication, now=T0 + timedelta(minutes=1))
    changed = variant(base_publication, "sales-eu", description="new words")
    result = publish(store, changed, now=T0 + timedelta(minutes=2))
    history = store.history("sales-eu")
    assert [(h["received_at"], h["changed"]) for h in history] == [
        (T0 + timedelta(minutes=2), True),
        (T0 + timedelta(minutes=1), False),
        (T0, True),
    ]
    assert history[0]["digest"] == result.digest != history[2]["digest"]
    assert count(store, products) == 1
    with pytest.raises(NotFoundError):
        store.history("nope")


def names(listed: list[dict[str, Any]]) -> list[str]:
    return [p["name"] for p in listed]


def test_a_restricted_product_is_hidden_from_outsiders(
    store: MarketplaceStore, base_publication: dict[str, Any]
) -> None:
    """Lists, the area tree and direct reads leave a restricted product out for a caller
    outside its groups (404 worded as for an unknown name); a member, its publisher and
    internal callers see it; opening it again shows it to everyone."""
    restricted = variant(base_publication, "hr-salaries", domain="hr/payroll")
    restricted["product"]["visibility"] = {"groups": ["hr-analysts", "auditors"]}
    publish(store, restricted, subject="svc-hr")
    publish(store, variant(base_publication, "sales-eu"), subject="svc-sales")
    outsiders = [Viewer("bob", frozenset({"sales-analysts", "HR-analysts"})), Viewer()]
    insiders = [Viewer("carol", frozenset({"auditors"})), Viewer("svc-hr"), None]
    with pytest.raises(NotFoundError) as unknown_product:
        store.product("nope")
    unknown_datasets = {}
    for version in (None, 1):
        with pytest.raises(NotFoundError) as unknown:
            store.dataset("nope", "customer_revenue", version)
        unknown_datasets[version] = unknown.value.message
    for viewer in outsiders:
        assert names(store.products(viewer=viewer)) == ["sales-eu"]
        assert names(store.products(area="hr", viewer=viewer)) == []
        assert names(store.products(tag="sales", viewer=viewer)) == ["sales-eu"]
        assert [a["path"] for a in store.business_areas(viewer=viewer)] == ["sales"]
        with pytest.raises(NotFoundError) as raised:
            store.product("hr-salaries", viewer=viewer)
        assert raised.value.message == unknown_product.value.message.replace("nope", "hr-salaries")
        for version in (None, 1):
            with pytest.raises(NotFoundError) as raised:
                store.dataset("hr-salaries", "customer_revenue", version, viewer=viewer)
            assert raised.value.message == unknown_datasets[version].replace("nope", "hr-salaries")
    for viewer in insiders:
        assert names(store.products(viewer=viewer)) == ["hr-salaries", "sales-eu"]
        tree = store.business_areas(viewer=viewer)
        assert [(a["path"], a["products"]) for a in tree] == [("hr", 1), ("sales", 1)]
        product = store.product("hr-salaries", viewer=viewer)
        assert product["visibility"] == {"groups": ["auditors", "hr-analysts"]}
        dataset = store.dataset("hr-salaries", "customer_revenue", viewer=viewer)
        assert (dataset["product"], dataset["version"]) == ("hr-salaries", 1)
    assert store.product("sales-eu", viewer=outsiders[0])["visibility"] == {"groups": []}
    opened = copy.deepcopy(restricted)
    opened["product"]["visibility"] = {"groups": []}
    publish(store, opened, subject="svc-hr")
    assert names(store.products(viewer=outsiders[1])) == ["hr-salaries", "sales-eu"]
    assert store.product("hr-salaries", viewer=outsiders[0])["name"] == "hr-salaries"


def test_visibility_is_validated_with_its_path(base_publication: dict[str, Any]) -> None:
    bad = copy.deepcopy(base_publication)
    bad["product"]["visibility"] = {"groups": ["ok", ""]}
    with pytest.raises(PublicationError) as raised:
        parse_publication(bad)
    assert raised.value.where == "product.visibility.groups.1"
    bad["product"]["visibility"] = {"groups": "hr"}
    with pytest.raises(PublicationError) as raised:
        parse_publication(bad)
    assert raised.value.where == "product.visibility.groups"
