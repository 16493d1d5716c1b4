"""The discovery port: the product document, dataset schemas, and the page for people."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.api import assert_error, edit_descriptor, serve
from tests.conftest import SECRET, TokenFactory

GATEWAY = "https://gateway.example/sales/europe/sales-eu/v1"
XSS = '<script>alert("owned")</script>'


def _count(runtime: ProductRuntime, table: str) -> int:
    with runtime.storage.reader() as cursor:
        return int(cursor.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def test_product_document_has_identity_owner_and_ports(client: TestClient) -> None:
    """Name, domain, version, owner and the four ports with their URLs and auth."""
    product = client.get("/discovery").json()
    assert product["name"] == "sales-eu"
    assert product["domain"] == "sales/europe"
    assert (product["version"], product["major"]) == ("1.0.0", 1)
    assert product["owner"] == {"name": "Ana Silva", "email": "ana.silva@example.com"}
    assert product["tags"] == ["sales", "eu", "example"]
    base = "http://127.0.0.1:8080"
    assert product["url"] == base
    assert {name: port["url"] for name, port in product["ports"].items()} == {
        "discovery": f"{base}/discovery",
        "output": f"{base}/output",
        "input": f"{base}/input",
        "control": f"{base}/control",
    }
    assert product["ports"]["discovery"]["auth"] == "none"
    assert product["ports"]["output"]["scope"] == "output:read"
    assert product["sources"]["returns"]["type"] == "push"


def test_marketplace_settings_are_shown_to_administrators_only(
    client: TestClient, token: TokenFactory
) -> None:
    """Who may see the product in the marketplace is for the marketplace, not for everyone."""
    admin = client.get("/discovery", headers=token("control:admin")).json()
    assert admin["visibility"] == {"groups": []}
    assert admin["access_approvers"] == []
    anonymous = client.get("/discovery").json()
    assert "visibility" not in anonymous and "access_approvers" not in anonymous


def test_sources_show_their_freshness(client: TestClient, runtime: ProductRuntime) -> None:
    """Each source says when it last loaded and how many rows; one never loaded says so."""
    sources = client.get("/discovery").json()["sources"]
    with runtime.storage.reader() as cursor:
        orders = cursor.execute('SELECT count(*) FROM input."orders"').fetchall()[0][0]
    fresh = sources["orders"]["freshness"]
    assert (fresh["rows"], fresh["last_status"]) == (orders, "succeeded")
    assert fresh["loaded_at"] is not None
    assert sources["returns"]["freshness"] is None
    assert sources["orders"]["path"] == "data/orders.csv"


def test_product_document_summarises_datasets(client: TestClient, runtime: ProductRuntime) -> None:
    """Each published dataset with its row count, freshness and links."""
    datasets = {d["name"]: d for d in client.get("/discovery").json()["datasets"]}
    assert sorted(datasets) == ["customer_revenue", "daily_sales"]
    daily = datasets["daily_sales"]
    assert daily["row_count"] == _count(runtime, "output.daily_sales")
    assert daily["description"] == "Orders and revenue per country and day."
    assert daily["documented"] is True
    assert daily["links"]["rows"] == "http://127.0.0.1:8080/output/datasets/daily_sales"


def test_public_url_is_used_in_every_link(
    example_product: Path, settings: DataproductSettings
) -> None:
    """Behind a gateway, every link the product gives out uses its public URL."""
    public = DataproductSettings(
        data_dir=settings.data_dir, jwt_secret=SECRET, public_url=GATEWAY + "/"
    )
    with serve(example_product, public) as gateway_client:
        product = gateway_client.get("/discovery").json()
        details = gateway_client.get("/discovery/datasets/daily_sales").json()
    assert product["url"] == GATEWAY
    assert product["ports"]["output"]["url"] == f"{GATEWAY}/output"
    assert product["ports"]["control"]["url"] == f"{GATEWAY}/control"
    for dataset in product["datasets"]:
        assert dataset["links"]["details"].startswith(f"{GATEWAY}/discovery/datasets/")
    assert details["links"]["rows"] == f"{GATEWAY}/output/datasets/daily_sales"


def test_public_url_comes_from_the_environment(
    example_product: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATAPRODUCT_PUBLIC_URL sets the base of every link."""
    monkeypatch.setenv("DATAPRODUCT_PUBLIC_URL", GATEWAY)
    env_settings = DataproductSettings(data_dir=tmp_path / "env-data", jwt_secret=SECRET)
    with serve(example_product, env_settings) as gateway_client:
        product = gateway_client.get("/discovery").json()
    assert product["ports"]["discovery"]["url"] == f"{GATEWAY}/discovery"


