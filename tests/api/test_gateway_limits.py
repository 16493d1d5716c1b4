"""The gateway around every port: audit, metrics, rate and body limits, query deadlines,
security headers, CORS, and links under a path prefix or a public URL."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dataproduct import audit
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from ports.app import create_app
from tests.api import assert_error, serve, serve_example, wait_for_run
from tests.conftest import TokenFactory, wait_ready

DAILY = "/output/datasets/daily_sales"
RESTRICTED = "/output/datasets/customer_revenue"
SLOW_SQL = "SELECT count(*) FROM range(1000000000000) a"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
ORIGIN = "https://app.example.com"


@pytest.fixture
def admin(token: TokenFactory) -> dict[str, str]:
    """Headers of the product's administrator."""
    return token("control:admin", subject="admin")


@pytest.fixture
def reader(token: TokenFactory) -> dict[str, str]:
    """Headers of a reader called alice."""
    return token("output:read", subject="alice")


@contextmanager
def started(product: Path, settings: DataproductSettings, **changes: Any) -> Iterator[TestClient]:
    """The product served with these settings changed (and validated, like from the env)."""
    changed = DataproductSettings(**{**settings.model_dump(), **changes})
    with serve(product, changed) as client:
        yield client


def runtime_of(client: TestClient) -> ProductRuntime:
    runtime: ProductRuntime = client.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def audit_records(
    client: TestClient, admin: dict[str, str], **filters: Any
) -> list[dict[str, Any]]:
    """GET /control/audit with these filters; the records, without the audit calls."""
    response = client.get("/control/audit", params=filters, headers=admin)
    assert response.status_code == 200, response.text
    return [r for r in response.json()["records"] if r["path"] != "/control/audit"]


# --- the audit log ----------------------------------------------------------------------


def test_a_dataset_read_is_audited_with_who_what_and_how_much(
    client: TestClient, reader: dict[str, str], admin: dict[str, str]
) -> None:
    """One record: principal, client, method, path, status, port, dataset, rows, bytes."""
    response = client.get(DAILY, params={"limit": 7}, headers=reader)
    assert response.status_code == 200
    [record] = audit_records(client, admin)
    assert record["request_id"] == response.headers["x-request-id"]
    assert {k: record[k] for k in ("principal", "client", "method", "path", "status")} == {
        "principal": "alice",
        "client": "testclient",
        "method": "GET",
        "path": DAILY,
        "status": 200,
    }
    assert (record["port"], record["dataset"], record["rows"]) == ("output", "daily_sales", 7)
    assert record["bytes"] == len(response.content)
    assert record["duration_ms"] > 0
    recorded_at = datetime.fromisoformat(record["at"])
    assert abs((datetime.now(UTC) - recorded_at).total_seconds()) < 30


def test_a_streamed_read_is_audited_with_every_row_sent(
    client: TestClient, reader: dict[str, str], admin: dict[str, str]
) -> None:
    """CSV streams the whole dataset: the record counts each row and byte sent."""
    response = client.get(DAILY, params={"format": "csv"}, headers=reader)
    assert response.status_code == 200
    lines = response.text.strip().splitlines()
    [record] = audit_records(client, admin)
    assert record["rows"] == len(lines) - 1 > 100
    assert record["bytes"] == len(response.content)


def test_refusals_are_audited(
    client: TestClient, token: TokenFactory, admin: dict[str, str]
) -> None:
    """A 401 (anonymous) and a 403 (the named principal) are recorded like any request."""
    assert client.get(RESTRICTED).status_code == 401
    assert client.get(RESTRICTED, headers=token("output:read", subject="bob")).status_code == 403
    records = audit_records(client, admin)
    assert [(r["principal"], r["status"], r["path"], r["dataset"]) for r in records] == [
        ("bob", 403, RESTRICTED, "customer_revenue"),  # who tried to read what
        ("anonymous", 401, RESTRICTED, None),  # refused before the dataset is looked at
    ]
    assert all(r["rows"] is None for r in records)


