"""The HTTP connector against a real HTTP server on loopback (Starlette under uvicorn)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from dataproduct.connector import LoadState, SourceContext, build_connector
from dataproduct.descriptor import SourceConfig
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.ingest import BATCH_ROWS
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.server.conftest import free_port, serve_in_thread

API_TOKEN = "tok-4f1c9e77b2"
ORDERS = [
    {"id": 1, "customer": "C1", "amount": 10.5},
    {"id": 2, "customer": "C2", "amount": 20.25},
    {"id": 3, "customer": "C1", "amount": 7.0},
    {"id": 4, "customer": "C3", "amount": 1.75},
    {"id": 5, "customer": "C2", "amount": 99.0},
]
ORDERS_CSV = "id,customer,amount\n" + "".join(
    f"{o['id']},{o['customer']},{o['amount']}\n" for o in ORDERS
)


# the HTTP server under test ---------------------------------------------------------------


def _parquet() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ORDERS), sink)
    return sink.getvalue()


def _ndjson(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


async def orders_csv(request: Request) -> Response:
    return Response(ORDERS_CSV, media_type="text/csv")


async def orders_json(request: Request) -> Response:
    return JSONResponse(ORDERS)


async def orders_ndjson(request: Request) -> Response:
    return Response(_ndjson(ORDERS), media_type="application/x-ndjson")


async def orders_parquet(request: Request) -> Response:
    return Response(_parquet(), media_type="application/octet-stream")


async def export(request: Request) -> Response:
    """No extension in the URL: the format comes from the Content-Type."""
    return Response(ORDERS_CSV, media_type="text/csv; charset=utf-8")


async def wrapped(request: Request) -> Response:
    return JSONResponse({"result": {"items": ORDERS, "total": len(ORDERS)}, "ok": True})


async def secure(request: Request) -> Response:
    if request.headers.get("authorization") != f"Bearer {API_TOKEN}":
        return JSONResponse({"error": "bad token"}, status_code=401)
    return JSONResponse({"data": ORDERS[:2]})


async def paged(request: Request) -> Response:
    """`?page=N&per_page=M`, pages from 1; an empty list past the end."""
    page = int(request.query_params["page"])
    size = int(request.query_params.get("per_page", "2"))
    request.app.state.calls.append(f"paged:{page}")
    return JSONResponse(ORDERS[(page - 1) * size : page * size])


async def linked(request: Request) -> Response:
    """NDJSON, two rows a page, the next page in a relative `Link` header."""
    start = int(request.query_params.get("from", "0"))
    rows = ORDERS[start : start + 2]
    headers = {}
    if start + 2 < len(ORDERS):
        headers["Link"] = f'</linked?from={start + 2}>; rel="next", </linked>; rel="first"'
    return Response(_ndjson(rows), media_type="application/x-ndjson", headers=headers)


async def cursored(request: Request) -> Response:
    """`{"data": [...], "meta": {"next": <cursor or null>}}`, the cursor a row offset."""
    start = int(request.query_params.get("cursor", "0"))
    nxt = str(start + 2) if start + 2 < len(ORDERS) else None
    return JSONResponse({"data": ORDERS[start : start + 2], "meta": {"next": nxt}})


async def endless(request: Request) -> Response:
    page = int(request.query_params["page"])
    return JSONResponse([{"page": page}])


async def redirect(request: Request) -> Response:
    """`/redirect?to=<url>`: 307 to wherever `to` says."""
    return RedirectResponse(request.query_params["to"], status_code=307)


async def link_to(request: Request) -> Response:
    """One NDJSON page whose `rel=next` link is `?to=<url>`."""
    link = f'<{request.query_params["to"]}>; rel="next"'
    return Response(_ndjson(ORDERS[:2]), media_type="application/x-ndjson", headers={"Link": link})


async def recorded_orders(request: Request) -> Response:
    """Another origin: it writes down the headers of each request, answers the orders."""
    request.app.state.seen.append(dict(request.headers))
    return Response(ORDERS_CSV, media_type="text/csv")


async def fail(request: Request) -> Response:
    return Response("boom", status_code=int(request.path_params["status"]))


async def malformed(request: Request) -> Response:
    return Response('[{"id": 1, "customer": "C1"}, {"id": 2, "cust', media_type="application/json")


async def slow(request: Request) -> Response:
    await asyncio.sleep(1.0)
    return Response(ORDERS_CSV, media_type="text/csv")


LARGE_ROWS = 600_000


async def large(request: Request) -> StreamingResponse:
    """A CSV body of LARGE_ROWS rows, generated while it is sent."""

    async def lines() -> AsyncIterator[bytes]:
        yield b"id,label\n"
        for start in range(0, LARGE_ROWS, 50_000):
            chunk = "".join(f"{i},row-{i}\n" for i in range(start, start + 50_000))
            yield chunk.encode()

    return StreamingResponse(lines(), media_type="text/csv")


def api() -> Starlette:
    """The HTTP API the connector reads in these tests."""
    app = Starlette(
        routes=[
            Route("/orders.csv", orders_csv),
            Route("/orders.json", orders_json),
            Route("/orders.ndjson", orders_ndjson),
            Route("/files/orders.parquet", orders_parquet),
            Route("/export", export),
            Route("/wrapped", wrapped),
            Route("/secure", secure),
            Route("/paged", paged),
            Route("/linked", linked),
            Route("/cursored", cursored),
            Route("/endless", endless),
            Route("/redirect", redirect),
            Route("/link-to", link_to),
            Route("/status/{status:int}", fail),
            Route("/malformed", malformed),
            Route("/slow", slow),
            Route("/large", large),
        ]
    )
    app.state.calls = []
    return app


@pytest.fixture(scope="module")
def app() -> Starlette:
    return api()


@pytest.fixture(scope="module")
def base(app: Starlette) -> Iterator[str]:
    with serve_in_thread(app) as url:
        yield url


@contextmanager
def serve_recorder() -> Iterator[tuple[str, Starlette]]:
    """Another origin (another port) that records the headers reaching it: URL and app."""
    app = Starlette(routes=[Route("/{path:path}", recorded_orders)])
    app.state.seen = []
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[str, Starlette]]:
    with serve_recorder() as served:
        yield served


# helpers -----------------------------------------------------------------------------------


def connector(tmp_path: Path, **options: Any) -> Any:
    config = SourceConfig.model_validate({"type": "http", **options})
    return build_connector("orders", config, SourceContext(tmp_path, tmp_path / "data"))


def read(tmp_path: Path, **options: Any) -> pa.Table:
    with connector(tmp_path, **options).open_stream(LoadState()) as reader:
        return reader.read_all()


def sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def downloads_left(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "data" / "downloads").rglob("*") if p.is_file()]


def assert_refused_elsewhere(
    error: SourceError, what: str, origin: str, other: str, secret: str
) -> None:
    """`error` refuses to follow `what` from `origin` to `other`, and hides `secret`."""
    assert not isinstance(error, SourceUnavailableError)
    assert error.message.startswith(f"refused to follow {what} from {origin} ")
    assert f"to another origin {other}:" in error.message
    assert secret not in error.message


# formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "file_format"),
    [
        ("/orders.csv", None),  # from the URL's extension
        ("/orders.json", "json"),
        ("/orders.ndjson", None),  # from the Content-Type
        ("/files/orders.parquet", None),  # octet-stream: from the extension
        ("/export", None),  # from the Content-Type
    ],
)
def test_each_format_is_read_with_values_and_types(
    tmp_path: Path, base: str, path: str, file_format: str | None
) -> None:
    options = {"url": base + path} | ({"format": file_format} if file_format else {})
    table = read(tmp_path, **options)
    assert table.num_rows == 5
    assert sorted_rows(table) == ORDERS
    assert pa.types.is_integer(table.schema.field("id").type)
    assert pa.types.is_floating(table.schema.field("amount").type)
    assert downloads_left(tmp_path) == []  # the temporary bodies are gone


def test_a_large_body_streams_in_batches(tmp_path: Path, base: str) -> None:
    with connector(tmp_path, url=f"{base}/large", format="csv").open_stream(LoadState()) as reader:
        sizes = [batch.num_rows for batch in reader]
        assert len(downloads_left(tmp_path)) == 1  # the body is on disk, not in memory
    assert sum(sizes) == LARGE_ROWS
    assert len(sizes) > 1 and max(sizes) <= BATCH_ROWS
    assert downloads_left(tmp_path) == []


def test_records_path_unwraps_a_json_body(tmp_path: Path, base: str) -> None:
    table = read(tmp_path, url=f"{base}/wrapped", records_path="result.items")
    assert table.column_names == ["id", "customer", "amount"]
    assert sorted_rows(table) == ORDERS


def test_records_path_that_is_not_there_is_a_source_error(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceError, match="malformed json body") as caught:
        read(tmp_path, url=f"{base}/wrapped", records_path="result.rows")
    assert "rows" in caught.value.message
    assert str(tmp_path) not in caught.value.message  # not the temporary file's path


def test_records_path_needs_a_json_body(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceError, match="records_path needs a JSON body, not csv"):
        read(tmp_path, url=f"{base}/orders.csv", records_path="data")


def test_bearer_token_from_the_environment(
    tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    headers = {"Authorization": "Bearer ${env:API_TOKEN}"}
    table = read(tmp_path, url=f"{base}/secure", headers=headers, records_path="data")
    assert sorted_rows(table) == ORDERS[:2]
    source = connector(tmp_path, url=f"{base}/secure", headers=headers)
    assert API_TOKEN not in json.dumps(source.describe())


def test_refused_token_is_a_source_error_without_the_token(
    tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "wrong-token-123")
    with pytest.raises(SourceError) as caught:
        read(tmp_path, url=f"{base}/secure", headers={"Authorization": "Bearer ${env:API_TOKEN}"})
    assert not isinstance(caught.value, SourceUnavailableError)
    assert "401" in caught.value.message and f"{base}/secure" in caught.value.message
    assert "refused" in caught.value.message
    assert "wrong-token-123" not in caught.value.message


# pagination --------------------------------------------------------------------------------


def test_page_pagination_stops_at_an_empty_page(tmp_path: Path, base: str, app: Any) -> None:
    app.state.calls.clear()
    table = read(tmp_path, url=f"{base}/paged", pagination={"type": "page"}, format="json")
    assert sorted_rows(table) == ORDERS
    assert app.state.calls == ["paged:1", "paged:2", "paged:3", "paged:4"]


def test_page_pagination_with_a_size_stops_at_a_short_page(
    tmp_path: Path, base: str, app: Any
) -> None:
    app.state.calls.clear()
    pagination = {"type": "page", "param": "page", "start": 1, "size_param": "per_page", "size": 3}
    table = read(tmp_path, url=f"{base}/paged", pagination=pagination)
    assert sorted_rows(table) == ORDERS
    assert app.state.calls == ["paged:1", "paged:2"]  # 3 rows, then 2: the last


def test_link_pagination_follows_rel_next(tmp_path: Path, base: str) -> None:
    table = read(tmp_path, url=f"{base}/linked", pagination={"type": "link"}, format="ndjson")
    assert table.num_rows == 5
    assert sorted_rows(table) == ORDERS


def test_cursor_pagination_sends_the_next_cursor_back(tmp_path: Path, base: str) -> None:
    pagination = {"type": "cursor", "param": "cursor", "path": "meta.next"}
    table = read(tmp_path, url=f"{base}/cursored", pagination=pagination, records_path="data")
    assert table.num_rows == 5
    assert sorted_rows(table) == ORDERS


# credentials stay on the source's origin ----------------------------------------------------

CREDENTIAL_HEADERS = {"Authorization": "Bearer ${env:API_TOKEN}", "X-Api-Key": "${env:API_TOKEN}"}


def test_a_same_origin_redirect_is_followed(
    tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    to = f"{base}/secure"
    table = read(
        tmp_path, url=f"{base}/redirect?to={to}", headers=CREDENTIAL_HEADERS, records_path="data"
    )
    assert sorted_rows(table) == ORDERS[:2]  # /secure answers only with the token


@pytest.mark.parametrize(
    ("route", "options", "what", "where"),
    [
        ("redirect", {}, "a redirect", "sources.orders"),
        (
            "link-to",
            {"pagination": {"type": "link"}},
            "a next-page link",
            "sources.orders.pagination",
        ),
    ],
)
def test_a_cross_origin_redirect_or_next_link_is_refused_before_any_header_leaves(
    tmp_path: Path,
    base: str,
    elsewhere: tuple[str, Starlette],
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    options: dict[str, Any],
    what: str,
    where: str,
) -> None:
    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    other, other_app = elsewhere
    other_app.state.seen.clear()
    url = f"{base}/{route}?to={other}/orders.csv"
    with pytest.raises(SourceError) as caught:
        read(tmp_path, url=url, headers=CREDENTIAL_HEADERS, **options)
    assert_refused_elsewhere(caught.value, what, base, other, API_TOKEN)
    assert caught.value.where == where
    assert other_app.state.seen == []  # the other server got no request at all
    assert downloads_left(tmp_path) == []


def test_the_other_origin_does_answer_when_asked_directly(
    tmp_path: Path, elsewhere: tuple[str, Starlette]
) -> None:
    """The refusal above is the guard's doing, not a server that cannot be reached."""
    other, other_app = elsewhere
    other_app.state.seen.clear()
    table = read(tmp_path, url=f"{other}/orders.csv", headers={"X-Api-Key": "public"})
    assert sorted_rows(table) == ORDERS
    assert [seen["x-api-key"] for seen in other_app.state.seen] == ["public"]