def test_dataset_document_has_schema_with_documentation(
    client: TestClient, token: TokenFactory
) -> None:
    """Column types from the table, documentation from the descriptor."""
    analyst = token("output:read", groups=["sales-analysts"])
    dataset = client.get("/discovery/datasets/customer_revenue", headers=analyst).json()
    columns = {c["name"]: c for c in dataset["columns"]}
    assert list(columns) == ["customer_id", "name", "country", "orders", "revenue"]
    assert columns["customer_id"]["type"] == "VARCHAR"
    assert columns["orders"]["type"] == "BIGINT"
    assert columns["revenue"]["type"] == "DECIMAL(38,2)"
    assert columns["customer_id"]["required"] is True
    assert columns["name"]["required"] is False
    assert columns["name"]["classification"] == "pii"
    assert columns["revenue"]["classification"] == "confidential"
    assert columns["revenue"]["description"] == "Sum of order amounts in EUR"
    assert columns["country"]["description"] == "ISO 3166 country code"
    assert dataset["quality"] == [{"not_null": "customer_id"}, {"unique": "customer_id"}]


def test_dataset_document_has_size_freshness_and_sql(
    client: TestClient, runtime: ProductRuntime
) -> None:
    """Row count equal to the table's, a recent timestamp, the SQL and the run that made it."""
    dataset = client.get("/discovery/datasets/daily_sales").json()
    assert dataset["row_count"] == _count(runtime, "output.daily_sales") > 0
    updated = datetime.fromisoformat(dataset["updated_at"])
    assert updated.tzinfo is not None
    assert timedelta(0) <= datetime.now(UTC) - updated < timedelta(minutes=5)
    assert "FROM staging.orders_clean" in dataset["sql"]
    assert "GROUP BY" in dataset["sql"].upper()
    assert dataset["pipeline_version"] == 1
    assert dataset["run_id"] == runtime.runs.history(1)[0]["id"]
    assert dataset["formats"] == ["json", "ndjson", "csv", "parquet", "arrow"]


def test_datasets_list_matches_the_details(client: TestClient) -> None:
    """`/discovery/datasets` holds the same documents as each `/discovery/datasets/{name}`."""
    listed = client.get("/discovery/datasets").json()["datasets"]
    assert [d["name"] for d in listed] == ["customer_revenue", "daily_sales"]
    for document in listed:
        single = client.get(f"/discovery/datasets/{document['name']}").json()
        assert single == document


def test_unknown_dataset_is_404(client: TestClient) -> None:
    """Details of a dataset that is not published: 404 in the error shape."""
    assert_error(client.get("/discovery/datasets/nope"), 404, "not_found")


def test_browsers_get_a_page(client: TestClient, token: TokenFactory) -> None:
    """`Accept: text/html` gives a readable page naming the product and its datasets."""
    analyst = token("output:read", groups=["sales-analysts"])
    response = client.get("/discovery", headers={"Accept": "text/html,*/*;q=0.8", **analyst})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<h1>sales-eu</h1>" in page
    assert 'id="daily_sales"' in page
    assert "Ana Silva" in page
    assert "<script" not in page.lower()
    assert "quality: <strong>pass</strong>" in page  # the example's rules pass
    assert "version 1 ·" in page


def test_json_wins_over_html_with_format_json(client: TestClient) -> None:
    """`?format=json` forces the machine-readable document even for a browser."""
    response = client.get("/discovery?format=json", headers={"Accept": "text/html"})
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["name"] == "sales-eu"


def _inject(content: dict[str, Any]) -> None:
    content["description"] = f"Product {XSS}"
    content["tags"] = ["sales", "<b>bold</b>"]
    content["owner"]["name"] = "Eve <img src=x onerror=alert(1)>"
    daily = content["datasets"]["daily_sales"]
    daily["description"] = f"Dataset {XSS}"
    daily["columns"]["revenue"]["description"] = f"Column {XSS}"
    content["pipeline"][0]["sql"] += "  AND status <> '</pre><script>alert(2)</script>'\n"


def test_page_escapes_everything_it_shows(
    example_product: Path, settings: DataproductSettings
) -> None:
    """Descriptions, tags, owner and SQL with markup are shown escaped, never run."""
    edit_descriptor(example_product, _inject)
    with serve(example_product, settings) as xss_client:
        page = xss_client.get("/discovery", headers={"Accept": "text/html"}).text
        staging = xss_client.get("/discovery").json()
    assert "<script" not in page.lower()
    assert "<img" not in page
    assert "<b>bold</b>" not in page
    assert html.escape(f"Product {XSS}") in page
    assert html.escape(f"Dataset {XSS}") in page
    assert html.escape(f"Column {XSS}") in page
    assert html.escape("<b>bold</b>") in page
    assert staging["description"] == f"Product {XSS}"
