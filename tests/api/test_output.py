"""The output port: paged JSON and streamed NDJSON, CSV, Parquet and Arrow; guarded queries.

Every format is parsed and compared with what DuckDB itself holds.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import date
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.api import assert_error, wait_for_run
from tests.conftest import TokenFactory

MAX_PAGE_ROWS = 500
ROWS = "/output/datasets/daily_sales"


@pytest.fixture
def settings(settings: DataproductSettings) -> DataproductSettings:
    """A small page cap, so capping is visible with the example's data."""
    return settings.model_copy(update={"max_page_rows": MAX_PAGE_ROWS})


@pytest.fixture
def reader(token: TokenFactory) -> dict[str, str]:
    """Headers of a consumer allowed to read: the example grants its datasets to analysts."""
    return token("output:read", groups=["sales-analysts"])


def _table(runtime: ProductRuntime, sql: str) -> pa.Table:
    with runtime.storage.reader() as cursor:
        return cursor.sql(sql).to_arrow_table()


def _plain(value: Any) -> Any:
    """A value as it reads back from JSON or CSV text."""
    return value.isoformat() if isinstance(value, date) else value


def _expected(runtime: ProductRuntime, columns: str = "*") -> list[dict[str, Any]]:
    """The dataset's rows in table order, as JSON would carry them (decimals exact)."""
    table = _table(runtime, f"SELECT {columns} FROM output.daily_sales ORDER BY rowid")
    return [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]


