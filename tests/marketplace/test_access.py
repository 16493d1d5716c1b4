"""Access requests against real components: the example product served on loopback (behind
a TCP proxy the tests can break) publishes itself to a real marketplace; consumers ask,
the owner or an approver decides, the grant is written on the product's control port and
takes effect there, and expiry revokes it. The store part runs on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dataproduct.cli import example_dir
from dataproduct.errors import ConflictError, NotFoundError, PermissionDeniedError
from dataproduct.marketplace.access import AccessRequests, AccessSweeper
from dataproduct.marketplace.access_models import access_events, access_requests
from dataproduct.marketplace.grant_client import GrantClient, GrantError
from dataproduct.marketplace.migrations import schema_differences, upgrade_to_head
from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import Principal, issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from ports.marketplace.app import create_marketplace_app
from tests.conftest import SECRET
from tests.marketplace.documents import (  # noqa: F401 (fixtures)
    postgres_url_fixture,
    store_fixture,
)
from tests.server.conftest import free_port, serve_in_thread

OWNER = "ana.silva@example.com"  # the example product's owner
STEWARDS = "data-stewards"  # the marketplace's approver group in these tests
DATASET = "customer_revenue"
ADMIN_TOKEN = issue_token(SECRET, "marketplace", ["control:admin"], ttl_s=7200)


class TcpProxy:
    """A loopback TCP proxy to `upstream`; `stop` refuses connections until `start` again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.upstream = 0
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # shutdown wakes accept() and stops listening
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for connection in self._open:
            connection.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._open += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, target), daemon=True).start()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@dataclass
class World:
    """A marketplace and the example product publishing to it through `proxy`."""

    marketplace: str
    app: FastAPI
    product: str
    proxy: TcpProxy

    @property
    def access(self) -> AccessRequests:
        access: AccessRequests = self.app.state.access
        return access

    def api(self, method: str, path: str, who: str, **options: Any) -> httpx.Response:
        return httpx.request(method, f"{self.marketplace}/api/v1{path}", headers=bearer(who),
                             **options)  # fmt: skip

    def read(self, consumer: str) -> int:
        """The status of the consumer's read of the dataset at the product's output port."""
        response = httpx.get(
            f"{self.product}/output/datasets/{DATASET}", headers=bearer(consumer, ["output:read"])
        )
        return response.status_code

    def product_grants(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.product}/control/grants", headers=_admin())
        grants: list[dict[str, Any]] = response.json()["grants"]
        return grants


def bearer(subject: str, scopes: list[str] | None = None, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, subject, scopes or [], **claims)}"}


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def consumer() -> str:
    return f"consumer-{uuid.uuid4().hex[:8]}@example.com"


