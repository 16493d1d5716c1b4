"""Pushes meet the source's data dictionary, are loaded once per Idempotency-Key, and can
start a pipeline run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dataproduct.ingest import ingestion_history
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from tests.api import assert_error, edit_descriptor, wait_for_run
from tests.conftest import TokenFactory, wait_ready

RETURNS = "/input/returns"
CSV = {"content-type": "text/csv"}


@pytest.fixture
def example_product(example_product: Path) -> Path:
    """`returns` declares its columns: order_id a required BIGINT, reason text."""

    def change(content: dict[str, Any]) -> None:
        content["sources"]["returns"] = {
            "type": "push",
            "columns": {
                "order_id": {"type": "BIGINT", "required": True},
                "reason": {"type": "VARCHAR"},
                "returned_at": {"type": "TIMESTAMPTZ"},
            },
        }

    edit_descriptor(example_product, change)
    return example_product


@pytest.fixture
def writer(token: TokenFactory) -> dict[str, str]:
    """A producer allowed to push `returns`."""
    return {**token("input:write", groups=["returns-writers"]), **CSV}


def _stored(runtime: ProductRuntime) -> list[tuple[Any, ...]]:
    with runtime.storage.reader() as cursor:
        exists = cursor.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'returns'"
        ).fetchall()[0][0]
        if not exists:
            return []
        return cursor.execute(
            'SELECT order_id, reason FROM input."returns" ORDER BY order_id'
        ).fetchall()


def _types(runtime: ProductRuntime) -> dict[str, str]:
    with runtime.storage.reader() as cursor:
        rows = cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'input' AND table_name = 'returns'"
        ).fetchall()
    return dict(rows)


def test_declared_columns_get_their_types(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """Text in the file becomes the declared BIGINT and TIMESTAMPTZ; a missing optional
    column arrives as nulls."""
    body = b"order_id,reason,returned_at\n7,late,2026-11-20T10:00:00+01:00\n8,damaged,\n"
    response = client.post(RETURNS, content=body, headers=writer)
    assert response.status_code == 201, response.text
    assert _stored(runtime) == [(7, "late"), (8, "damaged")]
    types = _types(runtime)
    assert types["order_id"] == "BIGINT"
    assert types["returned_at"] == "TIMESTAMP WITH TIME ZONE"
    only_ids = client.post(RETURNS, content=b"order_id\n9\n", headers=writer)
    assert only_ids.status_code == 201, only_ids.text
    assert _stored(runtime)[-1] == (9, None)


def test_a_value_of_the_wrong_type_is_refused_with_its_line_and_column(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """The 422 names the column, the row, the file's line and shows the row; nothing is
    stored, not even the good rows before it."""
    client.post(RETURNS, content=b"order_id,reason\n1,kept\n", headers=writer)
    body = b"order_id,reason\n2,fine\n3,fine\nabc,bad\n"
    response = client.post(RETURNS, content=body, headers=writer)
    error = assert_error(response, 422, "invalid_input")
    assert "column 'order_id' expects BIGINT" in error["message"]
    assert error["where"] == "row 3 (line 4), column order_id"
    assert error["details"]["line"] == 4
    assert error["details"]["sample"] == {"order_id": "abc", "reason": "bad"}
    assert _stored(runtime) == [(1, "kept")]
    failed = ingestion_history(runtime.storage, "returns")[0]
    assert failed["status"] == "failed"
    assert failed["error"]["details"]["column"] == "order_id"


def test_a_required_column_missing_or_empty_is_refused(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A file without `order_id`, or with an empty one, loads nothing."""
    missing = client.post(RETURNS, content=b"reason\nlate\n", headers=writer)
    assert "required column 'order_id' is missing" in assert_error(missing, 422)["message"]
    empty = client.post(RETURNS, content=b"order_id,reason\n1,a\n,b\n", headers=writer)
    error = assert_error(empty, 422)
    assert "'order_id' is required but empty" in error["message"]
    assert error["details"]["line"] == 3
    assert _stored(runtime) == []


@pytest.mark.parametrize(
    ("policy", "status", "extra_column"),
    [("add", 201, True), ("ignore", 201, False), ("refuse", 422, False)],
)
def test_new_columns_follow_the_source_policy(
    policy: str,
    status: int,
    extra_column: bool,
    example_product: Path,
    token: TokenFactory,
    settings: DataproductSettings,
) -> None:
    """An undeclared column is added, dropped, or refuses the load, as the source says."""
    edit_descriptor(example_product, lambda c: c["sources"]["returns"].update(new_columns=policy))
    runtime = ProductRuntime.open(example_product, settings)
    try:
        with TestClient(create_app(runtime)) as c:
            wait_ready(c)
            headers = {**token("input:write", groups=["returns-writers"]), **CSV}
            response = c.post(RETURNS, content=b"order_id,channel\n1,web\n", headers=headers)
            assert response.status_code == status, response.text
            if status == 422:
                assert "undeclared column(s) channel" in response.json()["error"]["message"]
                assert _stored(runtime) == []
            else:
                assert ("channel" in _types(runtime)) is extra_column
    finally:
        runtime.close()


def test_a_new_column_is_added_to_an_existing_table(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """With `add`, a later push bringing a new column widens the table; older rows get null."""
    client.post(RETURNS, content=b"order_id\n1\n", headers=writer)
    response = client.post(RETURNS, content=b"order_id,channel\n2,web\n", headers=writer)
    assert response.status_code == 201, response.text
    with runtime.storage.reader() as cursor:
        rows = cursor.execute(
            'SELECT order_id, channel FROM input."returns" ORDER BY order_id'
        ).fetchall()
    assert rows == [(1, None), (2, "web")]


def test_a_retried_push_with_the_same_idempotency_key_is_loaded_once(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """The replay answers 200 with the first load's record; another key loads again."""
    headers = {**writer, "Idempotency-Key": "batch-42"}
    body = b"order_id,reason\n1,late\n2,damaged\n"
    first = client.post(RETURNS, content=body, headers=headers)
    assert first.status_code == 201
    again = client.post(RETURNS, content=body, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["replayed"] is True
    assert again.json()["ingestion"]["id"] == first.json()["ingestion"]["id"]
    assert len(_stored(runtime)) == 2
    other = client.post(RETURNS, content=body, headers={**writer, "Idempotency-Key": "batch-43"})
    assert other.status_code == 201
    assert len(_stored(runtime)) == 4


def test_a_failed_push_does_not_use_up_its_idempotency_key(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A refused body can be fixed and sent again under the same key."""
    headers = {**writer, "Idempotency-Key": "retry-me"}
    assert client.post(RETURNS, content=b"order_id\nx\n", headers=headers).status_code == 422
    fixed = client.post(RETURNS, content=b"order_id\n5\n", headers=headers)
    assert fixed.status_code == 201
    assert _stored(runtime) == [(5, None)]


def test_a_push_can_start_a_pipeline_run(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str], token: TokenFactory
) -> None:
    """`run=true` starts a run triggered by the load once the rows are committed."""
    before = {r["id"] for r in runtime.runs.history()}
    response = client.post(f"{RETURNS}?run=true", content=b"order_id\n11\n", headers=writer)
    assert response.status_code == 201
    run = _new_run(runtime, before)
    assert run["trigger"] == "load:returns"
    final = wait_for_run(client, runtime, run["id"], token("control:admin"))
    assert final["status"] == "succeeded"


def _new_run(runtime: ProductRuntime, before: set[str], timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [r for r in runtime.runs.history() if r["id"] not in before]
        if new:
            return new[0]
        time.sleep(0.05)
    raise AssertionError("no run was started")