def test_probes_and_scrapes_are_not_audited(
    client: TestClient, token: TokenFactory, admin: dict[str, str]
) -> None:
    """/health, /ready and /metrics would drown the log; discovery is audited."""
    for path in ("/health", "/ready"):
        assert client.get(path).status_code == 200
    assert client.get("/metrics", headers=token("metrics:read")).status_code == 200
    assert client.get("/discovery").status_code == 200
    assert [(r["principal"], r["path"]) for r in audit_records(client, admin)] == [
        ("anonymous", "/discovery")
    ]


@pytest.fixture
def three_callers(
    client: TestClient, token: TokenFactory, reader: dict[str, str], admin: dict[str, str]
) -> datetime:
    """alice reads daily_sales, bob is refused customer_revenue; then (after the time
    returned) carol reads customer_revenue and alice lists the datasets."""
    bob = token("output:read", subject="bob")
    carol = token("output:read", subject="carol", groups=["sales-analysts"])
    assert client.get(DAILY, headers=reader).status_code == 200
    assert client.get(RESTRICTED, headers=bob).status_code == 403
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    assert client.get(RESTRICTED, headers=carol).status_code == 200
    assert client.get("/output/datasets", headers=reader).status_code == 200
    return middle


AUDIT_FILTERS: dict[str, tuple[dict[str, Any], list[tuple[str, str]]]] = {
    "principal": ({"principal": "alice"}, [("alice", "/output/datasets"), ("alice", DAILY)]),
    "dataset": ({"dataset": "customer_revenue"}, [("carol", RESTRICTED), ("bob", RESTRICTED)]),
    "status": ({"status": 403}, [("bob", RESTRICTED)]),
    "principal and dataset": ({"principal": "alice", "dataset": "daily_sales"}, [("alice", DAILY)]),
    "limit": ({"limit": 2}, [("alice", "/output/datasets"), ("carol", RESTRICTED)]),
}  # fmt: skip


@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "written"])
@pytest.mark.parametrize("case", list(AUDIT_FILTERS))
def test_audit_filters(
    client: TestClient, admin: dict[str, str], three_callers: datetime, case: str, flushed: bool
) -> None:
    """principal, dataset, status and limit select the same records before and after the
    records are written to `meta.audit`."""
    if flushed:
        runtime_of(client).access.audit.flush()
    filters, expected = AUDIT_FILTERS[case]
    records = audit_records(client, admin, **filters)
    assert [(r["principal"], r["path"]) for r in records] == expected


@pytest.mark.parametrize("flushed", [False, True], ids=["buffered", "written"])
def test_audit_since_and_until(
    client: TestClient, admin: dict[str, str], three_callers: datetime, flushed: bool
) -> None:
    """`since` keeps what came at or after the time, `until` what came before it."""
    if flushed:
        runtime_of(client).access.audit.flush()
    middle = three_callers.isoformat()
    before = audit_records(client, admin, until=middle)
    after = audit_records(client, admin, since=middle)
    assert [r["principal"] for r in before] == ["bob", "alice"]
    assert [(r["principal"], r["path"]) for r in after] == [
        ("alice", "/output/datasets"),
        ("carol", RESTRICTED),
    ]
    assert audit_records(client, admin, since=middle, until=middle) == []


def test_audit_times_without_a_zone_are_read_as_utc(
    client: TestClient, admin: dict[str, str], reader: dict[str, str]
) -> None:
    """`since=2020-01-01T00:00:00` means UTC, like the times the audit log gives out."""
    assert client.get(DAILY, headers=reader).status_code == 200
    records = audit_records(client, admin, since="2020-01-01T00:00:00", principal="alice")
    assert [r["path"] for r in records] == [DAILY]


def test_only_administrators_read_the_audit(
    client: TestClient, token: TokenFactory, reader: dict[str, str]
) -> None:
    """401 without a credential, 403 for a reader or a scraper."""
    assert_error(client.get("/control/audit"), 401, "unauthenticated")
    assert_error(client.get("/control/audit", headers=reader), 403, "forbidden")
    scraper = token("metrics:read")
    assert_error(client.get("/control/audit", headers=scraper), 403, "forbidden")


