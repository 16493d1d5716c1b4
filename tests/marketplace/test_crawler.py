"""The marketplace crawls registered discovery URLs of REAL running products, records
failures on the target, sweeps unseen products stale then unreachable, and lets only its
administrators manage the targets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import delete
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from dataproduct.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from dataproduct.marketplace.crawl_models import crawl_targets
from dataproduct.marketplace.crawler import Crawler, target_url
from dataproduct.marketplace.migrations import schema_differences
from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from ports.marketplace.app import create_marketplace_app
from tests.conftest import SECRET, TokenFactory
from tests.marketplace.documents import postgres_url_fixture, store_fixture  # noqa: F401
from tests.marketplace.test_api import until
from tests.server.conftest import serve_in_thread

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ADMIN = "marketplace:admin"


@contextmanager
def running_product(product_dir: Path, settings: DataproductSettings) -> Iterator[str]:
    """The example product served for real on loopback, once ready; its base URL."""
    runtime = ProductRuntime.open(product_dir, settings)
    with serve_in_thread(create_app(runtime)) as url:
        until(lambda: httpx.get(f"{url}/ready").status_code == 200)
        yield url


@pytest.fixture
def product_url(example_product: Path, settings: DataproductSettings) -> Iterator[str]:
    """The running example product."""
    with running_product(example_product, settings) as url:
        yield url


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[MarketplaceStore]:
    """A migrated marketplace store in a SQLite file."""
    opened = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
    yield opened
    opened.close()


@pytest.fixture
def crawler_for() -> Iterator[Callable[..., Crawler]]:
    """`crawler_for(store, **settings)`: a crawler with short timeouts, closed after."""
    made: list[Crawler] = []

    def make(store: MarketplaceStore, **changes: Any) -> Crawler:
        made.append(Crawler(store, MarketplaceSettings(**{"crawl_timeout_s": 2, **changes})))
        return made[-1]

    yield make
    for crawler in made:
        crawler.close()


def test_target_urls_are_normalised_to_the_product_base() -> None:
    assert target_url("http://127.0.0.1:8080/discovery/") == "http://127.0.0.1:8080"
    assert target_url(" HTTP://Host.Example:80/mesh/sales/ ") == "http://host.example:80/mesh/sales"
    for bad in ("ftp://host/", "http://", "http://u:p@host/", "http://host/?a=1", "/discovery"):
        with pytest.raises(ValidationError):
            target_url(bad)


def test_a_crawled_product_appears_with_its_datasets(
    crawler_for: Callable[..., Crawler], sqlite_store: MarketplaceStore, product_url: str
) -> None:
    """Without a credential the product shows restricted datasets as summaries: the public
    one (daily_sales) comes with its columns, customer_revenue without; the entry belongs
    to the crawler's subject for that URL."""
    crawler = crawler_for(sqlite_store)
    crawler.targets.add(f"{product_url}/discovery", 60, "admin", now=T0)
    assert crawler.targets.due(T0) == [product_url]
    [outcome] = crawler.crawl_due(now=T0)
    assert (outcome.status, outcome.product, outcome.changed, outcome.error) == (
        OK_STATUS,
        "sales-eu",
        True,
        None,
    )
    product = sqlite_store.product("sales-eu")
    assert (product["domain"], product["status"], product["health"]) == (
        "sales/europe",
        "active",
        "ready",
    )
    assert {d["name"] for d in product["datasets"]} >= {"customer_revenue", "daily_sales"}
    daily = sqlite_store.dataset("sales-eu", "daily_sales")
    assert {c["name"] for c in daily["columns"]} >= {"order_date", "country"}
    assert daily["row_count"] == 1935
    assert sqlite_store.dataset("sales-eu", "customer_revenue")["columns"] == []
    assert sqlite_store.history("sales-eu")[0]["subject"] == f"crawler:{product_url}"
    target = crawler.targets.get(product_url)
    assert (target["last_status"], target["product"], target["last_error"]) == (
        "ok",
        "sales-eu",
        None,
    )
    assert target["next_due_at"] == T0 + timedelta(seconds=60)
    assert crawler.targets.due(T0 + timedelta(seconds=59)) == []
    # the same content again changes nothing
    assert crawler.crawl(product_url, now=T0 + timedelta(seconds=60)).changed is False
    # ownership: the product cannot later push over the crawled entry (the store has no
    # take-over), and a second URL claiming the same name is refused
    publication = parse_publication(product["publication"])
    with pytest.raises(PermissionDeniedError):
        sqlite_store.publish(publication, subject="product:sales-eu")
    other = product_url.replace("127.0.0.1", "localhost")
    crawler.targets.add(other, 60, "admin", now=T0)
    refused = crawler.crawl(other, now=T0)
    assert (refused.status, refused.product) == ("refused", "sales-eu")
    assert "another publisher owns this name" in (refused.error or "")


