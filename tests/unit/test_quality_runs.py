"""Quality rules gate publishing: `error` rules block a run, `warn` rules only record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataproduct.catalog import published_dataset
from dataproduct.quality import latest_results
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime

DESCRIPTOR = """
name: checked
domain: tests
version: 1.0.0
owner: {name: Test, email: test@example.com}
sources:
  events: {type: push, format: ndjson}
pipeline:
  - {name: amounts, sql: "SELECT id, amount FROM input.events"}
datasets:
  amounts:
    quality:
      - {not_null: id}
      - {range: {column: amount, min: 0}, severity: warn}
"""


@pytest.fixture
def product(tmp_path: Path, settings: DataproductSettings) -> Iterator[ProductRuntime]:
    folder = tmp_path / "checked"
    folder.mkdir()
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)
    runtime = ProductRuntime.open(folder, settings)
    yield runtime
    runtime.close()


def load(runtime: ProductRuntime, tmp_path: Path, lines: list[str]) -> dict[str, Any]:
    body = tmp_path / "body.ndjson"
    body.write_text("\n".join(lines) + "\n")
    runtime.push("events", body, "ndjson", "tester", "replace")
    return runtime.runs.wait(runtime.start_run("tester").id, 60)


def test_a_warning_publishes_and_is_recorded(product: ProductRuntime, tmp_path: Path) -> None:
    state = load(product, tmp_path, ['{"id": 1, "amount": 5}', '{"id": 2, "amount": -1}'])
    assert state["status"] == "succeeded", state["error"]
    statuses = {c["rule"]: c["status"] for c in state["checks"]}
    assert list(statuses.values()) == ["pass", "fail"]
    with product.storage.reader() as cursor:
        assert published_dataset(cursor, "amounts").row_count == 2  # type: ignore[union-attr]
        recorded = latest_results(cursor, "amounts")
    failed = [r for r in recorded if r.status == "fail"]
    assert [(r.severity, r.failing_rows) for r in failed] == [("warn", 1)]


def test_an_error_blocks_publishing_and_says_why(product: ProductRuntime, tmp_path: Path) -> None:
    good = load(product, tmp_path, ['{"id": 1, "amount": 5}'])
    assert good["status"] == "succeeded"
    bad = load(product, tmp_path, ['{"id": null, "amount": 5}', '{"id": 3, "amount": 1}'])
    assert bad["status"] == "failed"
    assert bad["error"]["code"] == "quality_failed"
    with product.storage.reader() as cursor:
        dataset = published_dataset(cursor, "amounts")
        assert dataset is not None and dataset.run_id == good["id"]
        assert cursor.execute("SELECT id FROM output.amounts").fetchall() == [(1,)]
        recorded = [r for r in latest_results(cursor, "amounts") if r.run_id == bad["id"]]
    assert any(r.status == "fail" and r.severity == "error" for r in recorded)