def test_every_audited_request_is_a_json_log_line(
    client: TestClient, reader: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The line on logger `dataproduct.audit` carries the same record, at once."""
    with caplog.at_level(logging.INFO, logger="dataproduct.audit"):
        response = client.get(DAILY, params={"limit": 3}, headers=reader)
    lines = [
        json.loads(r.getMessage())["audit"] for r in caplog.records if r.name == "dataproduct.audit"
    ]
    [line] = [x for x in lines if x["request_id"] == response.headers["x-request-id"]]
    assert (line["principal"], line["dataset"], line["rows"], line["status"]) == (
        "alice", "daily_sales", 3, 200,
    )  # fmt: skip
    assert line["bytes"] == len(response.content)


def _written_request_ids(runtime: ProductRuntime) -> set[str]:
    with runtime.storage.reader() as cursor:
        rows = cursor.execute("SELECT request_id FROM meta.audit").fetchall()
    return {row[0] for row in rows}


def test_the_audit_does_not_wait_for_the_writer(
    example_product: Path,
    settings: DataproductSettings,
    reader: dict[str, str],
    admin: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the single writer held (as by a long run), requests answer promptly; their
    records are queryable at once and reach `meta.audit` after the writer is released."""
    monkeypatch.setattr(audit, "FLUSH_INTERVAL_S", 0.05)
    with serve(example_product, settings) as client:
        runtime = runtime_of(client)
        held, release = threading.Event(), threading.Event()

        def hold_the_writer() -> None:
            with runtime.storage.transaction():
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold_the_writer)
        holder.start()
        try:
            assert held.wait(5)
            ids = []
            for _ in range(3):
                began = time.monotonic()
                response = client.get(DAILY, params={"limit": 2}, headers=reader)
                assert response.status_code == 200
                assert time.monotonic() - began < 1.0
                ids.append(response.headers["x-request-id"])
            time.sleep(0.3)  # several flush intervals, each finding the writer busy
            assert not set(ids) & _written_request_ids(runtime)
            listed = {r["request_id"] for r in audit_records(client, admin)}
            assert set(ids) <= listed
        finally:
            release.set()
            holder.join(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not set(ids) <= _written_request_ids(runtime):
            time.sleep(0.05)
        assert set(ids) <= _written_request_ids(runtime)


# --- metrics ----------------------------------------------------------------------------


def scrape(client: TestClient, token: TokenFactory) -> dict[tuple[str, frozenset[Any]], float]:
    """GET /metrics parsed: {(sample name, labels): value}."""
    response = client.get("/metrics", headers=token("metrics:read"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(metrics: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_need_metrics_read_or_an_administrator(
    client: TestClient, token: TokenFactory, reader: dict[str, str], admin: dict[str, str]
) -> None:
    """401 without a token, 403 with output:read only, 200 for metrics:read or admin."""
    assert_error(client.get("/metrics"), 401, "unauthenticated")
    error = assert_error(client.get("/metrics", headers=reader), 403, "forbidden")
    assert "administrator" in error["message"]
    assert client.get("/metrics", headers=token("metrics:read")).status_code == 200
    assert client.get("/metrics", headers=admin).status_code == 200


def test_a_scraper_token_reads_nothing_else(client: TestClient, token: TokenFactory) -> None:
    """metrics:read names a scope, so the credential is limited to it."""
    scraper = token("metrics:read", groups=["sales-analysts"])
    assert_error(client.get(DAILY, headers=scraper), 403, "forbidden")
    assert_error(client.get("/control/runs", headers=scraper), 403, "forbidden")


def test_requests_are_counted_with_a_latency_histogram(
    client: TestClient, token: TokenFactory, reader: dict[str, str]
) -> None:
    """Each request counts under its port, route template, method and status."""
    before = scrape(client, token)
    for _ in range(2):
        assert client.get(DAILY, params={"limit": 1}, headers=reader).status_code == 200
    assert client.get("/output/datasets/nothing", headers=reader).status_code == 404
    assert client.get(DAILY).status_code == 401
    after = scrape(client, token)
    route = {"port": "output", "route": "/output/datasets/{name}"}
    name = "dataproduct_http_requests_total"
    for status, count in (("200", 2), ("404", 1), ("401", 1)):
        delta = sample(after, name, **route, method="GET", status=status) - sample(
            before, name, **route, method="GET", status=status
        )
        assert delta == count, status
    histogram = "dataproduct_http_request_duration_seconds"
    assert sample(after, f"{histogram}_count", **route) == 4
    assert sample(after, f"{histogram}_bucket", **route, le="+Inf") == 4
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (sample_name, labels), value in after.items()
        if sample_name == f"{histogram}_bucket" and dict(labels)["route"] == route["route"]
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert 0 < sample(after, f"{histogram}_sum", **route) < 30


def test_rows_and_bytes_served_are_counted(
    client: TestClient, token: TokenFactory, reader: dict[str, str]
) -> None:
    """Rows per dataset (paged and streamed) and response bytes per port."""
    before = scrape(client, token)
    sizes = []
    for params in ({"limit": 5}, {"limit": 7}, {"format": "csv", "limit": 11}):
        response = client.get(DAILY, params=params, headers=reader)
        assert response.status_code == 200
        sizes.append(len(response.content))
    after = scrape(client, token)
    rows = "dataproduct_rows_served_total"
    assert (
        sample(after, rows, dataset="daily_sales") - sample(before, rows, dataset="daily_sales")
        == 5 + 7 + 11
    )
    assert sample(after, rows, dataset="customer_revenue") == 0
    sent = "dataproduct_bytes_served_total"
    assert sample(after, sent, port="output") - sample(before, sent, port="output") == sum(sizes)


def test_runs_and_ingestions_are_counted_from_meta(
    client: TestClient, runtime: ProductRuntime, token: TokenFactory, admin: dict[str, str]
) -> None:
    """runs_total and ingested rows match `meta`, and follow a new run."""

    def from_meta(sql: str) -> dict[tuple[str, ...], float]:
        with runtime.storage.reader() as cursor:
            rows = cursor.execute(sql).fetchall()
        return {tuple(row[:-1]): float(row[-1]) for row in rows}

    runs_sql = "SELECT status, count(*) FROM meta.runs GROUP BY ALL"
    ingested_sql = (
        "SELECT source, sum(rows) FROM meta.ingestions WHERE status = 'succeeded' GROUP BY ALL"
    )
    metrics = scrape(client, token)
    assert from_meta(runs_sql) == {("succeeded",): 1.0}
    assert sample(metrics, "dataproduct_runs_total", status="succeeded") == 1
    for (source,), rows in from_meta(ingested_sql).items():
        assert sample(metrics, "dataproduct_ingested_rows_total", source=source) == rows > 0
        ingestions = sample(
            metrics, "dataproduct_ingestions_total", source=source, status="succeeded"
        )
        assert ingestions == 1
    started_run = client.post("/control/runs", headers=admin)
    assert started_run.status_code == 202
    wait_for_run(client, runtime, started_run.json()["id"], admin)
    metrics = scrape(client, token)
    assert sample(metrics, "dataproduct_runs_total", status="succeeded") == 2


# --- rate limits ------------------------------------------------------------------------


def test_a_burst_then_429_with_retry_after(
    example_product: Path,
    settings: DataproductSettings,
    reader: dict[str, str],
    admin: dict[str, str],
) -> None:
    """Three requests at once pass, the fourth is 429 JSON with a whole Retry-After."""
    with started(example_product, settings, rate_limit_per_s=0.5, rate_limit_burst=3) as client:
        for _ in range(3):
            assert client.get("/output/datasets", headers=reader).status_code == 200
        refused = client.get("/output/datasets", headers=reader)
        error = assert_error(refused, 429, "rate_limited")
        assert "alice" in error["message"]
        retry_after = refused.headers["retry-after"]
        assert re.fullmatch(r"[1-9][0-9]*", retry_after)
        assert int(retry_after) in (1, 2)  # one request every 2 s, rounded up
        for name, value in SECURITY_HEADERS.items():
            assert refused.headers[name] == value
        assert audit_records(client, admin, status=429)[0]["principal"] == "alice"


def test_another_principal_is_not_limited_by_the_first(
    example_product: Path, settings: DataproductSettings, token: TokenFactory
) -> None:
    """Buckets are per subject: bob still has his burst when alice has none."""
    alice, bob = token("output:read", subject="alice"), token("output:read", subject="bob")
    with started(example_product, settings, rate_limit_per_s=0.5, rate_limit_burst=2) as client:
        for _ in range(2):
            assert client.get(DAILY, headers=alice).status_code == 200
        assert_error(client.get(DAILY, headers=alice), 429, "rate_limited")
        for _ in range(2):
            assert client.get(DAILY, headers=bob).status_code == 200


def test_the_limit_refills_over_time(
    example_product: Path, settings: DataproductSettings, reader: dict[str, str]
) -> None:
    """At 5 per second, a refused caller is served again 1/5 s later."""
    with started(example_product, settings, rate_limit_per_s=5, rate_limit_burst=1) as client:
        assert client.get("/output/datasets", headers=reader).status_code == 200
        assert_error(client.get("/output/datasets", headers=reader), 429, "rate_limited")
        time.sleep(0.25)
        assert client.get("/output/datasets", headers=reader).status_code == 200


def test_anonymous_discovery_is_limited_per_client_address(
    example_product: Path, settings: DataproductSettings
) -> None:
    """Without a credential the bucket is the caller's address: another address is served."""
    with started(example_product, settings, rate_limit_per_s=0.5, rate_limit_burst=2) as client:
        for _ in range(2):
            assert client.get("/discovery").status_code == 200
        assert_error(client.get("/discovery/datasets"), 429, "rate_limited")
        # the same app from another address (not entered: the product is started already)
        other = TestClient(client.app, client=("10.0.0.2", 50000))
        try:
            assert other.get("/discovery").status_code == 200
        finally:
            other.close()


def test_guessing_credentials_is_limited_per_client_address(
    example_product: Path, settings: DataproductSettings, reader: dict[str, str]
) -> None:
    """Bad tokens spend the caller's address bucket: 401, 401, then 429."""
    forged = {"Authorization": "Bearer not-a-token"}
    with started(example_product, settings, rate_limit_per_s=0.5, rate_limit_burst=2) as client:
        for _ in range(2):
            assert_error(client.get("/output/datasets", headers=forged), 401)
        assert_error(client.get("/output/datasets", headers=forged), 429, "rate_limited")
        # a valid credential has a bucket of its own
        assert client.get("/output/datasets", headers=reader).status_code == 200


def test_health_is_never_rate_limited(example_product: Path, settings: DataproductSettings) -> None:
    """Probes keep working for a caller whose discovery bucket is empty."""
    with started(example_product, settings, rate_limit_per_s=0.5, rate_limit_burst=1) as client:
        assert client.get("/discovery").status_code == 200
        assert client.get("/discovery").status_code == 429
        for _ in range(5):
            assert client.get("/health").status_code == 200
            assert client.get("/ready").status_code == 200


# --- body limits and query deadlines ----------------------------------------------------

BODY_LIMIT = 4096


@pytest.fixture
def limited(example_product: Path, settings: DataproductSettings) -> Iterator[TestClient]:
    """The product with a 4 KiB JSON body limit and a 0.2 s query deadline."""
    with started(
        example_product, settings, max_json_body_bytes=BODY_LIMIT, query_timeout_s=0.2
    ) as client:
        yield client


def _pipeline_body(client: TestClient, admin: dict[str, str]) -> bytes:
    """The current pipeline as a PUT body, exactly as accepted (a new version)."""
    current = client.get("/control/pipeline", headers=admin).json()
    return json.dumps({"models": current["models"]}).encode()


def _versions(client: TestClient, admin: dict[str, str]) -> list[int]:
    listed = client.get("/control/pipeline/versions", headers=admin).json()["versions"]
    return [v["version"] for v in listed]


def test_a_pipeline_body_over_the_limit_is_413_and_changes_nothing(
    limited: TestClient, admin: dict[str, str]
) -> None:
    """The same valid pipeline is accepted, and refused once padded past the limit."""
    body = _pipeline_body(limited, admin)
    assert len(body) < BODY_LIMIT
    json_type = {"content-type": "application/json", **admin}
    accepted = limited.put("/control/pipeline", content=body, headers=json_type)
    assert accepted.status_code == 200, accepted.text
    versions = _versions(limited, admin)
    padded = body + b" " * BODY_LIMIT  # still the same JSON document
    response = limited.put("/control/pipeline", content=padded, headers=json_type)
    error = assert_error(response, 413, "payload_too_large")
    assert error["where"] == "Content-Length"
    assert str(BODY_LIMIT) in error["message"]
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    assert _versions(limited, admin) == versions


def _chunks(body: bytes, size: int = 512) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(
    limited: TestClient, admin: dict[str, str]
) -> None:
    """Without a Content-Length the body is counted as it arrives."""
    padded = _pipeline_body(limited, admin) + b" " * BODY_LIMIT
    versions = _versions(limited, admin)
    response = limited.put(
        "/control/pipeline",
        content=_chunks(padded),
        headers={"content-type": "application/json", **admin},
    )
    assert "content-length" not in response.request.headers
    error = assert_error(response, 413, "payload_too_large")
    assert error["where"] == "body"
    assert _versions(limited, admin) == versions


def test_a_chunked_body_under_the_limit_is_read_whole(
    limited: TestClient, admin: dict[str, str]
) -> None:
    """The counted chunks are handed on intact: the pipeline is accepted."""
    body = _pipeline_body(limited, admin)
    versions = _versions(limited, admin)
    response = limited.put(
        "/control/pipeline",
        content=_chunks(body, 100),
        headers={"content-type": "application/json", **admin},
    )
    assert "content-length" not in response.request.headers
    assert response.status_code == 200, response.text
    assert _versions(limited, admin) == [versions[0] + 1, *versions]


def test_a_query_body_over_the_limit_is_413(limited: TestClient, reader: dict[str, str]) -> None:
    """Every JSON port is covered, not just the control port."""
    sql = "SELECT 1" + " " * BODY_LIMIT
    assert_error(limited.post("/output/query", json={"sql": sql}, headers=reader), 413)


def test_uploads_are_not_held_to_the_json_limit(limited: TestClient, token: TokenFactory) -> None:
    """The input port streams files under its own, larger limit."""
    rows = b"".join(b"%d,late\n" % n for n in range(1000))
    body = b"order_id,reason\n" + rows
    assert len(body) > BODY_LIMIT
    writer = token("input:write", groups=["returns-writers"])
    response = limited.post(
        "/input/returns", content=body, headers={"content-type": "text/csv", **writer}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("format", [None, "csv", "ndjson"])
def test_a_slow_query_is_stopped_with_504_and_the_server_goes_on(
    limited: TestClient, reader: dict[str, str], format: str | None
) -> None:
    """Past query_timeout_s: 504 query_timeout quickly (before any streaming); then the
    product answers as before."""
    began = time.monotonic()
    response = limited.post(
        "/output/query", json={"sql": SLOW_SQL, "format": format}, headers=reader
    )
    elapsed = time.monotonic() - began
    error = assert_error(response, 504, "query_timeout")
    assert "0.2" in error["message"]
    assert elapsed < 2.0
    count = {"sql": "SELECT count(*) AS n FROM output.daily_sales"}
    after = limited.post("/output/query", json=count, headers=reader)
    assert after.status_code == 200
    assert after.json()["data"][0]["n"] > 0
    assert limited.get(DAILY, params={"limit": 1}, headers=reader).status_code == 200


# --- security headers and CORS -----------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One started product with CORS for one origin and HSTS, for checks that change nothing."""
    with serve_example(
        tmp_path_factory.mktemp("gateway"),
        rate_limit_per_s=0,
        cors_origins=[ORIGIN],
        hsts_seconds=31536000,
        content_security_policy="default-src 'none'; frame-ancestors 'none'",
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/discovery"),
        ("GET", "/discovery?format=html"),
        ("GET", "/output/datasets"),
        ("GET", "/metrics"),
        ("GET", "/no/such/route"),
        ("POST", "/output/query"),
        ("GET", "/"),
    ],
)
def test_every_response_carries_the_security_headers(
    shared: TestClient, method: str, path: str
) -> None:
    """Successes, refusals, 404s and redirects alike, with a fresh request id each."""
    responses = [shared.request(method, path, follow_redirects=False) for _ in range(2)]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, name
        assert response.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'"
        )
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
        assert len(response.headers.get_list("x-frame-options")) == 1
    assert responses[0].headers["x-request-id"] != responses[1].headers["x-request-id"]


def test_no_hsts_unless_configured(client: TestClient) -> None:
    """HSTS is for products behind HTTPS: off by default (hsts_seconds = 0)."""
    response = client.get("/health")
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-frame-options"] == "DENY"


def test_security_headers_can_be_turned_off(
    example_product: Path, settings: DataproductSettings
) -> None:
    """security_headers=False (a gateway sets them): none of them; the request id stays."""
    with started(example_product, settings, security_headers=False, hsts_seconds=60) as client:
        response = client.get("/discovery")
    assert response.status_code == 200
    for name in (*SECURITY_HEADERS, "content-security-policy", "strict-transport-security"):
        assert name not in response.headers
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def _preflight(client: TestClient, origin: str) -> httpx.Response:
    response: httpx.Response = client.options(
        DAILY,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    return response


def test_a_preflight_from_a_listed_origin_is_answered(shared: TestClient) -> None:
    """OPTIONS without a token: 200, the origin allowed, with the Authorization header."""
    response = _preflight(shared, ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_preflight_from_another_origin_is_not_allowed(shared: TestClient) -> None:
    """An origin not listed gets no Access-Control-Allow-Origin."""
    response = _preflight(shared, "https://evil.example.com")
    assert response.status_code >= 400
    assert "access-control-allow-origin" not in response.headers


def test_responses_allow_only_listed_origins(shared: TestClient, token: TokenFactory) -> None:
    """A listed origin sees the response (and Retry-After, X-Request-Id); others do not."""
    reader = token("output:read")
    allowed = shared.get(DAILY, headers={"Origin": ORIGIN, **reader})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    exposed = allowed.headers["access-control-expose-headers"].lower()
    assert "retry-after" in exposed and "x-request-id" in exposed
    other = shared.get(DAILY, headers={"Origin": "https://evil.example.com", **reader})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_no_cors_without_configured_origins(client: TestClient) -> None:
    """By default (no cors_origins) browsers get no cross-origin permission at all."""
    response = _preflight(client, ORIGIN)
    assert "access-control-allow-origin" not in response.headers
    plain = client.get("/discovery", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in plain.headers


# --- links under a path prefix or a public URL -------------------------------------------


def _links(client: TestClient, admin: dict[str, str]) -> list[str]:
    """Every URL the product gives out: discovery, dataset links, a run's Location."""
    product = client.get("/discovery").json()
    datasets = client.get("/discovery/datasets").json()["datasets"]
    run = client.post("/control/runs", headers=admin)
    assert run.status_code == 202, run.text
    return [
        product["url"],
        product["lineage"],
        *(port["url"] for port in product["ports"].values()),
        *(url for d in datasets for url in d["links"].values()),
        run.headers["location"],
    ]


@pytest.mark.parametrize(
    ("changes", "base"),
    [
        ({"root_path": "/products/sales", "port": 9000}, "http://127.0.0.1:9000/products/sales"),
        ({"public_url": "https://data.example.com/sales-eu/"}, "https://data.example.com/sales-eu"),
        (
            {"public_url": "https://data.example.com/eu", "root_path": "/ignored"},
            "https://data.example.com/eu",
        ),
    ],
    ids=["root_path", "public_url", "public_url wins"],
)
def test_links_use_the_base_url(
    example_product: Path,
    settings: DataproductSettings,
    admin: dict[str, str],
    changes: dict[str, Any],
    base: str,
) -> None:
    """Every link starts with `settings.base_url()`; a run's Location is its status URL."""
    with started(example_product, settings, **changes) as client:
        links = _links(client, admin)
        runtime = runtime_of(client)
        for run in runtime.runs.history(10):
            runtime.runs.wait(run["id"], timeout_s=30)
    assert links[0] == base
    for link in links:
        assert link.startswith(f"{base}/") or link == base, link
        assert "//" not in link.removeprefix("https://").removeprefix("http://"), link
    assert re.fullmatch(re.escape(f"{base}/control/runs/") + r"\S+", links[-1])


def test_the_root_redirects_under_the_path_prefix(
    example_product: Path, settings: DataproductSettings
) -> None:
    """Behind a prefix (the ASGI root_path), `/` sends people to the prefixed discovery."""
    prefixed = DataproductSettings(**{**settings.model_dump(), "root_path": "/p"})
    runtime = ProductRuntime.open(example_product, prefixed)
    try:
        with TestClient(create_app(runtime), root_path="/p") as client:
            wait_ready(client)
            response = client.get("/", follow_redirects=False)
    finally:
        runtime.close()
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/p/discovery"
