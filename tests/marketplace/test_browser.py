"""The marketplace in a real headless browser (Debian's Chromium driven by Playwright):
sign in through the test issuer's login form, search, open a dataset, request access,
approve as the owner, and see the grant take effect at the real product's output port.
Screenshots of the main pages are kept under build/test-artifacts/marketplace/."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from ports.marketplace.app import create_marketplace_app
from tests.conftest import SECRET
from tests.marketplace.oidc_issuer import TestIssuer, serve_issuer
from tests.server.conftest import free_port, serve_in_thread

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "marketplace"
CLIENT_ID = "dataproduct-marketplace"
OWNER = "ana.silva@example.com"
DATASET = "customer_revenue"

pytestmark = pytest.mark.slow


@contextmanager
def serve_on(app: Any, port: int) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on `port` of loopback."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def until(check: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture
def mesh(tmp_path: Path, example_product: Path) -> Iterator[tuple[str, str, TestIssuer]]:
    """The test issuer, a marketplace trusting it, and the example product served on its
    own port, trusting the same issuer and publishing to the marketplace."""
    with serve_issuer({CLIENT_ID: None}) as issuer:
        auth = DataproductSettings(
            jwt_secret=SECRET, oidc_issuer=issuer.url, jwt_algorithms=["HS256", "RS256"]
        )
        store = MarketplaceStore(f"sqlite:///{tmp_path / 'marketplace.db'}")
        settings = MarketplaceSettings(
            oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID,
            product_token=issue_token(SECRET, "marketplace", ["control:admin"]),
        )  # fmt: skip
        with serve_in_thread(create_marketplace_app(store, settings, auth)) as marketplace:
            port = free_port()
            product_settings = auth.model_copy(
                update={
                    "data_dir": tmp_path / "data", "port": port, "rate_limit_per_s": 0,
                    "marketplace_url": marketplace,
                    "marketplace_token": issue_token(
                        SECRET, "product:sales-eu", ["marketplace:publish"]
                    ),
                }
            )  # fmt: skip
            runtime = ProductRuntime.open(example_product, product_settings)
            try:
                with serve_on(create_app(runtime), port) as product:
                    reader = {"Authorization": f"Bearer {issuer.access_token('reader')}"}
                    until(lambda: httpx.get(f"{marketplace}/api/v1/products/sales-eu",
                                            headers=reader).status_code == 200)  # fmt: skip
                    yield marketplace, product, issuer
            finally:
                runtime.close()
        store.close()


def sign_in(page: Any, marketplace: str, path: str, user: str, groups: str = "") -> None:
    """Open `path`, sign in on the issuer's login form, land back on `path`."""
    page.goto(f"{marketplace}{path}")
    page.fill("#username", user)
    page.fill("#email", user if "@" in user else f"{user}@example.com")
    page.fill("#groups", groups)
    page.click("#login")
    page.wait_for_url(f"{marketplace}{path}")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_request_and_approve_access_in_a_browser(
    mesh: tuple[str, str, TestIssuer], browser: Any
) -> None:
    """Consumer: sign in, search, open the dataset, request access. Owner: approve. The
    consumer's token then reads the dataset at the product's output port (403 -> 200)."""
    marketplace, product, issuer = mesh
    rows = f"{product}/output/datasets/{DATASET}"
    consumer = {"Authorization": f"Bearer {issuer.access_token('ivy', ['analysts'])}"}
    assert httpx.get(rows, headers=consumer).status_code == 403

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(page, marketplace, "/", "ivy", "analysts")
    assert "ivy@example.com" in page.inner_text("header")
    assert page.locator("#areas a", has_text="europe").count() == 1
    shot(page, "home")
    page.fill("header input[name=q]", "revenue")
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**/search?q=revenue")
    shot(page, "search")
    page.click(f"#results a[href='/products/sales-eu/datasets/{DATASET}']")
    page.wait_for_selector("#schema")
    assert page.inner_text("#rows") == "300"
    assert f"{rows}?format=csv" in page.inner_text("#snippet-curl")
    assert page.locator("#lineage g.node").count() >= 4
    shot(page, "dataset")
    page.click("a[href='/products/sales-eu']")
    page.wait_for_selector("#datasets")
    shot(page, "product")
    page.go_back()
    page.fill("#justification", "Churn model for the EU shops")
    page.select_option("#duration", "90")
    shot(page, "request-form")
    page.click("#ask")
    page.wait_for_url("**/requests?done=requested")
    assert "pending" in page.inner_text("#my-requests")
    shot(page, "my-requests")

    owner = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    sign_in(owner, marketplace, "/approvals", OWNER)
    assert "Churn model for the EU shops" in owner.inner_text("main")
    shot(owner, "approvals")
    owner.fill("input[name=note]", "ok for 90 days")
    owner.click("button[value=approve]")
    owner.wait_for_url("**/approvals?done=*")
    assert "Nothing waits" in owner.inner_text("main")

    page.goto(f"{marketplace}/requests")
    assert "granted" in page.inner_text("#my-requests")
    assert "approved by ana.silva@example.com: ok for 90 days" in page.inner_text("#my-requests")
    read = httpx.get(rows, headers=consumer, params={"format": "json"})
    assert read.status_code == 200, read.text
    data = read.json()["data"]
    assert len(data) == 100  # the first page
    assert all(row["customer_id"].startswith("C") for row in data)
