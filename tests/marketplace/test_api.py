"""The marketplace's JSON API, served for real: a product publishes with its own
credential, people find and read it; forged, foreign and malformed publications are
refused and store nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.marketplace.app import create_marketplace_app
from tests.conftest import SECRET, TokenFactory
from tests.marketplace.documents import example_publication
from tests.server.conftest import serve_in_thread

PUBLISH = "marketplace:publish"


@pytest.fixture
def marketplace(tmp_path: Path, settings: DataproductSettings) -> Iterator[str]:
    """The marketplace app over a SQLite store, served on a free loopback port."""
    store = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
    app = create_marketplace_app(store, MarketplaceSettings(), settings)
    with serve_in_thread(app) as url:
        yield url
    store.close()


@pytest.fixture(scope="module")
def publication(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example product's real publication."""
    return example_publication(tmp_path_factory.mktemp("example"))


def _publisher(subject: str = "product:sales-eu") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, subject, [PUBLISH])}"}


def until(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_running_product_publishes_itself_and_is_found(
    marketplace: str,
    example_product: Path,
    settings: DataproductSettings,
    token: TokenFactory,
) -> None:
    """The example product, pointed at the marketplace with its credential, appears with
    its datasets; search finds a dataset by a column's words."""
    product_settings = settings.model_copy(
        update={
            "marketplace_url": marketplace,
            "marketplace_token": issue_token(SECRET, "product:sales-eu", [PUBLISH]),
        }
    )
    runtime = ProductRuntime.open(example_product, product_settings)
    reader = token()
    try:
        runtime.startup()
        until(lambda: httpx.get(f"{marketplace}/api/v1/products/sales-eu", headers=reader)
              .status_code == 200)  # fmt: skip
    finally:
        runtime.close()
    product = httpx.get(f"{marketplace}/api/v1/products/sales-eu", headers=reader).json()
    assert (product["domain"], product["owner"]["email"]) == (
        "sales/europe",
        "ana.silva@example.com",
    )
    assert {d["name"] for d in product["datasets"]} >= {"customer_revenue", "daily_sales"}
    dataset = httpx.get(
        f"{marketplace}/api/v1/products/sales-eu/datasets/customer_revenue", headers=reader
    ).json()
    assert {c["name"] for c in dataset["columns"]} >= {"customer_id", "revenue"}
    found = httpx.get(f"{marketplace}/api/v1/search", params={"q": "revenue"}, headers=reader)
    hits = [(h["product"], h["dataset"]) for h in found.json()["hits"]]
    assert ("sales-eu", "customer_revenue") in hits
    areas = httpx.get(f"{marketplace}/api/v1/areas", headers=reader).json()["areas"]
    assert areas[0]["name"] == "sales"


def test_publishing_again_unchanged_changes_nothing(
    marketplace: str, publication: dict[str, Any]
) -> None:
    """The same content twice: created, then `changed: false`."""
    url = f"{marketplace}/api/v1/products/sales-eu"
    first = httpx.put(url, json=publication, headers=_publisher())
    assert first.status_code == 200, first.text
    assert first.json()["created"] is True
    again = httpx.put(url, json=publication, headers=_publisher())
    assert (again.json()["created"], again.json()["changed"]) == (False, False)


def test_another_product_cannot_overwrite_an_entry(
    marketplace: str, publication: dict[str, Any], token: TokenFactory
) -> None:
    """Once `product:sales-eu` owns the name, another credential gets 403 and the entry
    stays as it was."""
    url = f"{marketplace}/api/v1/products/sales-eu"
    assert httpx.put(url, json=publication, headers=_publisher()).status_code == 200
    forged = json.loads(json.dumps(publication))
    forged["product"]["description"] = "taken over"
    response = httpx.put(url, json=forged, headers=_publisher("product:mallory"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    stored = httpx.get(url, headers=token()).json()
    assert stored["description"] != "taken over"


FORGED = issue_token("another-secret-0123456789abcdefghij", "product:sales-eu", [PUBLISH])
WRONG_SCOPE = issue_token(SECRET, "product:sales-eu", ["output:read"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-token"}, 401),
        ({"Authorization": f"Bearer {FORGED}"}, 401),
        ({"Authorization": f"Bearer {WRONG_SCOPE}"}, 403),
    ],
    ids=["no credential", "garbage", "forged signature", "without the publish scope"],
)
def test_publishing_needs_a_valid_publishing_credential(
    marketplace: str,
    publication: dict[str, Any],
    headers: dict[str, str],
    status: int,
    token: TokenFactory,
) -> None:
    """Refused with the error shape, and nothing stored."""
    response = httpx.put(
        f"{marketplace}/api/v1/products/sales-eu", json=publication, headers=headers
    )
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    missing = httpx.get(f"{marketplace}/api/v1/products/sales-eu", headers=token())
    assert missing.status_code == 404


def test_malformed_oversized_and_mismatched_publications_are_refused(
    marketplace: str, publication: dict[str, Any], token: TokenFactory
) -> None:
    """A bad field gets 422 with its path; a body over the limit 413; a publication of
    another name 400; none of them stores anything."""
    url = f"{marketplace}/api/v1/products/sales-eu"
    bad = json.loads(json.dumps(publication))
    bad["product"]["owner"] = "nobody"
    response = httpx.put(url, json=bad, headers=_publisher())
    assert response.status_code == 422
    assert response.json()["error"]["where"].startswith("product.owner")
    huge = httpx.put(
        url, content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
        headers={**_publisher(), "content-type": "application/json"},
    )  # fmt: skip
    assert huge.status_code == 413
    other = httpx.put(f"{marketplace}/api/v1/products/sales-us", json=publication,
                      headers=_publisher())  # fmt: skip
    assert other.status_code == 400
    assert httpx.get(url, headers=token()).status_code == 404


def test_reading_needs_a_credential_and_unknown_entries_are_404(
    marketplace: str, publication: dict[str, Any], token: TokenFactory
) -> None:
    """Anonymous reads get 401; an unknown product or dataset 404."""
    httpx.put(f"{marketplace}/api/v1/products/sales-eu", json=publication, headers=_publisher())
    assert httpx.get(f"{marketplace}/api/v1/products").status_code == 401
    listed = httpx.get(f"{marketplace}/api/v1/products", headers=token()).json()
    assert [p["name"] for p in listed["products"]] == ["sales-eu"]
    assert httpx.get(f"{marketplace}/api/v1/products/nope", headers=token()).status_code == 404
    unknown = httpx.get(f"{marketplace}/api/v1/products/sales-eu/datasets/nope", headers=token())
    assert unknown.status_code == 404


def test_exports_are_served(
    marketplace: str, publication: dict[str, Any], token: TokenFactory
) -> None:
    """ODPS for the product, ODCS for a dataset, DCAT for the product and the catalog."""
    httpx.put(f"{marketplace}/api/v1/products/sales-eu", json=publication, headers=_publisher())
    base = f"{marketplace}/api/v1"
    odps = httpx.get(f"{base}/products/sales-eu/odps", headers=token()).json()
    assert (odps["kind"], odps["name"]) == ("DataProduct", "sales-eu")
    odcs = httpx.get(f"{base}/products/sales-eu/datasets/daily_sales/odcs", headers=token())
    assert odcs.json()["kind"] == "DataContract"
    missing = httpx.get(f"{base}/products/sales-eu/datasets/nope/odcs", headers=token())
    assert missing.status_code == 404
    catalog = httpx.get(f"{base}/dcat", headers=token()).json()
    assert catalog["@type"] == "dcat:Catalog"
    product = httpx.get(f"{base}/products/sales-eu/dcat", headers=token()).json()
    assert "@context" in product


def test_a_restricted_product_is_hidden_from_outsiders_in_the_api(
    marketplace: str, publication: dict[str, Any], token: TokenFactory
) -> None:
    """An outsider gets 404 and finds nothing; a member of the group reads it."""
    restricted = json.loads(json.dumps(publication))
    restricted["product"]["visibility"] = {"groups": ["finance"]}
    url = f"{marketplace}/api/v1/products/sales-eu"
    assert httpx.put(url, json=restricted, headers=_publisher()).status_code == 200
    outsider, member = token(subject="ivy"), token(subject="fay", groups=["finance"])
    assert httpx.get(url, headers=outsider).status_code == 404
    assert httpx.get(f"{url}/datasets/daily_sales", headers=outsider).status_code == 404
    assert httpx.get(f"{url}/odps", headers=outsider).status_code == 404
    listed = httpx.get(f"{marketplace}/api/v1/products", headers=outsider).json()["products"]
    found = httpx.get(f"{marketplace}/api/v1/search", params={"q": "sales"}, headers=outsider)
    assert listed == [] and found.json()["hits"] == []
    assert httpx.get(url, headers=member).status_code == 200
    found = httpx.get(f"{marketplace}/api/v1/search", params={"q": "sales"}, headers=member)
    assert found.json()["hits"]