OK_STATUS = "ok"


def test_with_the_crawl_token_restricted_datasets_come_in_full(
    crawler_for: Callable[..., Crawler], sqlite_store: MarketplaceStore, product_url: str
) -> None:
    token = issue_token(SECRET, "marketplace-crawler", ["control:admin"])
    crawler = crawler_for(sqlite_store, crawl_token=token)
    crawler.targets.add(product_url, 60, "admin", now=T0)
    assert crawler.crawl(product_url, now=T0).status == "ok"
    revenue = sqlite_store.dataset("sales-eu", "customer_revenue")
    assert {c["name"]: c["classification"] for c in revenue["columns"]}["revenue"] == "confidential"
    assert revenue["row_count"] == 300


def test_a_stopped_product_is_recorded_then_swept_stale_and_unreachable(
    crawler_for: Callable[..., Crawler],
    sqlite_store: MarketplaceStore,
    example_product: Path,
    settings: DataproductSettings,
) -> None:
    crawler = crawler_for(sqlite_store, stale_after_s=3600, unreachable_after_s=86400)
    with running_product(example_product, settings) as url:
        crawler.targets.add(url, 300, "admin", now=T0)
        assert crawler.crawl(url, now=T0).status == "ok"
    later = T0 + timedelta(minutes=5)
    outcome = crawler.crawl_due(now=later)[0]
    assert (outcome.status, outcome.product) == ("unreachable", None)
    assert "ConnectError" in (outcome.error or "") and url in (outcome.error or "")
    target = crawler.targets.get(url)
    assert (target["last_status"], target["product"]) == ("unreachable", "sales-eu")
    assert target["last_error"] == outcome.error and target["last_crawled_at"] == later
    assert sqlite_store.product("sales-eu")["status"] == "active"
    crawler.sweep(now=T0 + timedelta(minutes=59))
    assert sqlite_store.product("sales-eu")["status"] == "active"
    crawler.sweep(now=T0 + timedelta(hours=2))
    assert sqlite_store.product("sales-eu")["status"] == "stale"
    crawler.sweep(now=T0 + timedelta(days=2))
    assert sqlite_store.product("sales-eu")["status"] == "unreachable"


def _broken_products() -> Starlette:
    """A server whose discovery answers are broken in every way a crawl must survive."""

    async def answer(request: Request) -> Response:
        case = request.path_params["case"]
        if case == "not-json":
            return PlainTextResponse("<html>hello</html>")
        if case == "wrong-shape":
            return JSONResponse({"name": 5, "datasets": []})
        if case == "a-list":
            return JSONResponse([1, 2, 3])
        if case == "huge":
            return JSONResponse({"padding": "x" * 5000})
        if case == "traversal":
            return JSONResponse({"name": "p", "datasets": [{"name": "../../control/grants"}]})
        if case == "redirect":
            return RedirectResponse("http://example.org/discovery")
        if case == "failing":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        await asyncio.sleep(1.5)  # slow
        return JSONResponse({})

    async def empty(request: Request) -> Response:
        return JSONResponse({})

    return Starlette(
        routes=[Route("/{case}/discovery", answer), Route("/{case}/discovery/lineage", empty)]
    )


EXPECTED_FAILURES = {
    "not-json": ("invalid", "answered 200 with no JSON"),
    "wrong-shape": ("invalid", "invalid publication at product.name"),
    "a-list": ("invalid", "the answer is not a JSON object"),
    "huge": ("invalid", "more than 2048"),
    "traversal": ("invalid", "datasets.0.name is not a name"),
    "redirect": ("invalid", "answered 307"),
    "failing": ("unreachable", "answered 500"),
    "slow": ("unreachable", "no answer in time"),
}


def test_malformed_discovery_answers_are_recorded_not_raised(
    crawler_for: Callable[..., Crawler],
    sqlite_store: MarketplaceStore,
) -> None:
    crawler = crawler_for(sqlite_store, crawl_timeout_s=0.5, crawl_max_bytes=2048)
    with serve_in_thread(_broken_products()) as base:
        for case in EXPECTED_FAILURES:
            crawler.targets.add(f"{base}/{case}", 60, "admin", now=T0)
        outcomes = {o.url.rsplit("/", 1)[1]: o for o in crawler.crawl_due(now=T0)}
    for case, (status, message) in EXPECTED_FAILURES.items():
        assert outcomes[case].status == status, (case, outcomes[case])
        assert message in (outcomes[case].error or ""), (case, outcomes[case])
        assert crawler.targets.get(f"{base}/{case}")["last_error"] == outcomes[case].error
    assert sqlite_store.products() == []


