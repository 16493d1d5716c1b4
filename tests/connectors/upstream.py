"""A real country product for the tests of the `product` connector: the example served by
`dataproduct serve` on a free loopback port, with the tokens that read and run it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from dataproduct.cli import example_dir
from dataproduct.connector import LoadState, SourceContext, build_connector
from dataproduct.descriptor import SourceConfig
from dataproduct.security import issue_token
from tests.conftest import SECRET
from tests.server.conftest import Launcher, Server

ADMIN = issue_token(SECRET, "admin", ["control:admin", "output:read"])
READER = issue_token(SECRET, "continental", ["output:read"])


@dataclass
class Country:
    """The running country product, its folder and an API key it issued."""

    server: Server
    product_dir: Path
    api_key: str

    @property
    def base(self) -> str:
        return self.server.base

    def arrow(self, dataset: str, **params: str) -> pa.Table:
        """A dataset as the country product serves it to READER."""
        response = httpx.get(
            f"{self.base}/output/datasets/{dataset}",
            params={"format": "arrow", **params},
            headers={"Authorization": f"Bearer {READER}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return pa.ipc.open_stream(response.content).read_all()


@pytest.fixture(scope="module")
def country(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Country]:
    """The example product served by `dataproduct serve` on a free loopback port."""
    root = tmp_path_factory.mktemp("country")
    product = root / "sales-eu"
    shutil.copytree(example_dir(), product, ignore=shutil.ignore_patterns("__pycache__"))
    launcher = Launcher(root)
    try:
        server = launcher(product, root / "data", secret=SECRET)
        created = httpx.post(
            f"{server.base}/control/api-keys",
            json={"name": "continental", "scopes": ["output:read"]},
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        yield Country(server, product, created.json()["key"])
    finally:
        launcher.close()


def connector(tmp_path: Path, **options: Any) -> Any:
    config = SourceConfig.model_validate({"type": "product", **options})
    return build_connector("sales_de", config, SourceContext(tmp_path, tmp_path / "data"))


def pull(tmp_path: Path, state: LoadState | None = None, **options: Any) -> pa.Table:
    with connector(tmp_path, **options).open_stream(state or LoadState()) as reader:
        return reader.read_all()


def refresh(country: Country) -> None:
    """Ingest and run on the country product, and wait for the run to end."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    answer = httpx.post(f"{country.base}/control/ingest?run=true", headers=admin, timeout=60)
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["run"]["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(f"{country.base}/control/runs/{run_id}", headers=admin).json()
        if state["status"] not in ("queued", "running"):
            assert state["status"] == "succeeded", state
            time.sleep(0.2)  # the run reads as ended a moment before its publish commits
            return
        time.sleep(0.05)
    raise AssertionError("the country run did not end")
