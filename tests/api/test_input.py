"""The input port: files pushed into a push source land in `input.<source>`, all or nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from dataproduct.ingest import ingestion_history
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.api import assert_error, edit_descriptor
from tests.conftest import TokenFactory

UPLOAD_LIMIT = 64 * 1024
RETURNS = "/input/returns"
CSV_BODY = b"order_id,reason\n100001,damaged\n100002,late\n100003,wrong size\n"
ROWS = [(100001, "damaged"), (100002, "late"), (100003, "wrong size")]


@pytest.fixture
def example_product(example_product: Path) -> Path:
    """The example, with `returns` open to every format and `refunds` taking CSV only."""

    def change(content: dict[str, Any]) -> None:
        content["sources"]["returns"] = {"type": "push"}
        content["sources"]["refunds"] = {"type": "push", "format": "csv"}

    edit_descriptor(example_product, change)
    return example_product


@pytest.fixture
def settings(settings: DataproductSettings) -> DataproductSettings:
    """A small upload limit, so 413 is cheap to provoke."""
    return settings.model_copy(update={"max_upload_bytes": UPLOAD_LIMIT})


@pytest.fixture
def writer(token: TokenFactory) -> dict[str, str]:
    """Headers of a producer allowed to push: the example grants `returns` to this group."""
    return token("input:write", groups=["returns-writers"])


def _rows(runtime: ProductRuntime, source: str = "returns") -> list[tuple[Any, ...]]:
    """What `input.<source>` holds, read directly; [] when the table does not exist."""
    with runtime.storage.reader() as cursor:
        exists = cursor.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'input' AND table_name = ?",
            [source],
        ).fetchall()[0][0]
        if not exists:
            return []
        query = f'SELECT order_id, reason FROM input."{source}" ORDER BY order_id'
        return [tuple(row) for row in cursor.execute(query).fetchall()]


def _parquet(rows: list[tuple[int, str]]) -> bytes:
    table = pa.table({"order_id": [r[0] for r in rows], "reason": [r[1] for r in rows]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


BODIES = {
    "csv": ("text/csv", CSV_BODY),
    "json": (
        "application/json",
        json.dumps([{"order_id": o, "reason": r} for o, r in ROWS]).encode(),
    ),
    "ndjson": (
        "application/x-ndjson",
        b"".join(json.dumps({"order_id": o, "reason": r}).encode() + b"\n" for o, r in ROWS),
    ),
    "parquet": ("application/vnd.apache.parquet", _parquet(ROWS)),
}


@pytest.mark.parametrize("file_format", list(BODIES))
def test_push_each_format(
    file_format: str, client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """CSV, a JSON array, NDJSON and Parquet all load: 201, rows counted, data stored."""
    content_type, body = BODIES[file_format]
    response = client.post(RETURNS, content=body, headers={**writer, "content-type": content_type})
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["source"], result["rows"]) == ("returns", 3)
    ingestion = result["ingestion"]
    assert (ingestion["status"], ingestion["mode"], ingestion["rows"]) == ("succeeded", "append", 3)
    assert ingestion["bytes"] == len(body)
    assert ingestion["principal"] == "tester"
    assert _rows(runtime) == ROWS


def test_format_parameter_overrides_content_type(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """`format=` reads the body whatever its Content-Type says."""
    response = client.post(
        f"{RETURNS}?format=csv",
        content=CSV_BODY,
        headers={**writer, "content-type": "application/octet-stream"},
    )
    assert response.status_code == 201
    assert _rows(runtime) == ROWS


def test_pushes_append_by_default_and_replace_on_request(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """Two pushes add up; `mode=replace` keeps only the last one."""
    headers = {**writer, "content-type": "text/csv"}
    client.post(RETURNS, content=CSV_BODY, headers=headers)
    more = b"order_id,reason\n100009,other\n"
    assert client.post(RETURNS, content=more, headers=headers).json()["rows"] == 1
    assert len(_rows(runtime)) == 4
    replaced = client.post(f"{RETURNS}?mode=replace", content=more, headers=headers)
    assert replaced.status_code == 201
    assert replaced.json()["ingestion"]["mode"] == "replace"
    assert _rows(runtime) == [(100009, "other")]


@pytest.mark.parametrize(
    ("headers", "query", "status", "where"),
    [
        ({"content-type": "application/xml"}, "", 415, "Content-Type"),
        ({}, "", 415, "Content-Type"),
        ({"content-type": "text/csv"}, "?format=xlsx", 400, "format"),
        ({"content-type": "text/csv"}, "?mode=merge", 400, "query.mode"),
    ],
    ids=["unknown content type", "no content type", "unknown format", "unknown mode"],
)
def test_unreadable_requests_are_refused(
    headers: dict[str, str],
    query: str,
    status: int,
    where: str,
    client: TestClient,
    runtime: ProductRuntime,
    writer: dict[str, str],
) -> None:
    """Formats we do not read: 415; bad parameters: 400; nothing is stored."""
    response = client.post(f"{RETURNS}{query}", content=CSV_BODY, headers={**writer, **headers})
    assert assert_error(response, status)["where"] == where
    assert _rows(runtime) == []


def test_declared_format_is_the_default(
    client: TestClient, runtime: ProductRuntime, token: TokenFactory
) -> None:
    """A source declared as CSV reads an untyped body as CSV and still takes JSON records."""
    writer = token("input:write", "control:admin")  # an administrator may push anywhere
    untyped = {**writer, "content-type": "application/x-www-form-urlencoded"}
    ok = client.post("/input/refunds", content=CSV_BODY, headers=untyped)
    assert ok.status_code == 201
    assert _rows(runtime, "refunds") == ROWS
    _, body = BODIES["json"]
    json_body = {**writer, "content-type": "application/json"}
    again = client.post("/input/refunds", content=body, headers=json_body)
    assert again.status_code == 201
    assert _rows(runtime, "refunds") == sorted(ROWS + ROWS)


def test_empty_body_is_400(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """Nothing to load is a bad request."""
    response = client.post(RETURNS, content=b"", headers={**writer, "content-type": "text/csv"})
    assert assert_error(response, 400, "bad_request")["where"] == "body"
    assert _rows(runtime) == []


def _assert_nothing_stored(runtime: ProductRuntime) -> None:
    assert _rows(runtime) == []
    assert ingestion_history(runtime.storage, "returns") == []
    assert list(runtime.upload_dir().iterdir()) == []


def test_body_over_the_limit_with_content_length_is_413(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A declared Content-Length over the limit is refused and nothing is stored."""
    body = b"order_id,reason\n" + b"1,x\n" * (UPLOAD_LIMIT // 4)
    response = client.post(RETURNS, content=body, headers={**writer, "content-type": "text/csv"})
    error = assert_error(response, 413, "payload_too_large")
    assert error["where"] == "Content-Length"
    assert str(UPLOAD_LIMIT) in error["message"]
    _assert_nothing_stored(runtime)


def test_chunked_body_over_the_limit_is_413(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """Without Content-Length the limit is enforced while streaming; nothing is stored."""

    def chunks() -> Iterator[bytes]:
        yield b"order_id,reason\n"
        for _ in range(40):
            yield b"1,x\n" * 1024

    response = client.post(
        RETURNS, content=chunks(), headers={**writer, "content-type": "text/csv"}
    )
    assert "content-length" not in response.request.headers
    assert assert_error(response, 413, "payload_too_large")["where"] == "body"
    _assert_nothing_stored(runtime)


def test_chunked_body_under_the_limit_loads(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A streamed body without Content-Length loads when it fits."""

    def chunks() -> Iterator[bytes]:
        yield from (CSV_BODY[:10], CSV_BODY[10:])

    response = client.post(
        RETURNS, content=chunks(), headers={**writer, "content-type": "text/csv"}
    )
    assert response.status_code == 201
    assert _rows(runtime) == ROWS


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/vnd.apache.parquet", b"PAR1 this is not parquet PAR1"),
        ("application/json", b'[{"order_id": 1, "reason": '),
        ("application/x-ndjson", b'{"order_id": 1, "reason": "x"}\n{oops\n'),
        ("text/csv", b"order_id,reason\nnot-a-number,x\n"),
    ],
    ids=["parquet", "json", "ndjson", "csv of the wrong type"],
)
def test_malformed_file_is_422_and_keeps_earlier_rows(
    content_type: str,
    body: bytes,
    client: TestClient,
    runtime: ProductRuntime,
    writer: dict[str, str],
) -> None:
    """A file that cannot be loaded changes nothing; the failure is recorded."""
    client.post(RETURNS, content=CSV_BODY, headers={**writer, "content-type": "text/csv"})
    response = client.post(RETURNS, content=body, headers={**writer, "content-type": content_type})
    assert_error(response, 422)
    assert _rows(runtime) == ROWS
    history = ingestion_history(runtime.storage, "returns")
    assert [h["status"] for h in history] == ["failed", "succeeded"]
    assert history[0]["error"]["code"] == response.json()["error"]["code"]
    server_path = str(runtime.upload_dir())
    assert server_path not in response.text, "the error shows where the server spools uploads"
    assert server_path not in str(history[0]["error"])


def test_failure_at_the_end_of_a_file_loads_nothing(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A bad last record means none of the good records before it are loaded."""
    body = b"".join(b'{"order_id": %d, "reason": "r"}\n' % i for i in range(1500)) + b"{oops\n"
    assert len(body) < UPLOAD_LIMIT
    response = client.post(
        RETURNS, content=body, headers={**writer, "content-type": "application/x-ndjson"}
    )
    assert_error(response, 422)
    assert _rows(runtime) == []


def test_pushing_to_a_pulled_source_is_409(
    client: TestClient, runtime: ProductRuntime, writer: dict[str, str]
) -> None:
    """A file source is pulled by its connector; pushing to it is a conflict."""
    with runtime.storage.reader() as cursor:
        before = cursor.execute("SELECT count(*) FROM input.orders").fetchall()
    response = client.post(
        "/input/orders", content=CSV_BODY, headers={**writer, "content-type": "text/csv"}
    )
    assert assert_error(response, 409, "conflict")["where"] == "sources/orders"
    with runtime.storage.reader() as cursor:
        assert cursor.execute("SELECT count(*) FROM input.orders").fetchall() == before


def test_unknown_source_is_404(client: TestClient, writer: dict[str, str]) -> None:
    """Only declared sources take data; the message lists them."""
    response = client.post(
        "/input/ghost", content=CSV_BODY, headers={**writer, "content-type": "text/csv"}
    )
    error = assert_error(response, 404, "not_found")
    assert "returns" in error["message"]
