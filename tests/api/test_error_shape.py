"""Every error has one JSON shape and the right status; no traceback ever reaches a client.

`{"error": {"code", "message", "where"?, "details"?}}` for every status the edge produces.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from tests.api import assert_error, assert_no_traceback, serve_example
from tests.conftest import TokenFactory, wait_ready

UPLOAD_LIMIT = 1024
CSV = {"content-type": "text/csv"}

Call = Callable[[TestClient, TokenFactory], httpx.Response]


@pytest.fixture
def settings(settings: DataproductSettings) -> DataproductSettings:
    """A small upload limit, so 413 is cheap to provoke."""
    return settings.model_copy(update={"max_upload_bytes": UPLOAD_LIMIT})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


CASES: dict[str, tuple[Call, int, str]] = {
    "400 unknown format": (
        lambda c, t: c.get("/output/datasets/daily_sales?format=xml", headers=t("output:read")),
        400,
        "bad_request",
    ),
    "400 invalid query parameter": (
        lambda c, t: c.get("/output/datasets/daily_sales?limit=0", headers=t("output:read")),
        400,
        "bad_request",
    ),
    "401 no token": (lambda c, t: c.get("/output/datasets"), 401, "unauthenticated"),
    "403 missing scope": (
        lambda c, t: c.get("/control/runs", headers=t("output:read")),
        403,
        "forbidden",
    ),
    "404 unknown route": (lambda c, t: c.get("/no/such/route"), 404, "not_found"),
    "404 unknown dataset in discovery": (
        lambda c, t: c.get("/discovery/datasets/nope"),
        404,
        "not_found",
    ),
    "404 unknown dataset in output": (
        lambda c, t: c.get("/output/datasets/nope", headers=t("output:read")),
        404,
        "not_found",
    ),
    "405 wrong method": (lambda c, t: c.delete("/discovery"), 405, "method_not_allowed"),
    "409 push to a pulled source": (
        lambda c, t: c.post(
            "/input/orders",
            content=b"a\n1\n",
            headers={**CSV, **t("input:write", groups=["returns-writers"])},
        ),
        409,
        "conflict",
    ),
    "413 body too large": (
        lambda c, t: c.post(
            "/input/returns",
            content=b"x" * (UPLOAD_LIMIT + 1),
            headers={**CSV, **t("input:write", groups=["returns-writers"])},
        ),
        413,
        "payload_too_large",
    ),
    "415 unsupported body": (
        lambda c, t: c.post(
            "/input/returns",
            content=b"<a/>",
            headers={
                "content-type": "application/xml",
                **t("input:write", groups=["returns-writers"]),
            },
        ),
        415,
        "unsupported_media_type",
    ),
    "422 refused query": (
        lambda c, t: c.post(
            "/output/query", json={"sql": "SELECT * FROM meta.runs"}, headers=t("output:read")
        ),
        422,
        "sql_rejected",
    ),
    "422 invalid body": (
        lambda c, t: c.post("/output/query", json={"sql": ""}, headers=t("output:read")),
        422,
        "invalid_input",
    ),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started product for the checks that change nothing."""
    root = tmp_path_factory.mktemp("errors")
    with serve_example(root, max_upload_bytes=UPLOAD_LIMIT) as started:
        yield started


@pytest.mark.parametrize("case", list(CASES))
def test_every_error_status_has_the_one_shape(
    case: str, shared: TestClient, token: TokenFactory
) -> None:
    """Each status comes with the stable JSON error shape and its code."""
    call, status, code = CASES[case]
    assert_error(call(shared, token), status, code)


