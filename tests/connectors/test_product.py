"""Products compose: a continental product reads a country product's output port.

The country product is the example (`sales-eu`) served by a real `dataproduct serve` process;
the continental product reads its `daily_sales` through the `product` connector. The output
port's watermark filter (`after_column` / `after`) is tested in-process at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from connectors.product import watermark_text
from dataproduct.connector import LoadState
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.security import issue_token
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.api import assert_error, serve, serve_example, wait_for_run
from tests.conftest import TokenFactory
from tests.connectors.test_http import assert_refused_elsewhere, serve_in_thread, serve_recorder
from tests.connectors.upstream import ADMIN, READER, Country, connector, pull, refresh
from tests.server.conftest import free_port

pytestmark = pytest.mark.server


def per_country(table: pa.Table) -> dict[str, tuple[int, Decimal]]:
    """Orders and revenue summed per country."""
    summed = table.group_by("country").aggregate([("orders", "sum"), ("revenue", "sum")])
    return {row["country"]: (row["orders_sum"], row["revenue_sum"]) for row in summed.to_pylist()}


# composition -------------------------------------------------------------------------------

CONTINENTAL = """
name: sales-europe
domain: sales
version: 1.0.0
owner: {{name: Test, email: test@example.com}}
sources:
  sales_eu:
    type: product
    url: {url}
    dataset: daily_sales
    api_key: "${{env:SALES_EU_KEY}}"
pipeline:
  - name: country_totals
    layer: output
    sql: |
      SELECT country, sum(orders) AS orders, sum(revenue) AS revenue
      FROM input.sales_eu
      GROUP BY ALL
"""


def test_continental_product_aggregates_what_the_country_serves(
    tmp_path: Path,
    country: Country,
    settings: DataproductSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SALES_EU_KEY", country.api_key)
    product = tmp_path / "sales-europe"
    product.mkdir()
    (product / "dataproduct.yaml").write_text(CONTINENTAL.format(url=country.base))
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with serve(product, settings.model_copy(update={"ingest_on_start": False})) as client:
        answer = client.post("/control/ingest?run=true", headers=admin)
        assert answer.status_code == 200, answer.text
        [ingestion] = answer.json()["ingestions"]
        served = country.arrow("daily_sales")
        assert (ingestion["status"], ingestion["rows"]) == ("succeeded", served.num_rows)
        run = wait_for_run(client, client.app.state.runtime, answer.json()["run"]["id"], admin)
        assert run["status"] == "succeeded", run
        totals = client.get("/output/datasets/country_totals?format=arrow", headers=admin)
        assert totals.status_code == 200, totals.text
        table = pa.ipc.open_stream(totals.content).read_all()
    expected = per_country(served)
    assert len(expected) > 3
    assert {
        row["country"]: (row["orders"], row["revenue"]) for row in table.to_pylist()
    } == expected
    assert pa.types.is_decimal(table.schema.field("revenue").type)


def test_bearer_token_from_the_environment_reads_typed_rows(
    tmp_path: Path, country: Country, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTRY_TOKEN", READER)
    table = pull(tmp_path, url=country.base, dataset="daily_sales", token="${env:COUNTRY_TOKEN}")
    served = country.arrow("daily_sales")
    assert table.num_rows == served.num_rows > 100
    assert table.schema == served.schema
    assert table.schema.field("order_date").type == pa.date32()
    assert table.sort_by("order_date").equals(served.sort_by("order_date"))
    source = connector(tmp_path, url=country.base, dataset="daily_sales", token="${env:X}")
    assert source.describe()["auth"] == "token" and "${env:X}" not in str(source.describe())


INCREMENTAL = """
name: sales-europe-incremental
domain: sales
version: 1.0.0
owner: {{name: Test, email: test@example.com}}
sources:
  sales_eu:
    type: product
    url: {url}
    dataset: daily_sales
    token: "${{env:COUNTRY_TOKEN}}"
    incremental: {{cursor: order_date}}
