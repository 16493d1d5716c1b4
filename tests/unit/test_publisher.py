"""A product publishes its metadata to the marketplace on start and on change, retries with
backoff while the marketplace is down, and catches up when it answers again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dataproduct.publisher import Publisher
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from tests.api import edit_descriptor
from tests.conftest import TokenFactory
from tests.server.conftest import serve_in_thread


@dataclass
class Marketplace:
    """A stand-in receiver on loopback: answers each PUT with the next planned status."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    planned: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def put(self, request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        with self.lock:
            status = self.planned.pop(0) if self.planned else 200
            self.headers.append(dict(request.headers))
            if status == 200:
                self.received.append(body)
        if status != 200:
            return JSONResponse({"error": {"code": "x", "message": "no"}}, status_code=status)
        return JSONResponse({"changed": True})


@pytest.fixture
def marketplace() -> Iterator[Marketplace]:
    """A receiver of `PUT /api/v1/products/{name}` on a free loopback port."""
    receiver = Marketplace()
    app = Starlette(routes=[Route("/api/v1/products/{name}", receiver.put, methods=["PUT"])])
    with serve_in_thread(app) as url:
        receiver.url = url
        yield receiver


def until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_a_down_marketplace_is_retried_with_backoff_then_caught_up(
    marketplace: Marketplace,
) -> None:
    """Two 503s, then success: the latest state arrives, with the product's credential."""
    marketplace.planned = [503, 503]
    state = {"version": 1}
    publisher = Publisher(
        "sales-eu", marketplace.url, "product-token", lambda: dict(state),
        first_backoff_s=0.05, max_backoff_s=0.2,
    )  # fmt: skip
    publisher.start()
    try:
        until(lambda: len(marketplace.received) == 1)
    finally:
        publisher.stop()
    assert len(marketplace.headers) == 3
    assert marketplace.headers[-1]["authorization"] == "Bearer product-token"
    assert marketplace.received[0]["version"] == 1
    assert "published_at" in marketplace.received[0]
    assert publisher.status.last_error is None and publisher.status.attempts == 3


def test_changes_while_publishing_fold_into_one_publication_of_the_latest_state(
    marketplace: Marketplace,
) -> None:
    """Many notifications in a burst give few publications, the last one current."""
    state = {"version": 0}
    publisher = Publisher("p", marketplace.url, None, lambda: dict(state), heartbeat_s=60)
    publisher.start()
    try:
        until(lambda: len(marketplace.received) == 1)
        for version in range(1, 21):
            state["version"] = version
            publisher.notify("run")
        until(lambda: marketplace.received[-1]["version"] == 20)
    finally:
        publisher.stop()
    assert len(marketplace.received) < 21


def test_a_refusal_is_not_retried_until_the_next_change(marketplace: Marketplace) -> None:
    """403 (a forged or foreign credential) is recorded and not hammered."""
    marketplace.planned = [403]
    publisher = Publisher(
        "p", marketplace.url, "bad", lambda: {}, first_backoff_s=0.01, heartbeat_s=60
    )
    publisher.start()
    try:
        until(lambda: publisher.status.last_error is not None)
        time.sleep(0.3)
        assert len(marketplace.headers) == 1
        assert "refused the publication: 403 no" in (publisher.status.last_error or "")
        publisher.notify("run")
        until(lambda: len(marketplace.received) == 1)
    finally:
        publisher.stop()


def test_a_product_publishes_its_documents_on_start_and_after_a_run(
    marketplace: Marketplace,
    example_product: Path,
    settings: DataproductSettings,
    token: TokenFactory,
) -> None:
    """The example product pushes its full dataset documents (columns, SQL) and health;
    a run makes it publish again."""
    settings = settings.model_copy(
        update={"marketplace_url": marketplace.url, "marketplace_token": "product-credential"}
    )
    edit_descriptor(
        example_product,
        lambda c: c.update(
            marketplace={"visible_to": ["sales-analysts"], "approvers": ["sales-leads"]}
        ),
    )
    runtime = ProductRuntime.open(example_product, settings)
    try:
        runtime.startup()
        until(lambda: len(marketplace.received) >= 1, timeout_s=30)
        first = marketplace.received[-1]
        assert first["product"]["name"] == "sales-eu"
        assert first["health"] == {"ready": True, "problems": []}
        assert first["product"]["visibility"] == {"groups": ["sales-analysts"]}
        assert first["product"]["access_approvers"] == ["sales-leads"]
        revenue = first["datasets"]["customer_revenue"]
        assert {c["name"] for c in revenue["columns"]} >= {"customer_id", "revenue"}
        assert "sql" in revenue
        assert first["lineage"]["nodes"] and first["lineage"]["edges"]
        seen = len(marketplace.received)
        run = runtime.start_run("test")
        runtime.runs.wait(run.id)
        until(lambda: len(marketplace.received) > seen)
        client = TestClient(create_app(runtime))  # no lifespan: the runtime already started
        state = client.get("/control/marketplace", headers=token("control:admin")).json()
        assert state["enabled"] is True and state["last_error"] is None
        assert state["url"] == f"{marketplace.url}/api/v1/products/sales-eu"
    finally:
        runtime.close()
    assert "product-credential" not in json.dumps(marketplace.received)