def test_401_asks_for_a_bearer_token(client: TestClient) -> None:
    """A 401 names the scheme to use in WWW-Authenticate."""
    response = client.get("/control/runs")
    error = assert_error(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error["where"] == "Authorization"


def test_405_lists_the_allowed_methods(client: TestClient) -> None:
    """A 405 keeps the Allow header of the route."""
    response = client.put("/health")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


def test_404_of_a_route_names_the_path(client: TestClient) -> None:
    """An unknown route says which method and path had no route."""
    error = assert_error(client.post("/no/such/thing"), 404, "not_found")
    assert "POST /no/such/thing" in error["message"]


def test_404_of_a_dataset_says_where(client: TestClient, token: TokenFactory) -> None:
    """An unknown dataset is named in `where`."""
    error = assert_error(
        client.get("/output/datasets/ghost", headers=token("output:read")), 404, "not_found"
    )
    assert error["where"] == "datasets/ghost"
    assert "ghost" in error["message"]


def test_422_of_a_refused_query_says_rule_line_and_column(
    client: TestClient, token: TokenFactory
) -> None:
    """A refused query points at the rule, the line and the column in `details`."""
    sql = "SELECT *\nFROM input.orders"
    response = client.post("/output/query", json={"sql": sql}, headers=token("output:read"))
    error = assert_error(response, 422, "sql_rejected")
    violation = error["details"]["violations"][0]
    assert violation["rule"] == "only_layer_tables"
    assert (violation["line"], violation["column"]) == (2, 6)
    assert error["where"] == "sql, line 2, column 6"


def test_400_of_a_query_parameter_lists_every_problem(
    client: TestClient, token: TokenFactory
) -> None:
    """A bad query parameter is a 400 naming the parameter, with the problems in details."""
    response = client.get("/output/datasets/daily_sales?limit=-3", headers=token("output:read"))
    error = assert_error(response, 400, "bad_request")
    assert error["where"] == "query.limit"
    assert error["details"]["problems"][0]["path"] == "query.limit"


@pytest.fixture
def lenient_client(runtime: ProductRuntime) -> Iterator[TestClient]:
    """A client that returns 500s as responses instead of raising the server's exception."""
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


ODD_CURSORS = [
    "%%%",
    "bm90IGpzb24",
    _b64(b"[1, 2]"),
    _b64(b'{"after": "x", "run": "r"}'),
    _b64(b'{"after": null, "run": "r"}'),
    _b64(b'{"after": 1e400, "run": "r"}'),
    _b64(b"\xff\xfe\x00"),
]

ODD_QUERIES = [
    "SELECT 1; SELECT 2",
    "DROP TABLE output.daily_sales",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT getenv('HOME') AS h",
    "COPY output.daily_sales TO '/tmp/x.csv'",
    "SELECT * FROM output.nope",
    "SELECT CAST('abc' AS INTEGER) AS x",
    "SELECT 1 // 0 AS x",
    "SELEC broken",
    "SELECT '",
]


def test_no_response_ever_shows_a_traceback(
    lenient_client: TestClient, token: TokenFactory
) -> None:
    """Odd requests get a client error in the one shape: never a 500, never a traceback."""
    reader, admin = token("output:read"), token("control:admin")
    responses = [
        *(
            lenient_client.get(f"/output/datasets/daily_sales?cursor={c}", headers=reader)
            for c in ODD_CURSORS
        ),
        *(
            lenient_client.post("/output/query", json={"sql": sql, "format": fmt}, headers=reader)
            for sql in ODD_QUERIES
            for fmt in ("json", "arrow")
        ),
        lenient_client.post(
            "/output/query",
            content=b"{not json",
            headers={**reader, "content-type": "application/json"},
        ),
        lenient_client.get("/output/datasets/daily_sales?columns=,", headers=reader),
        lenient_client.get("/output/datasets/daily_sales?columns=nope", headers=reader),
        lenient_client.get("/output/datasets/..%2F..%2Fetc%2Fpasswd", headers=reader),
        lenient_client.get("/output/datasets", headers={"Authorization": "Bearer a.b.c"}),
        lenient_client.get("/control/runs/unknown", headers=admin),
        lenient_client.delete("/control/runs/unknown", headers=admin),
        lenient_client.get("/control/pipeline?version=999", headers=admin),
        lenient_client.put("/control/pipeline", json={"models": []}, headers=admin),
        lenient_client.put("/control/pipeline", content=b"[", headers=admin),
        lenient_client.post("/control/ingest/nope", headers=admin),
        lenient_client.post("/input/returns?format=xml", content=b"a", headers=admin),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.text)
        assert_error(response, response.status_code)
        assert_no_traceback(response)
    assert json.loads(responses[0].text)["error"]["where"] == "cursor"
