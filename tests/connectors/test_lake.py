"""Delta Lake tables (local and in a real S3 server on loopback) and hive-partitioned Parquet."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import write_deltalake

from connectors.lake import DeltaConnector
from dataproduct.connector import LoadState, SourceContext, build_connector
from dataproduct.descriptor import SourceConfig
from dataproduct.errors import DescriptorError, SourceError, SourceUnavailableError
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.connectors.s3_server import S3Server, free_port, s3_server

__all__ = ["s3_server"]  # the fixture, imported for pytest

SECRET_ENV = "DP_TEST_DELTA_SECRET"


def orders(first_id: int, count: int, country: str) -> pa.Table:
    """`count` orders from `first_id` in `country`."""
    ids = list(range(first_id, first_id + count))
    return pa.table(
        {
            "order_id": pa.array(ids, pa.int64()),
            "amount": pa.array([i * 2.5 for i in ids], pa.float64()),
            "day": pa.array([dt.date(2026, 1, i % 28 + 1) for i in ids], pa.date32()),
            "country": pa.array([country] * count, pa.string()),
        }
    )


def write_versions(uri: str, storage_options: dict[str, str] | None = None) -> None:
    """Version 0: orders 1-3 (DE); version 1: orders 4-5 (FR) appended, by country."""
    options: dict[str, Any] = {"partition_by": ["country"], "storage_options": storage_options}
    write_deltalake(uri, orders(1, 3, "DE"), **options)
    write_deltalake(uri, orders(4, 2, "FR"), mode="append", **options)


def delta(product_dir: Path, **options: Any) -> DeltaConnector:
    """A delta source of a product in `product_dir`, validated as the descriptor would be."""
    context = SourceContext(product_dir, product_dir / "data")
    built = build_connector("lake", SourceConfig(type="delta", **options), context)
    assert isinstance(built, DeltaConnector)
    return built


def s3_options(server: S3Server, **options: Any) -> dict[str, Any]:
    """Endpoint and keys of the test server, as a source declares them."""
    return {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        **options,
    }


def load(source: DeltaConnector) -> list[tuple[Any, ...]]:
    """Load the stream into DuckDB as the core does; rows ordered by order_id."""
    with source.open_stream(LoadState()) as reader, duckdb.connect() as db:
        db.register("stream", reader)
        db.execute("CREATE TABLE loaded AS SELECT * FROM stream")
        return db.sql(
            "SELECT order_id, amount, day, country FROM loaded ORDER BY order_id"
        ).fetchall()


def write_product(folder: Path, sources: dict[str, Any]) -> Path:
    """A minimal product folder declaring `sources`."""
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = {
        "name": "lake-test",
        "domain": "tests/lake",
        "version": "1.0.0",
        "owner": {"name": "Test", "email": "test@example.com"},
        "sources": sources,
    }
    (folder / "dataproduct.yaml").write_text(yaml.safe_dump(descriptor), encoding="utf-8")
    return folder


def input_rows(runtime: ProductRuntime, table: str, columns: str) -> list[tuple[Any, ...]]:
    """Rows of `input.<table>`, ordered by their first column."""
    with runtime.storage.reader() as cursor:
        return cursor.execute(f"SELECT {columns} FROM input.{table} ORDER BY 1").fetchall()


# delta, local ------------------------------------------------------------------------------


def test_local_delta_table_latest_version(tmp_path: Path) -> None:
    write_versions(str(tmp_path / "lake" / "orders"))
    rows = load(delta(tmp_path, path="lake/orders"))
    assert [row[0] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0] == (1, 2.5, dt.date(2026, 1, 2), "DE")
    assert rows[-1] == (5, 12.5, dt.date(2026, 1, 6), "FR")


def test_local_delta_time_travel(tmp_path: Path) -> None:
    write_versions(str(tmp_path / "lake" / "orders"))
    rows = load(delta(tmp_path, path="lake/orders", version=0))
    assert rows == [
        (1, 2.5, dt.date(2026, 1, 2), "DE"),
        (2, 5.0, dt.date(2026, 1, 3), "DE"),
        (3, 7.5, dt.date(2026, 1, 4), "DE"),
    ]


def test_delta_ingest_through_a_product(tmp_path: Path, settings: DataproductSettings) -> None:
    product = write_product(
        tmp_path / "product",
        {
            "orders": {"type": "delta", "path": "lake/orders"},
            "orders_v0": {"type": "delta", "path": "lake/orders", "version": 0},
        },
    )
    write_versions(str(product / "lake" / "orders"))
    runtime = ProductRuntime.open(product, settings)
    try:
        [latest, first] = runtime.ingest(None, principal="test")
        assert (latest.rows, first.rows) == (5, 3)
        assert input_rows(runtime, "orders", "order_id, country")[3:] == [(4, "FR"), (5, "FR")]
        assert input_rows(runtime, "orders_v0", "order_id") == [(1,), (2,), (3,)]
        with runtime.storage.reader() as cursor:
            types = dict(
                cursor.execute("DESCRIBE input.orders").fetchall()[i][:2] for i in range(4)
            )
        assert types == {
            "order_id": "BIGINT",
            "amount": "DOUBLE",
            "day": "DATE",
            "country": "VARCHAR",
        }
        assert runtime.source("orders_v0").describe()["version"] == 0
    finally:
        runtime.close()


def test_folder_that_is_not_a_delta_table(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    pq.write_table(orders(1, 2, "DE"), folder / "part-0.parquet")
    with pytest.raises(SourceError, match="'plain' is not a Delta table") as caught:
        load(delta(tmp_path, path="plain"))
    assert caught.value.where == "sources.lake.path"


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no folder at 'lake/missing'"):
        load(delta(tmp_path, path="lake/missing"))


def test_version_that_does_not_exist(tmp_path: Path) -> None:
    write_versions(str(tmp_path / "t"))
    with pytest.raises(SourceError, match="version 7 of the Delta table 't'") as caught:
        load(delta(tmp_path, path="t", version=7))
    assert caught.value.where == "sources.lake.version"


def test_negative_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match=r"sources\.lake\.version"):
        delta(tmp_path, path="t", version=-1)


# delta, in S3 ------------------------------------------------------------------------------


def test_delta_table_in_s3_with_env_credentials(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket("delta")
    write_versions(f"s3://{bucket}/orders", s3_server.storage_options())
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_key)
    options = s3_options(s3_server, secret_access_key=f"${{env:{SECRET_ENV}}}")
    latest = delta(tmp_path, path=f"s3://{bucket}/orders", **options)
    assert [row[0] for row in load(latest)] == [1, 2, 3, 4, 5]
    first = delta(tmp_path, path=f"s3://{bucket}/orders", version=0, **options)
    assert [row[3] for row in load(first)] == ["DE", "DE", "DE"]
    shown = latest.describe()
    assert shown["endpoint"] == s3_server.endpoint and shown["path"] == f"s3://{bucket}/orders"
    assert s3_server.secret_key not in json.dumps(shown)


def test_delta_in_s3_wrong_secret_is_refused_without_showing_it(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bucket = s3_server.new_bucket("delta")
    write_versions(f"s3://{bucket}/orders", s3_server.storage_options())
    wrong = "wrong-delta-secret-98765"
    with s3_server.enforced_credentials() as (key_id, secret):
        good = delta(
            tmp_path, path=f"s3://{bucket}/orders",
            **s3_options(s3_server, access_key_id=key_id, secret_access_key=secret),
        )  # fmt: skip
        assert len(load(good)) == 5
        source = delta(
            tmp_path, path=f"s3://{bucket}/orders",
            **s3_options(s3_server, access_key_id=key_id, secret_access_key=wrong),
        )  # fmt: skip
        with pytest.raises(SourceError) as caught:
            load(source)
    assert not caught.value.transient
    assert caught.value.message.startswith(f"access denied by s3://{bucket}/orders at ")
    assert "SignatureDoesNotMatch" in caught.value.message
    assert wrong not in str(caught.value.to_dict())


def test_delta_in_s3_missing_table(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket("delta")
    source = delta(tmp_path, path=f"s3://{bucket}/nothing", **s3_options(s3_server))
    with pytest.raises(SourceError, match=rf"'s3://{bucket}/nothing at .*' is not a Delta table"):
        load(source)


def test_delta_unreachable_endpoint_is_transient(tmp_path: Path, s3_server: S3Server) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    source = delta(tmp_path, path="s3://b/t", **s3_options(s3_server, endpoint=closed))
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=f"cannot reach s3://b/t at {closed}"):
        load(source)
    assert time.monotonic() - started < 10


# hive-partitioned Parquet folders ----------------------------------------------------------


def write_hive_folder(folder: Path) -> None:
    """`country=DE/` and `country=FR/` folders of Parquet files."""
    for country, first, count in (("DE", 1, 2), ("FR", 3, 1)):
        part = folder / f"country={country}"
        part.mkdir(parents=True)
        pq.write_table(orders(first, count, country).drop_columns(["country"]), part / "p.parquet")


def test_local_hive_partitioned_parquet_through_the_file_connector(
    tmp_path: Path, settings: DataproductSettings
) -> None:
    source = {
        "type": "file", "path": "lake/sales/*/*.parquet", "format": "parquet",
        "options": {"hive_partitioning": True},
    }  # fmt: skip
    product = write_product(tmp_path / "product", {"sales": source})
    write_hive_folder(product / "lake" / "sales")
    runtime = ProductRuntime.open(product, settings)
    try:
        [ingestion] = runtime.ingest("sales", principal="test")
        assert ingestion.rows == 3
        rows = input_rows(runtime, "sales", "order_id, amount, country")
        assert rows == [(1, 2.5, "DE"), (2, 5.0, "DE"), (3, 7.5, "FR")]
    finally:
        runtime.close()


def test_hive_partitioned_parquet_in_s3_through_a_product(
    tmp_path: Path, s3_server: S3Server, settings: DataproductSettings
) -> None:
    bucket = s3_server.new_bucket("hive")
    local = tmp_path / "staging"
    write_hive_folder(local)
    for path in sorted(local.rglob("*.parquet")):
        s3_server.put(bucket, f"sales/{path.relative_to(local).as_posix()}", path.read_bytes())
    source = {"type": "s3", "bucket": bucket, "prefix": "sales/", "hive_partitioning": True}
    product = write_product(tmp_path / "product", {"sales": source | s3_options(s3_server)})
    runtime = ProductRuntime.open(product, settings)
    try:
        runtime.ingest("sales", principal="test")
        rows = input_rows(runtime, "sales", "order_id, amount, country")
        assert rows == [(1, 2.5, "DE"), (2, 5.0, "DE"), (3, 7.5, "FR")]
    finally:
        runtime.close()