def test_a_next_link_to_another_scheme_is_refused(tmp_path: Path, base: str) -> None:
    https = base.replace("http://", "https://")
    with pytest.raises(SourceError, match=r"another origin https://127\.0\.0\.1:\d+:"):
        read(tmp_path, url=f"{base}/link-to?to={https}/linked", pagination={"type": "link"})


def test_max_pages_guards_an_endless_api(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceError, match="more than max_pages=3"):
        read(tmp_path, url=f"{base}/endless", pagination={"type": "page"}, max_pages=3)
    assert downloads_left(tmp_path) == []


# errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_throttling_are_transient(tmp_path: Path, base: str, status: int) -> None:
    with pytest.raises(SourceUnavailableError, match=f"answered {status}"):
        read(tmp_path, url=f"{base}/status/{status}", format="csv")


def test_not_found_is_permanent_and_masks_secret_parameters(
    tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERS_KEY", "k-secret-998")
    with pytest.raises(SourceError) as caught:
        read(
            tmp_path,
            url=f"{base}/status/404",
            params={"api_key": "${env:ORDERS_KEY}", "region": "eu"},
            format="csv",
        )
    error = caught.value
    assert not isinstance(error, SourceUnavailableError)
    assert error.message == f"{base}/status/404?api_key=***&region=eu answered 404 Not Found"
    assert error.where == "sources.orders.url"


def test_malformed_body_is_a_source_error(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceError, match="malformed json body from") as caught:
        read(tmp_path, url=f"{base}/malformed")
    assert not isinstance(caught.value, SourceUnavailableError)
    assert str(tmp_path) not in caught.value.message


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/orders.csv"
    with pytest.raises(SourceUnavailableError, match="cannot reach") as caught:
        read(tmp_path, url=url)
    assert caught.value.where == "sources.orders"


def test_timeout_is_transient(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceUnavailableError, match=r"did not answer within 0\.2 s"):
        read(tmp_path, url=f"{base}/slow", timeout_s=0.2)


def test_unknown_format_asks_for_one(tmp_path: Path, base: str) -> None:
    with pytest.raises(SourceError, match="set 'format'"):
        read(tmp_path, url=f"{base}/status/200")


# through a real product -------------------------------------------------------------------


def test_ingest_through_a_product(
    tmp_path: Path, base: str, settings: DataproductSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", API_TOKEN)
    product = tmp_path / "api-orders"
    product.mkdir()
    (product / "dataproduct.yaml").write_text(
        f"""
name: api-orders
domain: tests
version: 1.0.0
owner: {{name: Test, email: test@example.com}}
sources:
  orders:
    type: http
    url: {base}/cursored
    records_path: data
    headers: {{Authorization: "Bearer ${{env:API_TOKEN}}"}}
    pagination: {{type: cursor, param: cursor, path: meta.next}}
  customers:
    type: http
    url: {base}/secure
    records_path: data
    headers: {{Authorization: "Bearer ${{env:API_TOKEN}}"}}
""",
        encoding="utf-8",
    )
    runtime = ProductRuntime.open(product, settings)
    try:
        [orders] = runtime.ingest("orders", principal="test")
        [customers] = runtime.ingest("customers", principal="test")
        assert (orders.status, orders.rows) == ("succeeded", 5)
        assert (customers.status, customers.rows) == ("succeeded", 2)
        with runtime.storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT id, customer, amount FROM input.orders ORDER BY id"
            ).fetchall()
            described = cursor.execute("DESCRIBE input.orders").fetchall()
        assert rows == [(o["id"], o["customer"], o["amount"]) for o in ORDERS]
        assert [(r[0], r[1]) for r in described] == [
            ("id", "BIGINT"),
            ("customer", "VARCHAR"),
            ("amount", "DOUBLE"),
        ]
    finally:
        runtime.close()