def until(check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The marketplace (SQLite) and the example product, both served on loopback."""
    root = tmp_path_factory.mktemp("access")
    store = MarketplaceStore(f"sqlite:///{root / 'marketplace.db'}")
    settings = MarketplaceSettings(
        product_token=ADMIN_TOKEN, approver_groups=[STEWARDS], access_sweep_s=3600
    )
    auth = DataproductSettings(data_dir=root / "mkt", jwt_secret=SECRET, rate_limit_per_s=0)
    app = create_marketplace_app(store, settings, auth)
    proxy = TcpProxy()
    proxy.start()
    with serve_in_thread(app) as marketplace:
        product_dir = root / "product"
        shutil.copytree(example_dir(), product_dir, ignore=shutil.ignore_patterns("__pycache__"))
        runtime = ProductRuntime.open(
            product_dir,
            DataproductSettings(
                data_dir=root / "data", jwt_secret=SECRET, rate_limit_per_s=0,
                public_url=proxy.url, marketplace_url=marketplace,
                marketplace_token=issue_token(SECRET, "product:sales-eu",
                                              ["marketplace:publish"]),
            ),
        )  # fmt: skip
        try:
            with serve_in_thread(create_app(runtime)) as product:
                proxy.upstream = int(product.rsplit(":", 1)[1])
                until(lambda: httpx.get(f"{product}/ready").status_code == 200)
                until(
                    lambda: (
                        httpx.get(
                            f"{marketplace}/api/v1/products/sales-eu", headers=bearer("anyone")
                        ).status_code
                        == 200
                    )
                )
                yield World(marketplace, app, product, proxy)
        finally:
            proxy.stop()
            runtime.close()


def _ask(world: World, who: str, **body: Any) -> httpx.Response:
    document = {"product": "sales-eu", "dataset": DATASET, "justification": "churn study",
                "duration_days": 30} | body  # fmt: skip
    return world.api("POST", "/requests", who, json=document)


def _kinds(view: dict[str, Any]) -> list[str]:
    return [event["kind"] for event in view["history"]]


# -- the HTTP flow (SQLite marketplace) ------------------------------------------------------


def test_approval_writes_a_grant_that_takes_effect_at_the_product(world: World) -> None:
    who = consumer()
    assert world.read(who) == 403
    asked = _ask(world, who)
    assert asked.status_code == 201, asked.text
    request = asked.json()
    assert (request["status"], request["requester"], request["grant_state"]) == (
        "pending", who, None,
    )  # fmt: skip
    pending = world.api("GET", "/requests/pending", "Ana.Silva@Example.com").json()["requests"]
    assert request["id"] in [r["id"] for r in pending]

    approved = world.api("POST", f"/requests/{request['id']}/approve", OWNER,
                         json={"note": "ok for Q3"})  # fmt: skip
    assert approved.status_code == 200, approved.text
    decided = approved.json()
    assert (decided["status"], decided["grant_state"], decided["decided_by"]) == (
        "approved", "granted", OWNER,
    )  # fmt: skip
    expires = datetime.fromisoformat(decided["expires_at"])
    assert expires - datetime.fromisoformat(decided["decided_at"]) == timedelta(days=30)
    grant = next(g for g in world.product_grants() if g["id"] == decided["grant_id"])
    assert (grant["dataset"], grant["user"], grant["created_by"]) == (DATASET, who, "marketplace")
    assert datetime.fromisoformat(grant["expires"]) == expires
    assert world.read(who) == 200

    again = world.api("POST", f"/requests/{request['id']}/approve", OWNER)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    assert world.api("POST", f"/requests/{request['id']}/deny", OWNER).status_code == 409
    [mine] = world.api("GET", "/requests/mine", who).json()["requests"]
    assert _kinds(mine) == ["requested", "approved", "granted"]
    assert [e["actor"] for e in mine["history"]] == [who, OWNER, "marketplace"]
    assert mine["history"][0]["note"] == "churn study"
    assert mine["history"][1]["note"] == "ok for Q3"
    assert mine["history"][2]["detail"] == {"grant_id": decided["grant_id"]}


def test_a_denied_request_grants_nothing_and_stays_denied(world: World) -> None:
    who = consumer()
    request = _ask(world, who).json()
    denied = world.api("POST", f"/requests/{request['id']}/deny", OWNER,
                       json={"note": "use the aggregate"})  # fmt: skip
    assert denied.status_code == 200
    assert (denied.json()["status"], denied.json()["grant_id"]) == ("denied", None)
    assert world.api("POST", f"/requests/{request['id']}/approve", OWNER).status_code == 409
    assert world.read(who) == 403
    assert not [g for g in world.product_grants() if g.get("user") == who]
    [mine] = world.api("GET", "/requests/mine", who).json()["requests"]
    assert _kinds(mine) == ["requested", "denied"]
    assert mine["history"][1]["note"] == "use the aggregate"
    pending = world.api("GET", "/requests/pending", OWNER).json()["requests"]
    assert request["id"] not in [r["id"] for r in pending]
    # decided, the same consumer may ask again
    assert _ask(world, who).status_code == 201


def test_only_approvers_decide(world: World) -> None:
    who = consumer()
    request = _ask(world, who).json()
    path = f"/requests/{request['id']}"
    stranger = world.api("POST", f"{path}/approve", "mallory@example.com")
    assert stranger.status_code == 403 and stranger.json()["error"]["code"] == "forbidden"
    assert world.api("POST", f"{path}/deny", who).status_code == 403  # not one's own
    assert world.api("GET", "/requests/pending", "mallory@example.com").json() == {"requests": []}
    assert world.api("GET", path, "mallory@example.com").status_code == 404
    assert world.api("GET", path, who).json()["status"] == "pending"
    steward = bearer("sam@example.com", groups=[STEWARDS])
    listed = httpx.get(f"{world.marketplace}/api/v1/requests/pending", headers=steward).json()
    assert request["id"] in [r["id"] for r in listed["requests"]]
    decided = httpx.post(f"{world.marketplace}/api/v1{path}/deny", headers=steward)
    assert (decided.status_code, decided.json()["decided_by"]) == (200, "sam@example.com")
    assert _kinds(world.api("GET", path, who).json()) == ["requested", "denied"]


def test_bad_requests_are_refused_and_store_nothing(world: World) -> None:
    who = consumer()
    for body, status in [
        ({"justification": ""}, 422),
        ({"justification": "   "}, 422),
        ({"duration_days": 0}, 422),
        ({"duration_days": 366}, 422),
        ({"owner": "me"}, 422),
        ({"product": "nope"}, 404),
        ({"dataset": "nope"}, 404),
    ]:
        response = _ask(world, who, **body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()) == {"error"}
    assert world.api("GET", "/requests/mine", who).json() == {"requests": []}
    assert httpx.post(f"{world.marketplace}/api/v1/requests", json={}).status_code == 401
    assert _ask(world, who).status_code == 201
    duplicate = _ask(world, who, justification="again")
    assert duplicate.status_code == 409
    assert len(world.api("GET", "/requests/mine", who).json()["requests"]) == 1
    assert world.api("POST", "/requests/999999/approve", OWNER).status_code == 404
    assert world.api("POST", "/requests/1/approve", OWNER, json={"x": 1}).status_code == 422


def test_a_grant_to_a_product_that_is_down_is_retried_until_it_is_back(world: World) -> None:
    who = consumer()
    request = _ask(world, who).json()
    world.proxy.stop()
    try:
        approved = world.api("POST", f"/requests/{request['id']}/approve", OWNER).json()
        assert (approved["status"], approved["grant_state"]) == ("approved", "pending")
        assert "unreachable" in approved["last_error"]
        assert _kinds(approved) == ["requested", "approved", "grant_failed"]
        later = datetime.now(UTC) + timedelta(minutes=1)
        swept = world.access.sweep(now=later)
        assert request["id"] in swept.grant_failed
    finally:
        world.proxy.start()
    assert world.read(who) == 403
    swept = world.access.sweep(now=datetime.now(UTC) + timedelta(hours=2))
    assert request["id"] in swept.granted
    view = world.api("GET", f"/requests/{request['id']}", who).json()
    assert (view["grant_state"], view["grant_attempts"], view["last_error"]) == (
        "granted", 3, None,
    )  # fmt: skip
    assert _kinds(view) == ["requested", "approved", "grant_failed", "grant_failed", "granted"]
    assert view["history"][2]["detail"]["transient"] is True
    assert world.read(who) == 200
    assert len([g for g in world.product_grants() if g.get("user") == who]) == 1


def test_expiry_revokes_the_grant_at_the_product(world: World) -> None:
    who = consumer()
    request = _ask(world, who, duration_days=1).json()
    approved = world.api("POST", f"/requests/{request['id']}/approve", OWNER).json()
    assert world.read(who) == 200
    expires = datetime.fromisoformat(approved["expires_at"])
    assert request["id"] not in world.access.sweep(now=expires - timedelta(seconds=1)).expired
    swept = world.access.sweep(now=expires + timedelta(seconds=1))
    assert request["id"] in swept.expired and request["id"] in swept.revoked
    assert world.read(who) == 403
    assert approved["grant_id"] not in [g["id"] for g in world.product_grants()]
    view = world.api("GET", f"/requests/{request['id']}", who).json()
    assert (view["status"], view["grant_state"]) == ("expired", "revoked")
    assert _kinds(view) == ["requested", "approved", "granted", "revoked", "expired"]
    assert request["id"] not in world.access.sweep(now=expires + timedelta(days=1)).expired


# -- the store on SQLite and PostgreSQL --------------------------------------------------------


@pytest.fixture
def access(store: MarketplaceStore, world: World) -> Iterator[AccessRequests]:
    """The flow over a fresh store holding the running product's real publication."""
    product = httpx.get(f"{world.marketplace}/api/v1/products/sales-eu", headers=bearer("x"))
    publication = parse_publication(json.dumps(product.json()["publication"]))
    store.publish(publication, "product:sales-eu")
    client = GrantClient(ADMIN_TOKEN, timeout_s=5)
    yield AccessRequests(store.engine, client, approver_groups=[STEWARDS], retry_base_s=0.05)
    client.close()
    if store.dialect == "postgresql":
        with store.engine.begin() as connection:
            connection.execute(text("TRUNCATE access_requests RESTART IDENTITY CASCADE"))


def test_store_flow_is_atomic_and_complete(access: AccessRequests, world: World) -> None:
    who, owner = Principal(consumer()), Principal(OWNER)
    first = access.request(who, "sales-eu", DATASET, "audit", 2)
    with pytest.raises(ConflictError):
        access.request(who, "sales-eu", DATASET, "twice", 2)
    with pytest.raises(NotFoundError):
        access.request(who, "sales-eu", "nope", "audit", 2)
    with pytest.raises(PermissionDeniedError):
        access.approve(first["id"], Principal("mallory"))
    assert [r["id"] for r in access.pending(owner)] == [first["id"]]
    approved = access.approve(first["id"], owner, "fine")
    assert (approved["status"], approved["grant_state"]) == ("approved", "granted")
    assert world.read(who.subject) == 200
    with pytest.raises(ConflictError):
        access.deny(first["id"], owner)
    expires = datetime.fromisoformat(approved["expires_at"])
    assert access.sweep(now=expires).revoked == [first["id"]]
    assert world.read(who.subject) == 403
    [mine] = access.mine(who)
    assert _kinds(mine) == ["requested", "approved", "granted", "revoked", "expired"]
    with access.engine.connect() as connection:
        counts = [
            connection.execute(text(f"SELECT count(*) FROM {t.name}")).scalar_one()
            for t in (access_requests, access_events)
        ]
    assert counts == [1, 5]


def test_store_background_sweeper_grants_once_the_product_is_back(
    access: AccessRequests, world: World
) -> None:
    who = Principal(consumer())
    request = access.request(who, "sales-eu", DATASET, "audit", 1)
    world.proxy.stop()
    try:
        approved = access.approve(request["id"], Principal("sam", groups=frozenset([STEWARDS])))
        assert approved["grant_state"] == "pending"
    finally:
        world.proxy.start()
    access.lease_s = 0.0  # the approval's claim on the retry ends at once
    sweeper = AccessSweeper(access, 0.05)
    sweeper.start()
    try:
        until(lambda: access.get(request["id"])["grant_state"] == "granted")
    finally:
        sweeper.stop()
    assert world.read(who.subject) == 200
    assert _kinds(access.get(request["id"]))[-1] == "granted"
    access.sweep(now=datetime.now(UTC) + timedelta(days=2))
    assert world.read(who.subject) == 403


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_access_tables_match_the_migration(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'm.db'}"
        if dialect == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    upgrade_to_head(url)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            ours = [d for d in schema_differences(connection) if "access_" in repr(d)]
            assert ours == []
    finally:
        engine.dispose()


def test_the_marketplace_credential_goes_only_to_allowed_product_addresses() -> None:
    """A publication naming a control port outside the allowed prefixes gets no request at
    all: the marketplace's credential is not sent there; an allowed one is written to."""
    seen: list[str] = []

    async def record(request: Request) -> JSONResponse:
        seen.append(f"{request.url.port} {request.headers.get('authorization')}")
        return JSONResponse({"id": "g1"}, status_code=201)

    app = Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])
    body = {"dataset": DATASET, "user": "u", "expires": datetime.now(UTC).isoformat()}
    with serve_in_thread(app) as trusted, serve_in_thread(app) as elsewhere:
        client = GrantClient(ADMIN_TOKEN, allowed_prefixes=[f"{trusted}/"])
        try:
            assert client.add(f"{trusted}/control", body) == "g1"
            with pytest.raises(GrantError, match="not under an allowed product address"):
                client.add(f"{elsewhere}/control", body)
        finally:
            client.close()
    assert seen == [f"{trusted.rsplit(':', 1)[1]} Bearer {ADMIN_TOKEN}"]