"""


def test_incremental_pull_brings_only_rows_past_the_watermark(
    tmp_path: Path,
    country: Country,
    settings: DataproductSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COUNTRY_TOKEN", READER)
    options = {
        "url": country.base,
        "dataset": "daily_sales",
        "token": "${env:COUNTRY_TOKEN}",
        "incremental": {"cursor": "order_date"},
    }
    product = tmp_path / "incremental"
    product.mkdir()
    (product / "dataproduct.yaml").write_text(INCREMENTAL.format(url=country.base))
    runtime = ProductRuntime.open(product, settings)
    try:
        [first] = runtime.ingest("sales_eu", principal="test")
        before = country.arrow("daily_sales")
        assert (first.status, first.rows) == ("succeeded", before.num_rows)
        watermark = pc.max(before["order_date"]).as_py()
        assert isinstance(watermark, date)
        # upstream: four new orders on three days after the watermark, ingested and run there
        with (country.product_dir / "data" / "orders.csv").open("a", encoding="utf-8") as out:
            out.write(NEW_ORDERS)
        refresh(country)
        # the connector alone, from the watermark the core would hand it
        second = pull(tmp_path, LoadState(watermark=watermark), **options)
        assert rows_of(second) == NEW_DAILY_SALES
        assert pull(tmp_path, LoadState(watermark=date(2030, 1, 3)), **options).num_rows == 0
        # and through the product: the second ingestion appends only the new rows
        [again] = runtime.ingest("sales_eu", principal="test")
        assert (again.status, again.rows) == ("succeeded", 3)
        with runtime.storage.reader() as cursor:
            total = cursor.execute("SELECT count(*) FROM input.sales_eu").fetchone()
            loaded = cursor.execute(
                "SELECT order_date, country, orders, revenue FROM input.sales_eu "
                "WHERE order_date > ? ORDER BY order_date",
                [watermark],
            ).fetchall()
        assert total == (before.num_rows + 3,)
        assert loaded == NEW_DAILY_SALES
    finally:
        runtime.close()


NEW_ORDERS = (
    "90001,C0001,2030-01-01,100.50,EUR,paid\n"
    "90002,C0001,2030-01-02,200.50,EUR,paid\n"
    "90003,C0001,2030-01-03,300.50,EUR,paid\n"
    "90004,C0001,2030-01-03,1.25,EUR,paid\n"
)
NEW_DAILY_SALES = [  # C0001 lives in IT
    (date(2030, 1, 1), "IT", 1, Decimal("100.50")),
    (date(2030, 1, 2), "IT", 1, Decimal("200.50")),
    (date(2030, 1, 3), "IT", 2, Decimal("301.75")),
]


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    rows = sorted(table.to_pylist(), key=lambda row: row["order_date"])
    return [(r["order_date"], r["country"], r["orders"], r["revenue"]) for r in rows]


# errors ------------------------------------------------------------------------------------


def test_wrong_token_is_refused_without_showing_it(
    tmp_path: Path, country: Country, monkeypatch: pytest.MonkeyPatch
) -> None:
    forged = issue_token("another-secret-that-is-long-enough-0123", "x", ["output:read"])
    monkeypatch.setenv("COUNTRY_TOKEN", forged)
    with pytest.raises(SourceError) as caught:
        pull(tmp_path, url=country.base, dataset="daily_sales", token="${env:COUNTRY_TOKEN}")
    error = caught.value
    assert not isinstance(error, SourceUnavailableError)
    assert "answered 401" in error.message and "refused the credential" in error.message
    assert forged not in error.message and forged not in (error.where or "")


def test_wrong_api_key_is_refused(tmp_path: Path, country: Country) -> None:
    fake = "dpk_0123456789abcdef_" + "A" * 43
    with pytest.raises(SourceError, match="refused the credential") as caught:
        pull(tmp_path, url=country.base, dataset="daily_sales", api_key=fake)
    assert fake not in caught.value.message


def test_unknown_dataset_is_a_source_error(
    tmp_path: Path, country: Country, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTRY_TOKEN", READER)
    with pytest.raises(SourceError, match="no dataset 'nothing_here'") as caught:
        pull(tmp_path, url=country.base, dataset="nothing_here", token="${env:COUNTRY_TOKEN}")
    assert not isinstance(caught.value, SourceUnavailableError)
    assert "answered 404" in caught.value.message


def test_upstream_down_is_transient(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceUnavailableError, match="cannot reach the upstream product"):
        pull(tmp_path, url=down, dataset="daily_sales", token="t")


def test_token_and_api_key_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="token or api_key, not both"):
        connector(tmp_path, url="http://127.0.0.1:1", dataset="d", token="a", api_key="b")


# the output port's watermark filter --------------------------------------------------------


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The example product, in-process, for read-only checks."""
    with serve_example(tmp_path_factory.mktemp("example")) as client:
        yield client


def arrow(client: TestClient, path: str, headers: dict[str, str]) -> pa.Table:
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.text
    return pa.ipc.open_stream(response.content).read_all()