def _json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def test_json_page_has_envelope_and_typed_rows(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """Default format is JSON: a page of typed objects with its envelope."""
    response = client.get(f"{ROWS}?limit=5", headers=reader)
    assert response.headers["content-type"].startswith("application/json")
    page = _json(response.text)
    assert (page["dataset"], page["limit"], page["count"]) == ("daily_sales", 5, 5)
    assert page["next_cursor"]
    assert page["data"] == _expected(runtime)[:5]
    assert isinstance(page["data"][0]["orders"], int)


def test_walking_every_page_reads_every_row_once_in_order(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """Following next_cursor to the end returns the whole dataset, no row twice or missed."""
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = _json(client.get(ROWS, params=params, headers=reader).text)
        rows += page["data"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert page["count"] == 100
    total = int(_table(runtime, "SELECT count(*) AS n FROM output.daily_sales")["n"][0].as_py())
    assert len(rows) == total > 1000
    assert pages == -(-total // 100)
    assert rows == _expected(runtime)


def test_default_and_capped_page_sizes(client: TestClient, reader: dict[str, str]) -> None:
    """No limit gives the default page; a larger limit is capped at max_page_rows."""
    assert client.get(ROWS, headers=reader).json()["count"] == 100
    capped = client.get(f"{ROWS}?limit=100000", headers=reader).json()
    assert (capped["limit"], capped["count"]) == (MAX_PAGE_ROWS, MAX_PAGE_ROWS)


def test_ndjson_streams_every_row(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """One JSON object per line, every row, same values."""
    response = client.get(f"{ROWS}?format=ndjson", headers=reader)
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.text.splitlines()
    assert response.text.endswith("\n")
    assert [_json(line) for line in lines] == _expected(runtime)


def test_csv_streams_every_row_with_a_header(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """A header line, then every row; values read back equal to the table's."""
    response = client.get(f"{ROWS}?format=csv", headers=reader)
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="daily_sales.csv"' in response.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(response.text)))
    parsed = [{**r, "orders": int(r["orders"]), "revenue": Decimal(r["revenue"])} for r in records]
    assert parsed == _expected(runtime)


@pytest.mark.parametrize("file_format", ["parquet", "arrow"])
def test_binary_formats_equal_the_table(
    file_format: str, client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """Parquet and Arrow IPC carry the same schema and values as DuckDB's own Arrow."""
    response = client.get(f"{ROWS}?format={file_format}", headers=reader)
    assert response.status_code == 200
    if file_format == "parquet":
        assert response.headers["content-type"] == "application/vnd.apache.parquet"
        received = pq.read_table(io.BytesIO(response.content))
    else:
        assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
        received = pa.ipc.open_stream(response.content).read_all()
    expected = _table(runtime, "SELECT * FROM output.daily_sales ORDER BY rowid")
    assert received.schema.names == expected.schema.names
    assert received.schema.field("revenue").type == pa.decimal128(38, 2)
    assert received.schema.field("order_date").type == pa.date32()
    assert received.to_pylist() == expected.to_pylist()


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("text/csv", "text/csv"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("application/vnd.apache.parquet", "application/vnd.apache.parquet"),
        ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.stream"),
        ("application/xml;q=0.9, text/csv", "text/csv"),
        ("*/*", "application/json"),
    ],
)
def test_accept_header_picks_the_format(
    accept: str, media: str, client: TestClient, reader: dict[str, str]
) -> None:
    """Without `format=`, the Accept header chooses."""
    response = client.get(f"{ROWS}?limit=3", headers={**reader, "Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)


def test_format_parameter_wins_over_accept(client: TestClient, reader: dict[str, str]) -> None:
    """`format=` is explicit and beats Accept."""
    response = client.get(f"{ROWS}?format=csv&limit=2", headers={**reader, "Accept": "text/html"})
    assert response.headers["content-type"].startswith("text/csv")
    assert len(response.text.splitlines()) == 3


def test_unacceptable_accept_is_406(client: TestClient, reader: dict[str, str]) -> None:
    """Only formats we produce can be asked for."""
    response = client.get(ROWS, headers={**reader, "Accept": "application/xml"})
    assert_error(response, 406, "not_acceptable")


def test_unknown_format_is_400(client: TestClient, reader: dict[str, str]) -> None:
    """An unknown `format=` names the parameter."""
    error = assert_error(client.get(f"{ROWS}?format=xlsx", headers=reader), 400, "bad_request")
    assert error["where"] == "format"


@pytest.mark.parametrize("file_format", ["json", "csv", "arrow"])
def test_columns_projects_in_the_requested_order(
    file_format: str, client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """`columns=` keeps only those columns, in that order, in every format."""
    url = f"{ROWS}?columns=revenue,order_date&limit=4&format={file_format}"
    response = client.get(url, headers=reader)
    expected = _expected(runtime, "revenue, order_date")[:4]
    if file_format == "json":
        rows = _json(response.text)["data"]
        assert [list(r) for r in rows] == [["revenue", "order_date"]] * 4
        assert rows == expected
    elif file_format == "csv":
        assert response.text.splitlines()[0] == '"revenue","order_date"'
        assert len(response.text.splitlines()) == 5
    else:
        table = pa.ipc.open_stream(response.content).read_all()
        assert table.schema.names == ["revenue", "order_date"]
        assert table.num_rows == 4


def test_unknown_column_is_400(client: TestClient, reader: dict[str, str]) -> None:
    """An unknown column is refused, naming it and the columns there are."""
    response = client.get(f"{ROWS}?columns=country,secret", headers=reader)
    error = assert_error(response, 400, "bad_request")
    assert error["where"] == "columns"
    assert "secret" in error["message"] and "order_date" in error["message"]


@pytest.mark.parametrize("file_format", ["ndjson", "csv", "parquet", "arrow"])
def test_limit_bounds_streamed_formats(
    file_format: str, client: TestClient, reader: dict[str, str]
) -> None:
    """`limit` also bounds a streamed download."""
    response = client.get(f"{ROWS}?limit=7&format={file_format}", headers=reader)
    if file_format == "ndjson":
        assert len(response.text.splitlines()) == 7
    elif file_format == "csv":
        assert len(response.text.splitlines()) == 8
    elif file_format == "parquet":
        assert pq.read_table(io.BytesIO(response.content)).num_rows == 7
    else:
        assert pa.ipc.open_stream(response.content).read_all().num_rows == 7


def test_cursor_from_before_a_republish_is_409(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str], token: TokenFactory
) -> None:
    """After a new publish an old cursor is refused instead of mixing two versions."""
    cursor = client.get(f"{ROWS}?limit=10", headers=reader).json()["next_cursor"]
    admin = token("control:admin")
    run = client.post("/control/runs", headers=admin).json()
    assert wait_for_run(client, runtime, run["id"], admin)["status"] == "succeeded"
    error = assert_error(client.get(ROWS, params={"cursor": cursor}, headers=reader), 409)
    assert error["where"] == "cursor"
    fresh = client.get(f"{ROWS}?limit=10", headers=reader).json()["next_cursor"]
    assert client.get(ROWS, params={"cursor": fresh}, headers=reader).status_code == 200


@pytest.mark.parametrize(
    "cursor",
    ["garbage", base64.urlsafe_b64encode(b'{"run": "x"}').decode(), "e30"],
)
def test_malformed_cursor_is_400(cursor: str, client: TestClient, reader: dict[str, str]) -> None:
    """A cursor we did not make is a bad request."""
    error = assert_error(client.get(ROWS, params={"cursor": cursor}, headers=reader), 400)
    assert error["where"] == "cursor"


def test_cursor_with_a_streamed_format_is_400(client: TestClient, reader: dict[str, str]) -> None:
    """Cursors page JSON only."""
    cursor = client.get(f"{ROWS}?limit=1", headers=reader).json()["next_cursor"]
    response = client.get(ROWS, params={"cursor": cursor, "format": "csv"}, headers=reader)
    assert assert_error(response, 400)["where"] == "cursor"


def test_output_datasets_lists_the_readable_datasets(
    client: TestClient, reader: dict[str, str]
) -> None:
    """The output port lists datasets with their schema and links."""
    listed = client.get("/output/datasets", headers=reader).json()["datasets"]
    assert [d["name"] for d in listed] == ["customer_revenue", "daily_sales"]
    assert listed[1]["links"]["rows"].endswith(ROWS)


QUERY = (
    "SELECT country, sum(orders) AS orders FROM output.daily_sales "
    "GROUP BY country ORDER BY country"
)


def test_query_in_json(client: TestClient, runtime: ProductRuntime, reader: dict[str, str]) -> None:
    """A guarded SELECT returns the same rows DuckDB gives."""
    response = client.post("/output/query", json={"sql": QUERY}, headers=reader)
    body = _json(response.text)
    assert body["truncated"] is False
    assert body["data"] == _table(runtime, QUERY).to_pylist()
    limited = client.post("/output/query", json={"sql": QUERY, "limit": 2}, headers=reader)
    assert (limited.json()["count"], limited.json()["truncated"]) == (2, True)


def test_query_in_arrow(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str]
) -> None:
    """The same query streamed as Arrow IPC, also asked for through Accept."""
    by_body = client.post("/output/query", json={"sql": QUERY, "format": "arrow"}, headers=reader)
    by_accept = client.post(
        "/output/query",
        json={"sql": QUERY},
        headers={**reader, "Accept": "application/vnd.apache.arrow.stream"},
    )
    expected = _table(runtime, QUERY)
    for response in (by_body, by_accept):
        table = pa.ipc.open_stream(response.content).read_all()
        assert table.to_pylist() == expected.to_pylist()


def test_large_query_streams_in_several_batches(client: TestClient, reader: dict[str, str]) -> None:
    """A result larger than one batch arrives whole, in several record batches."""
    sql = "SELECT r AS n FROM range(300000) AS t(r)"
    response = client.post("/output/query", json={"sql": sql, "format": "arrow"}, headers=reader)
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.num_rows == 300000
    assert len(table.to_batches()) > 1
    assert table.column("n").to_pylist() == list(range(300000))


def test_refused_query_is_422_with_rule_line_and_column(
    client: TestClient, reader: dict[str, str]
) -> None:
    """The guard's verdict comes back with every violation and its position."""
    sql = "SELECT *\n  FROM read_csv('/etc/passwd')"
    error = assert_error(
        client.post("/output/query", json={"sql": sql}, headers=reader), 422, "sql_rejected"
    )
    violations = error["details"]["violations"]
    assert {v["rule"] for v in violations} >= {"no_outside_functions"}
    assert all(v["line"] == 2 and isinstance(v["column"], int) for v in violations)
    assert "line 2" in error["where"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM input.orders",
        "SELECT * FROM staging.orders_clean",
        "SELECT * FROM meta.datasets",
        "SELECT * FROM output.daily_sales d JOIN input.customers c ON d.country = c.country",
    ],
)
def test_query_outside_output_is_refused(
    sql: str, client: TestClient, reader: dict[str, str]
) -> None:
    """Consumers read the output layer only."""
    response = client.post("/output/query", json={"sql": sql, "format": "csv"}, headers=reader)
    error = assert_error(response, 422, "sql_rejected")
    assert error["details"]["violations"][0]["rule"] == "only_layer_tables"


@pytest.mark.parametrize("file_format", ["json", "arrow", "csv"])
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT CAST(country AS INTEGER) AS c FROM output.daily_sales",
        "SELECT orders // 0 AS x FROM output.daily_sales",
        "SELECT no_such_column FROM output.daily_sales",
    ],
)
def test_runtime_sql_errors_are_client_errors(
    sql: str, file_format: str, client: TestClient, reader: dict[str, str]
) -> None:
    """A query that fails inside DuckDB is the caller's 4xx, not a 500."""
    response = client.post(
        "/output/query", json={"sql": sql, "format": file_format}, headers=reader
    )
    assert_error(response, 422)


NON_FINITE = (
    "SELECT x FROM (VALUES (1.5::DOUBLE), ('inf'::DOUBLE), ('-inf'::DOUBLE), ('nan'::DOUBLE))"
    " AS t(x)"
)


def _strict_json(text: str) -> Any:
    """Parse as standard JSON: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} is not JSON: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_null_in_query_json(
    client: TestClient, reader: dict[str, str]
) -> None:
    """NaN and infinities come out of a query as null in JSON and NDJSON; Arrow keeps them."""
    body = {"sql": NON_FINITE}
    page = client.post("/output/query", json=body, headers=reader)
    assert [r["x"] for r in _strict_json(page.text)["data"]] == [1.5, None, None, None]
    lines = client.post("/output/query", json={**body, "format": "ndjson"}, headers=reader)
    assert [_strict_json(line)["x"] for line in lines.text.splitlines()] == [1.5, None, None, None]
    arrow = client.post("/output/query", json={**body, "format": "arrow"}, headers=reader)
    values = pa.ipc.open_stream(arrow.content).read_all().column("x").to_pylist()
    assert values[:3] == [1.5, float("inf"), float("-inf")]
    assert values[3] != values[3]


def test_non_finite_numbers_are_null_in_dataset_json(
    client: TestClient, runtime: ProductRuntime, reader: dict[str, str], token: TokenFactory
) -> None:
    """A published DOUBLE column holding NaN or infinities still pages as valid JSON."""
    admin = token("control:admin")
    models = client.get("/control/pipeline", headers=admin).json()["models"]
    models.append({"name": "odd_numbers", "sql": NON_FINITE})
    assert client.put("/control/pipeline", json={"models": models}, headers=admin).is_success
    run = client.post("/control/runs", headers=admin).json()
    assert wait_for_run(client, runtime, run["id"], admin)["status"] == "succeeded"
    reader = token("output:read", "control:admin")  # a new dataset: only admins have a grant
    page = client.get("/output/datasets/odd_numbers", headers=reader)
    assert [r["x"] for r in _strict_json(page.text)["data"]] == [1.5, None, None, None]
    lines = client.get("/output/datasets/odd_numbers?format=ndjson", headers=reader)
    assert [_strict_json(line)["x"] for line in lines.text.splitlines()] == [1.5, None, None, None]
