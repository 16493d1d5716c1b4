"""Shared fixtures: settings in a temporary folder, the example product, tokens, clients."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dataproduct.cli import example_dir
from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app

# fixtures shared by several folders of tests
pytest_plugins = ["tests.nginx_install", "tests.browser"]

SECRET = "test-secret-that-is-long-enough-0123456789"
IN_CI = os.environ.get("CI", "").lower() == "true"

TokenFactory = Callable[..., dict[str, str]]


def skip_or_fail(reason: str) -> None:
    """Skip locally when a real component is missing; in CI a missing component fails."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def settings(tmp_path: Path) -> DataproductSettings:
    """Settings whose data lives in this test's temporary folder.

    No rate limit: tests poll as fast as they can; the limit has tests of its own.
    """
    return DataproductSettings(data_dir=tmp_path / "data", jwt_secret=SECRET, rate_limit_per_s=0)


@pytest.fixture
def example_product(tmp_path: Path) -> Path:
    """A private copy of the embedded example product folder."""
    target = tmp_path / "product"
    shutil.copytree(example_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def runtime(example_product: Path, settings: DataproductSettings) -> Iterator[ProductRuntime]:
    """The example product opened (not started)."""
    opened = ProductRuntime.open(example_product, settings)
    yield opened
    opened.close()


def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    """Poll /ready until the product finished starting."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the product did not become ready")


@pytest.fixture
def client(runtime: ProductRuntime) -> Iterator[TestClient]:
    """An in-process client of the started example product, once it is ready."""
    with TestClient(create_app(runtime)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def token() -> TokenFactory:
    """`token("output:read", ...)` gives an Authorization header with those scopes."""

    def make(
        *scopes: str,
        subject: str = "tester",
        ttl_s: int = 600,
        groups: list[str] | None = None,
        roles: list[str] | None = None,
    ) -> dict[str, str]:
        signed = issue_token(SECRET, subject, list(scopes), ttl_s=ttl_s, groups=groups, roles=roles)
        return {"Authorization": f"Bearer {signed}"}

    return make