def test_after_compares_typed_values(example: TestClient, token: TokenFactory) -> None:
    reader = token("output:read")
    everything = arrow(example, "/output/datasets/daily_sales?format=arrow", reader)
    # a decimal: 99.00 > 100.5 as text, not as a number
    past = arrow(
        example,
        "/output/datasets/daily_sales?format=arrow&after_column=revenue&after=100.5",
        reader,
    )
    expected = everything.filter(pc.greater(everything["revenue"], Decimal("100.5")))
    assert 0 < past.num_rows < everything.num_rows
    assert past.equals(expected)
    dated = arrow(
        example,
        "/output/datasets/daily_sales?format=arrow&after_column=order_date&after=2026-09-30",
        reader,
    )
    assert dated.equals(everything.filter(pc.greater(everything["order_date"], date(2026, 9, 30))))
    assert dated.num_rows > 0


def test_after_applies_to_json_pages_and_is_part_of_the_cache_key(
    example: TestClient, token: TokenFactory
) -> None:
    reader = token("output:read")
    path = "/output/datasets/daily_sales?limit=5000"
    whole = example.get(path, headers=reader).json()
    past = example.get(f"{path}&after_column=orders&after=3", headers=reader).json()
    assert past["count"] == sum(1 for row in whole["data"] if row["orders"] > 3) > 0
    assert all(row["orders"] > 3 for row in past["data"])
    again = example.get(path, headers=reader).json()
    assert again["count"] == whole["count"]


def test_after_on_an_unknown_column_is_400(example: TestClient, token: TokenFactory) -> None:
    answer = example.get(
        "/output/datasets/daily_sales?format=arrow&after_column=updated_at&after=1",
        headers=token("output:read"),
    )
    error = assert_error(answer, 400, "bad_request")
    assert "'updated_at'" in error["message"] and error["where"] == "after_column"


def test_after_needs_both_parameters_and_a_value_of_the_type(
    example: TestClient, token: TokenFactory
) -> None:
    reader = token("output:read")
    alone = example.get("/output/datasets/daily_sales?after=1", headers=reader)
    assert assert_error(alone, 400)["where"] == "after_column"
    wrong = example.get(
        "/output/datasets/daily_sales?after_column=orders&after=1%20OR%201=1", headers=reader
    )
    error = assert_error(wrong, 400)
    assert error["where"] == "after" and "BIGINT" in error["message"]


def test_after_on_a_masked_column_is_refused(example: TestClient, token: TokenFactory) -> None:
    partner = token("output:read", groups=["eu-partners"])
    for column in ("revenue", "customer_id"):  # masked null (confidential), masked by hash
        answer = example.get(
            f"/output/datasets/customer_revenue?format=arrow&after_column={column}&after=1",
            headers=partner,
        )
        error = assert_error(answer, 403, "forbidden")
        assert f"'{column}'" in error["message"] and "masked" in error["message"]


def test_after_keeps_the_grants_row_filter(example: TestClient, token: TokenFactory) -> None:
    analyst = token("output:read", groups=["sales-analysts"])
    partner = token("output:read", groups=["eu-partners"])
    everything = arrow(example, "/output/datasets/customer_revenue?format=arrow", analyst)
    past = arrow(
        example,
        "/output/datasets/customer_revenue?format=arrow&after_column=orders&after=20",
        partner,
    )
    in_de_fr = pc.is_in(everything["country"], pa.array(["DE", "FR"]))
    expected = everything.filter(pc.and_(in_de_fr, pc.greater(everything["orders"], 20)))
    assert 0 < past.num_rows < everything.filter(in_de_fr).num_rows
    assert sorted(past["orders"].to_pylist()) == sorted(expected["orders"].to_pylist())
    assert set(past["country"].to_pylist()) <= {"DE", "FR"}
    assert past["revenue"].null_count == past.num_rows  # still masked


# an upstream that misbehaves ---------------------------------------------------------------


