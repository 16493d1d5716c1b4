"""Publications for marketplace tests, built from the real example product's documents,
and the fixtures that open a store on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import issue_token
from tests.api import serve_example
from tests.conftest import SECRET, skip_or_fail

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def publication_from(client: TestClient) -> dict[str, Any]:
    """The publication a running product would push, read from its discovery port."""
    signed = issue_token(SECRET, "marketplace-test", ["control:admin"])
    headers = {"Authorization": f"Bearer {signed}", "Accept": "application/json"}
    product = client.get("/discovery", headers=headers).json()
    datasets = {
        summary["name"]: client.get(
            f"/discovery/datasets/{summary['name']}", headers=headers
        ).json()
        for summary in product["datasets"]
    }
    ready = client.get("/ready").json()
    return {
        "product": product,
        "datasets": datasets,
        "lineage": client.get("/discovery/lineage", headers=headers).json(),
        "health": {"ready": ready.get("status") == "ready", "problems": ready.get("problems", [])},
        "published_at": datetime.now(UTC).isoformat(),
    }


def example_publication(root: Path) -> dict[str, Any]:
    """Start the example product under `root` and return its publication."""
    with serve_example(root) as client:
        return publication_from(client)


def variant(
    base: dict[str, Any],
    name: str,
    *,
    domain: str | None = None,
    owner_email: str | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """A copy of `base` as another product (its own name, area, owner, tags, text)."""
    document = copy.deepcopy(base)
    product = document["product"]
    product["name"] = name
    if domain is not None:
        product["domain"] = domain
    if owner_email is not None:
        product["owner"] = {"name": owner_email.split("@")[0].title(), "email": owner_email}
    if tags is not None:
        product["tags"] = tags
    if description is not None:
        product["description"] = description
    return document


def with_dataset(
    document: dict[str, Any],
    name: str,
    *,
    description: str = "",
    columns: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
    version: int = 1,
) -> dict[str, Any]:
    """`document` with one more dataset (copied from its first one, then renamed)."""
    result = copy.deepcopy(document)
    template = copy.deepcopy(next(iter(result["datasets"].values())))
    template.update(name=name, description=description, version=version, tags=tags or [])
    if columns is not None:
        template["columns"] = columns
    result["datasets"][name] = template
    return result


def only_datasets(document: dict[str, Any], *names: str) -> dict[str, Any]:
    """`document` keeping only the named datasets."""
    result = copy.deepcopy(document)
    result["datasets"] = {k: v for k, v in result["datasets"].items() if k in names}
    return result


@pytest.fixture(scope="session", name="base_publication")
def base_publication_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example product's real publication (read once per session; copy before editing)."""
    return example_publication(tmp_path_factory.mktemp("example"))


@pytest.fixture(scope="session", name="postgres_url")
def postgres_url_fixture() -> Iterator[str]:
    """A fresh, migrated PostgreSQL schema for this session, dropped at the end."""
    schema = f"mkt_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as error:  # no PostgreSQL here
        admin.dispose()
        skip_or_fail(f"PostgreSQL unreachable: {error}")
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL for a `store` fixture parametrized with sqlite / postgresql."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'marketplace.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"], name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MarketplaceStore]:
    """A migrated, empty store on SQLite (a file) and on the real PostgreSQL."""
    opened = MarketplaceStore(store_url(request, tmp_path))
    try:
        yield opened
    finally:
        if opened.dialect == "postgresql":
            with opened.engine.begin() as connection:
                connection.execute(text("TRUNCATE products RESTART IDENTITY CASCADE"))
        opened.close()
