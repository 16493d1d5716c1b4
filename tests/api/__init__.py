"""In-process tests of the four HTTP ports, and helpers they share."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi.testclient import TestClient

from dataproduct.cli import example_dir
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from tests.conftest import SECRET, wait_ready

ERROR_FIELDS = {"code", "message", "where", "details"}
TRACEBACK_MARKS = ("Traceback (most recent call last)", '.py", line ', 'File "/')


def assert_no_traceback(response: httpx.Response) -> None:
    """No part of the response (body or headers) shows Python internals."""
    text = response.content.decode("utf-8", errors="replace")
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for mark in TRACEBACK_MARKS:
        assert mark not in text, text
        assert mark not in headers, headers


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the one error shape with `status` (and `code`); returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message"} <= set(error) <= ERROR_FIELDS, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error.get("where", ""), str)
    assert isinstance(error.get("details", {}), dict)
    if code is not None:
        assert error["code"] == code, error
    assert_no_traceback(response)
    return error


@contextmanager
def serve(product_dir: Path, settings: DataproductSettings) -> Iterator[TestClient]:
    """A started, ready in-process client of the product in `product_dir`."""
    runtime = ProductRuntime.open(product_dir, settings)
    try:
        with TestClient(create_app(runtime)) as client:
            wait_ready(client)
            yield client
    finally:
        runtime.close()


@contextmanager
def serve_example(root: Path, **settings: Any) -> Iterator[TestClient]:
    """A copy of the example under `root`, started; for module-wide read-only checks."""
    product = root / "product"
    shutil.copytree(example_dir(), product, ignore=shutil.ignore_patterns("__pycache__"))
    options = {"rate_limit_per_s": 0, **settings}
    with serve(
        product, DataproductSettings(data_dir=root / "data", jwt_secret=SECRET, **options)
    ) as client:
        yield client


def edit_descriptor(product_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite `dataproduct.yaml` after `change` edited its parsed content in place."""
    path = product_dir / "dataproduct.yaml"
    content = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(content)
    path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def wait_for_run(
    client: TestClient,
    runtime: ProductRuntime,
    run_id: str,
    headers: dict[str, str],
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Poll GET /control/runs/{id} until the run has ended; its final state.

    The run reads as ended a moment before its publish is committed (a known race, pinned
    by `test_control.test_a_run_reads_succeeded_only_once_published`), so this also waits
    for the run's thread to finish before returning.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state: dict[str, Any] = client.get(f"/control/runs/{run_id}", headers=headers).json()
        if state["status"] not in ("queued", "running"):
            runtime.runs.wait(run_id, timeout_s=max(deadline - time.monotonic(), 0.1))
            final: dict[str, Any] = client.get(f"/control/runs/{run_id}", headers=headers).json()
            return final
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout_s}s")