def test_crawl_targets_are_kept_on_sqlite_and_postgresql(
    crawler_for: Callable[..., Crawler], store: MarketplaceStore
) -> None:
    crawler = crawler_for(store)
    try:
        with store.engine.connect() as connection:
            assert not [d for d in schema_differences(connection) if "crawl_targets" in str(d)]
        added = crawler.targets.add("http://10.0.0.1:8080/discovery", 120, "ana", now=T0)
        assert (added["url"], added["interval_s"], added["added_by"]) == (
            "http://10.0.0.1:8080",
            120,
            "ana",
        )
        assert added["added_at"] == T0 and added["last_status"] is None
        with pytest.raises(ConflictError):
            crawler.targets.add("http://10.0.0.1:8080/", 60, "bob", now=T0)
        assert crawler.targets.due(T0 - timedelta(seconds=1)) == []
        assert crawler.targets.due(T0) == ["http://10.0.0.1:8080"]
        assert crawler.targets.remove("http://10.0.0.1:8080/discovery") == "http://10.0.0.1:8080"
        with pytest.raises(NotFoundError):
            crawler.targets.get("http://10.0.0.1:8080")
    finally:
        with store.engine.begin() as connection:
            connection.execute(delete(crawl_targets))


@pytest.fixture
def marketplace(tmp_path: Path, settings: DataproductSettings) -> Iterator[str]:
    """The marketplace app served for real, `mesh-admins` administering it."""
    store = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
    config = MarketplaceSettings(admin_groups=["mesh-admins"], crawl_timeout_s=2)
    with serve_in_thread(create_marketplace_app(store, config, settings)) as url:
        yield url


def test_only_administrators_manage_crawl_targets(marketplace: str, token: TokenFactory) -> None:
    api = f"{marketplace}/api/v1/crawl-targets"
    body = {"url": "http://127.0.0.1:9/discovery", "interval_s": 30}
    reader = token("marketplace:publish", groups=["sales-analysts"])
    for response in (
        httpx.post(api, json=body, headers=reader),
        httpx.get(api, headers=reader),
        httpx.post(f"{api}/crawl", json={}, headers=reader),
        httpx.delete(f"{api}/{quote('http://127.0.0.1:9', safe='')}", headers=reader),
    ):
        assert response.status_code == 403, response.text
        assert "marketplace administrators" in response.json()["error"]["message"]
    assert httpx.get(api).status_code == 401
    by_group = httpx.post(api, json=body, headers=token(groups=["mesh-admins"], subject="ana"))
    assert by_group.status_code == 201, by_group.text
    assert (by_group.json()["url"], by_group.json()["added_by"]) == ("http://127.0.0.1:9", "ana")
    admin = token(ADMIN)
    assert httpx.post(api, json=body, headers=admin).status_code == 409
    assert httpx.post(api, json={"url": "file:///etc/passwd"}, headers=admin).status_code == 422
    listed = httpx.get(api, headers=admin).json()["targets"]
    assert [t["url"] for t in listed] == ["http://127.0.0.1:9"]
    crawled = httpx.post(f"{api}/crawl", headers=admin).json()["results"]
    assert [(r["url"], r["status"]) for r in crawled] == [("http://127.0.0.1:9", "unreachable")]
    gone = httpx.delete(f"{api}/{quote('http://127.0.0.1:9', safe='')}", headers=admin)
    assert gone.json() == {"deleted": "http://127.0.0.1:9"}
    assert httpx.get(api, headers=admin).json()["targets"] == []


def test_the_schedule_crawls_in_the_background_and_stops_promptly(
    tmp_path: Path, settings: DataproductSettings, product_url: str, token: TokenFactory
) -> None:
    store = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
    config = MarketplaceSettings(sweep_interval_s=0.2, crawl_timeout_s=2)
    serving = serve_in_thread(create_marketplace_app(store, config, settings))
    marketplace = serving.__enter__()
    try:
        added = httpx.post(
            f"{marketplace}/api/v1/crawl-targets",
            json={"url": product_url, "interval_s": 3600},
            headers=token(ADMIN),
        )
        assert added.status_code == 201, added.text
        product = f"{marketplace}/api/v1/products/sales-eu"
        until(lambda: httpx.get(product, headers=token()).status_code == 200, timeout_s=10)
        [target] = httpx.get(f"{marketplace}/api/v1/crawl-targets", headers=token(ADMIN)).json()[
            "targets"
        ]
        assert (target["last_status"], target["product"]) == ("ok", "sales-eu")
    finally:
        started = time.monotonic()
        serving.__exit__(None, None, None)
        stopped_in = time.monotonic() - started
    assert stopped_in < 3, stopped_in