def _arrow_bytes() -> bytes:
    table = pa.table({"id": list(range(50_000)), "label": [f"row-{i}" for i in range(50_000)]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10_000):
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


async def fake_dataset(request: Request) -> Response:
    """`/output/datasets/{name}` of an upstream that answers badly on purpose."""
    request.app.state.seen.append(dict(request.query_params))
    request.app.state.keys.append(request.headers.get("x-api-key"))
    name = request.path_params["name"]
    if name == "moved":  # same origin
        return RedirectResponse(f"/output/datasets/whole?{request.url.query}", status_code=307)
    if name == "away":  # another origin
        return RedirectResponse(f"{request.app.state.elsewhere}/output/datasets/whole")
    body = _arrow_bytes()
    if name == "whole":
        return Response(body, media_type="application/vnd.apache.arrow.stream")
    if name == "half":
        return Response(body[: len(body) // 2], media_type="application/vnd.apache.arrow.stream")
    if name == "busy":
        return JSONResponse({"error": {"code": "x", "message": "try later"}}, status_code=503)
    return Response("<html>not arrow</html>", media_type="text/html")


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[tuple[str, Starlette]]:
    app = Starlette(routes=[Route("/output/datasets/{name}", fake_dataset)])
    app.state.seen = []
    app.state.keys = []
    with serve_in_thread(app) as base:
        yield base, app


def test_batches_stream_and_parameters_carry_the_watermark(
    tmp_path: Path, fake_upstream: tuple[str, Starlette]
) -> None:
    base, app = fake_upstream
    app.state.seen.clear()
    options = {"url": base, "dataset": "whole", "version": 2, "incremental": {"cursor": "ts"}}
    watermark = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with connector(tmp_path, **options).open_stream(LoadState(watermark=watermark)) as reader:
        sizes = [batch.num_rows for batch in reader]
    assert sizes == [10_000] * 5
    assert app.state.seen == [
        {
            "format": "arrow",
            "version": "2",
            "after_column": "ts",
            "after": "2030-01-02T03:04:05+00:00",
        }
    ]
    pull(tmp_path, **options)  # no watermark: no filter
    assert app.state.seen[-1] == {"format": "arrow", "version": "2"}


def test_a_stream_cut_short_is_a_source_error(
    tmp_path: Path, fake_upstream: tuple[str, Starlette]
) -> None:
    with pytest.raises(SourceError, match="malformed or was cut short"):
        pull(tmp_path, url=fake_upstream[0], dataset="half")


def test_a_body_that_is_not_arrow_is_a_source_error(
    tmp_path: Path, fake_upstream: tuple[str, Starlette]
) -> None:
    with pytest.raises(SourceError, match="not an Arrow stream") as caught:
        pull(tmp_path, url=fake_upstream[0], dataset="garbage")
    assert not isinstance(caught.value, SourceUnavailableError)


def test_an_upstream_503_is_transient(tmp_path: Path, fake_upstream: tuple[str, Starlette]) -> None:
    with pytest.raises(SourceUnavailableError, match="answered 503: try later"):
        pull(tmp_path, url=fake_upstream[0], dataset="busy")


API_KEY = "dpk_redirect_test_" + "K" * 40


def test_a_same_origin_redirect_is_followed_with_the_api_key(
    tmp_path: Path, fake_upstream: tuple[str, Starlette]
) -> None:
    base, app = fake_upstream
    app.state.seen.clear()
    app.state.keys.clear()
    table = pull(tmp_path, url=base, dataset="moved", api_key=API_KEY)
    assert table.num_rows == 50_000
    assert table.column("id").to_pylist()[:3] == [0, 1, 2]
    assert [seen["format"] for seen in app.state.seen] == ["arrow", "arrow"]
    assert app.state.keys == [API_KEY, API_KEY]  # moved, then whole


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[str, Starlette]]:
    with serve_recorder() as served:
        yield served


def test_a_cross_origin_redirect_is_refused_and_the_api_key_never_leaves(
    tmp_path: Path,
    fake_upstream: tuple[str, Starlette],
    elsewhere: tuple[str, Starlette],
) -> None:
    base, app = fake_upstream
    other, other_app = elsewhere
    app.state.elsewhere = other
    other_app.state.seen.clear()
    with pytest.raises(SourceError) as caught:
        pull(tmp_path, url=base, dataset="away", api_key=API_KEY)
    assert_refused_elsewhere(caught.value, "a redirect", base, other, API_KEY)
    assert other_app.state.seen == []  # not a single request reached the other origin


PLUS_TWO = timezone(timedelta(hours=2))


@pytest.mark.parametrize(
    ("watermark", "sent"),
    [
        (
            datetime(2030, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            "2030-01-02T03:04:05+00:00",
        ),
        (datetime(2030, 1, 2, 3, 4, 5), "2030-01-02T03:04:05"),
        (date(2030, 1, 2), "2030-01-02"),
        (Decimal("10.50"), "10.50"),
        (42, "42"),
        (0.1, "0.1"),
        ("C0042", "C0042"),
    ],
)
def test_watermarks_are_sent_as_text_the_port_types(watermark: Any, sent: str) -> None:
    assert watermark_text(watermark) == sent
