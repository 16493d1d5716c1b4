"""The s3 connector against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from connectors.object_store import S3Connector
from connectors.object_store_listing import glob_regex, literal_folder
from connectors.object_store_s3 import store_error
from dataproduct.connector import Connector, LoadState, SourceContext, build_connector
from dataproduct.descriptor import SourceConfig
from dataproduct.errors import DescriptorError, SourceError, SourceUnavailableError
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.connectors.s3_server import S3Server, s3_server
from tests.server.conftest import free_port

__all__ = ["s3_server"]  # the fixture, imported for pytest

SECRET_ENV = "DP_TEST_S3_SECRET"
KEY_ENV = "DP_TEST_S3_KEY"


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    """A Parquet file of `table`, in memory."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def orders(first_id: int, count: int, day: str) -> pa.Table:
    """`count` orders from `first_id`, all on `day`."""
    ids = list(range(first_id, first_id + count))
    return pa.table(
        {
            "order_id": pa.array(ids, pa.int64()),
            "amount": pa.array([i * 1.5 for i in ids], pa.float64()),
            "day": pa.array([dt.date.fromisoformat(day)] * count, pa.date32()),
        }
    )


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    """One bucket holding every kind of object the tests read (written once)."""
    name = s3_server.new_bucket("store")
    put = s3_server.put
    put(name, "sales/2026/jan.parquet", parquet_bytes(orders(1, 3, "2026-01-05")))
    put(name, "sales/2026/feb.parquet", parquet_bytes(orders(4, 2, "2026-02-07")))
    put(name, "sales/2025/dec.parquet", parquet_bytes(orders(100, 1, "2025-12-24")))
    put(name, "sales/2026/_SUCCESS", b"")
    put(name, "csv/a.csv", b"id;name;born\n1;Ana;1990-04-01\n2;Bo;1985-11-30\n")
    put(name, "csv/b.csv", b"id;name;born\n3;Cy;2001-01-01\n")
    put(name, "json/rows.json", json.dumps([{"id": 1, "tag": "x"}, {"id": 2, "tag": "y"}]).encode())
    put(name, "ndjson/rows.ndjson", b'{"id": 7, "ok": true}\n{"id": 8, "ok": false}\n')
    put(name, "hive/country=DE/part-0.parquet", parquet_bytes(orders(1, 2, "2026-03-01")))
    put(name, "hive/country=FR/part-0.parquet", parquet_bytes(orders(3, 1, "2026-03-02")))
    put(name, "hivecsv/year=2026/country=DE/p.csv", b"id,v\n1,10\n2,20\n")
    put(name, "hivecsv/year=2025/country=FR/p.csv", b"id,v\n3,30\n")
    return name


def connector(tmp_path: Path, server: S3Server, **options: Any) -> S3Connector:
    """An s3 source of this server, validated as the descriptor would be."""
    options = {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        **options,
    }
    context = SourceContext(tmp_path, tmp_path / "data")
    built = build_connector("objects", SourceConfig(type="s3", **options), context)
    assert isinstance(built, S3Connector)
    return built


def load(source: Connector, order_by: str | None = None) -> pa.Table:
    """Load the stream into DuckDB as the core does (CTAS over the registered reader)."""
    with source.open_stream(LoadState()) as reader, duckdb.connect() as db:
        db.register("stream", reader)
        db.execute("CREATE TABLE loaded AS SELECT * FROM stream")
        order = f" ORDER BY {order_by}" if order_by else ""
        return db.sql(f"SELECT * FROM loaded{order}").to_arrow_table()


# formats, globs, partitions ----------------------------------------------------------------


def test_parquet_glob_reads_only_matching_objects(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    table = load(
        connector(tmp_path, s3_server, bucket=bucket, glob="sales/2026/*.parquet"), "order_id"
    )
    assert table.column("order_id").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("amount").to_pylist() == [1.5, 3.0, 4.5, 6.0, 7.5]
    assert table.schema.field("day").type == pa.date32()
    assert table.column("day").to_pylist()[-1] == dt.date(2026, 2, 7)


def test_double_star_glob_crosses_folders(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    table = load(
        connector(tmp_path, s3_server, bucket=bucket, glob="sales/**/*.parquet"), "order_id"
    )
    assert table.column("order_id").to_pylist() == [1, 2, 3, 4, 5, 100]


def test_prefix_skips_hidden_objects_and_takes_format_from_keys(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    source = connector(tmp_path, s3_server, bucket=bucket, prefix="sales/20")
    table = load(source, "order_id")
    assert table.num_rows == 6  # sales/2026/_SUCCESS is skipped
    assert table.column_names == ["order_id", "amount", "day"]


def test_csv_objects_are_read_like_local_csv(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    table = load(connector(tmp_path, s3_server, bucket=bucket, glob="csv/*.csv"), "id")
    assert table.to_pylist() == [
        {"id": 1, "name": "Ana", "born": dt.date(1990, 4, 1)},
        {"id": 2, "name": "Bo", "born": dt.date(1985, 11, 30)},
        {"id": 3, "name": "Cy", "born": dt.date(2001, 1, 1)},
    ]
    assert table.schema.field("id").type == pa.int64()
    assert list(tmp_path.joinpath("data").iterdir()) == []  # the copies are gone


def test_json_array_object(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    table = load(connector(tmp_path, s3_server, bucket=bucket, prefix="json/"), "id")
    assert table.to_pylist() == [{"id": 1, "tag": "x"}, {"id": 2, "tag": "y"}]


def test_ndjson_object_with_declared_format(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    source = connector(tmp_path, s3_server, bucket=bucket, prefix="ndjson/", format="ndjson")
    table = load(source, "id")
    assert table.to_pylist() == [{"id": 7, "ok": True}, {"id": 8, "ok": False}]
    assert table.schema.field("ok").type == pa.bool_()


def test_hive_partitions_become_columns_for_parquet(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    source = connector(tmp_path, s3_server, bucket=bucket, prefix="hive/", hive_partitioning=True)
    table = load(source, "order_id")
    assert table.column("country").to_pylist() == ["DE", "DE", "FR"]
    assert table.column("order_id").to_pylist() == [1, 2, 3]


def test_hive_partitions_become_columns_for_csv(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    source = connector(
        tmp_path, s3_server, bucket=bucket, glob="hivecsv/**/*.csv", hive_partitioning=True
    )
    table = load(source, "id")
    assert table.select(["id", "v", "year", "country"]).to_pylist() == [
        {"id": 1, "v": 10, "year": 2026, "country": "DE"},
        {"id": 2, "v": 20, "year": 2026, "country": "DE"},
        {"id": 3, "v": 30, "year": 2025, "country": "FR"},
    ]


def test_without_hive_partitioning_no_partition_columns(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    table = load(connector(tmp_path, s3_server, bucket=bucket, prefix="hivecsv/"), "id")
    assert table.column_names == ["id", "v"]


def test_large_object_streams_in_several_batches(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.new_bucket()
    rows = 600_000
    s3_server.put(
        name, "big.parquet", parquet_bytes(orders(0, rows, "2026-01-01"), row_group_size=100_000)
    )
    source = connector(tmp_path, s3_server, bucket=name, prefix="big")
    with source.open_stream(LoadState()) as reader:
        sizes = [batch.num_rows for batch in reader]
    assert sum(sizes) == rows
    assert len(sizes) >= 6 and max(sizes) <= 262_144


def test_glob_translation() -> None:
    assert glob_regex("a/*.csv").match("a/x.csv")
    assert not glob_regex("a/*.csv").match("a/b/x.csv")
    assert glob_regex("a/**/*.csv").match("a/x.csv")
    assert glob_regex("a/**/*.csv").match("a/b/c/x.csv")
    assert glob_regex("a/p-?.[cp]sv").match("a/p-1.psv")
    assert not glob_regex("a/[!x].csv").match("a/x.csv")
    assert literal_folder("sales/2026/*/x.parquet") == "sales/2026"
    assert literal_folder("*.csv") == ""


# credentials -------------------------------------------------------------------------------


@pytest.fixture
def locked(s3_server: S3Server, bucket: str) -> Iterator[tuple[str, str]]:
    """The server checking signatures: (key id, secret) of a user allowed to read."""
    with s3_server.enforced_credentials() as key:
        yield key


def test_credentials_from_env_are_used_and_never_shown(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    locked: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, locked[0])
    monkeypatch.setenv(SECRET_ENV, locked[1])
    source = connector(
        tmp_path, s3_server, bucket=bucket, glob="sales/2026/*.parquet",
        access_key_id=f"${{env:{KEY_ENV}}}", secret_access_key=f"${{env:{SECRET_ENV}}}",
    )  # fmt: skip
    assert load(source).num_rows == 5
    shown = json.dumps(source.describe())
    assert locked[0] not in shown and locked[1] not in shown and SECRET_ENV not in shown
    assert source.describe()["endpoint"] == s3_server.endpoint
    assert source.describe()["bucket"] == bucket


def test_wrong_secret_is_refused_without_showing_it(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    locked: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "wrong-secret-value-123456"
    monkeypatch.setenv(SECRET_ENV, wrong)
    source = connector(
        tmp_path, s3_server, bucket=bucket, prefix="sales/",
        access_key_id=locked[0], secret_access_key=f"${{env:{SECRET_ENV}}}",
    )  # fmt: skip
    with pytest.raises(SourceError) as caught:
        load(source)
    assert not isinstance(caught.value, SourceUnavailableError)
    assert "access denied" in caught.value.message
    assert "SIGNATURE_DOES_NOT_MATCH" in caught.value.message
    assert wrong not in str(caught.value.to_dict())


def test_unknown_access_key_is_refused(
    tmp_path: Path, s3_server: S3Server, bucket: str, locked: tuple[str, str]
) -> None:
    source = connector(
        tmp_path, s3_server, bucket=bucket, prefix="sales/",
        access_key_id="AKIANOTAREALKEY00000", secret_access_key=locked[1],
    )  # fmt: skip
    with pytest.raises(SourceError, match=r"access denied.*INVALID_ACCESS_KEY_ID") as caught:
        load(source)
    assert locked[1] not in str(caught.value.to_dict())


def test_missing_env_reference_is_a_clear_error(
    tmp_path: Path, s3_server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    source = connector(
        tmp_path, s3_server, bucket=bucket, prefix="sales/",
        secret_access_key=f"${{env:{SECRET_ENV}}}",
    )  # fmt: skip
    with pytest.raises(SourceError, match=f"environment variable {SECRET_ENV} is not set"):
        load(source)


# errors ------------------------------------------------------------------------------------


def test_missing_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    source = connector(tmp_path, s3_server, bucket="no-such-bucket-0000", prefix="x/")
    with pytest.raises(SourceError, match="bucket does not exist") as caught:
        load(source)
    assert not caught.value.transient
    assert caught.value.where == "sources.objects.bucket"


def test_no_matching_object(tmp_path: Path, s3_server: S3Server, bucket: str) -> None:
    source = connector(tmp_path, s3_server, bucket=bucket, glob="sales/2030/*.parquet")
    with pytest.raises(SourceError, match=r"no object in s3://store-\w+ .* glob 'sales/2030/"):
        load(source)


def test_unreachable_endpoint_is_transient(tmp_path: Path, s3_server: S3Server) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    source = connector(tmp_path, s3_server, bucket="b", prefix="x/", endpoint=closed)
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=f"cannot reach s3://b at {closed}"):
        load(source)
    assert time.monotonic() - started < 10


def test_digits_of_a_key_are_not_an_access_denied_status(s3_server: S3Server) -> None:
    """pyarrow's own error for a corrupt `0403.parquet` names the key: no 403 status in it."""
    name = s3_server.new_bucket()
    s3_server.put(name, "p/0403.parquet", b"PAR1 not really parquet")
    with pytest.raises(pa.ArrowException) as raised:
        pq.read_table(f"{name}/p/0403.parquet", filesystem=s3_server.filesystem())
    assert "0403.parquet" in str(raised.value)
    found = store_error(raised.value, store=f"s3://{name}", where="sources.objects")
    assert type(found) is SourceError
    assert found.message.startswith(f"cannot read from s3://{name}: Could not open Parquet")
    assert "access denied" not in found.message


@pytest.mark.parametrize(
    ("text", "kind", "start"),
    [("When reading information for key 'p/0403.csv' in bucket 'b': AWS Error UNKNOWN "
      "(HTTP status 403) during HeadObject operation: No response body.",
      SourceError, "access denied by s3://b: check access_key_id"),
     ("Kernel error -> Error performing GET http://127.0.0.1:9/b/t/_delta_log/0403.json - "
      "Server returned non-2xx status code\n  ↳ 403 Forbidden",
      SourceError, "access denied by s3://b: check access_key_id"),
     ("When reading information for key 'p/x.csv' in bucket 'b': AWS Error UNKNOWN "
      "(HTTP status 503) during HeadObject operation: No response body.",
      SourceUnavailableError, "cannot reach s3://b: When reading"),
     ("When reading information for key 'p/503.csv' in bucket 'b': AWS Error UNKNOWN "
      "(HTTP status 400) during HeadObject operation: No response body.",
      SourceError, "cannot read from s3://b: When reading")],
    ids=["pyarrow-403", "delta-rs-403", "pyarrow-503", "key-503-status-400"],
)  # fmt: skip
def test_http_status_classifies_store_errors(
    text: str, kind: type[SourceError], start: str
) -> None:
    """Statuses count where pyarrow and delta-rs print them (message shapes of those libraries)."""
    found = store_error(OSError(text), store="s3://b", where="sources.objects")
    assert type(found) is kind
    assert found.message.startswith(start)


def test_corrupt_parquet_object_is_named(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.new_bucket()
    s3_server.put(name, "p/0-good.parquet", parquet_bytes(orders(1, 5, "2026-01-01")))
    s3_server.put(name, "p/1-bad.parquet", b"PAR1 not really parquet")
    with pytest.raises(SourceError, match=rf"s3://{name}/p/1-bad.parquet") as caught:
        load(connector(tmp_path, s3_server, bucket=name, prefix="p/"))
    assert not caught.value.transient


def test_truncated_parquet_object_is_named(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.new_bucket()
    whole = parquet_bytes(orders(1, 5000, "2026-01-01"))
    s3_server.put(name, "p/0-good.parquet", whole)
    s3_server.put(name, "p/1-cut.parquet", whole[: len(whole) // 2])
    with pytest.raises(SourceError, match=rf"Parquet object s3://{name}/p/1-cut.parquet"):
        load(connector(tmp_path, s3_server, bucket=name, prefix="p/"))


def test_garbled_pages_in_a_later_object_are_named(tmp_path: Path, s3_server: S3Server) -> None:
    """The footer is intact, the data pages are not: the error comes while DuckDB reads."""
    name = s3_server.new_bucket()
    whole = parquet_bytes(orders(1, 50_000, "2026-01-01"), compression="none")
    garbled = whole[:4] + bytes(len(whole) // 2) + whole[4 + len(whole) // 2 :]
    s3_server.put(name, "p/0-good.parquet", whole)
    s3_server.put(name, "p/1-garbled.parquet", garbled)
    with pytest.raises(SourceError, match=rf"s3://{name}/p/1-garbled.parquet"):
        load(connector(tmp_path, s3_server, bucket=name, prefix="p/"))


def test_malformed_csv_object_is_named_by_its_s3_path(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.new_bucket()
    s3_server.put(name, "c/a.csv", b"id,v\n1,2\n")
    s3_server.put(name, "c/b.csv", b"id,v\n3,bad-\xff\xfe\n")
    with pytest.raises(SourceError) as caught:
        load(connector(tmp_path, s3_server, bucket=name, prefix="c/"))
    assert f"s3://{name}/c/b.csv" in caught.value.message
    assert "Invalid unicode" in caught.value.message
    assert str(tmp_path) not in str(caught.value.to_dict())


def test_unknown_format_asks_for_one(tmp_path: Path, s3_server: S3Server) -> None:
    name = s3_server.new_bucket()
    s3_server.put(name, "x/a.dat", b"1,2\n")
    with pytest.raises(SourceError, match="set 'format'"):
        load(connector(tmp_path, s3_server, bucket=name, prefix="x/"))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"prefix": "a/", "glob": "*.csv"}, "either prefix or glob"),
        ({"secret_access_key": "s"}, "both access_key_id and secret_access_key"),
        ({"anonymous": True, "access_key_id": "k", "secret_access_key": "s"}, "anonymous"),
        ({"format": "xml"}, "format"),
        ({"bucket": "a/b"}, "bucket"),
        ({"endpoints": "x"}, "unknown field"),
    ],
)
def test_invalid_spec_is_refused(tmp_path: Path, options: dict[str, Any], reason: str) -> None:
    config = SourceConfig(type="s3", **{"bucket": "b", **options})
    with pytest.raises(DescriptorError, match=reason):
        build_connector("objects", config, SourceContext(tmp_path, tmp_path / "data"))


# through a product -------------------------------------------------------------------------


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


def test_ingest_s3_source_through_a_product(
    tmp_path: Path,
    s3_server: S3Server,
    bucket: str,
    settings: DataproductSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SECRET_ENV, s3_server.secret_key)
    source = {
        "type": "s3", "bucket": bucket, "glob": "hive/**/*.parquet", "hive_partitioning": True,
        "endpoint": s3_server.endpoint, "access_key_id": s3_server.access_key,
        "secret_access_key": f"${{env:{SECRET_ENV}}}",
    }  # fmt: skip
    product = write_product(tmp_path / "product", {"orders": source})
    runtime = ProductRuntime.open(product, settings)
    try:
        [ingestion] = runtime.ingest("orders", principal="test")
        assert ingestion.status == "succeeded" and ingestion.rows == 3
        with runtime.storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT order_id, amount, day, country FROM input.orders ORDER BY order_id"
            ).fetchall()
        assert rows == [
            (1, 1.5, dt.date(2026, 3, 1), "DE"),
            (2, 3.0, dt.date(2026, 3, 1), "DE"),
            (3, 4.5, dt.date(2026, 3, 2), "FR"),
        ]
        assert s3_server.secret_key not in json.dumps(runtime.source("orders").describe())
    finally:
        runtime.close()


def test_failed_ingest_leaves_input_as_it_was(
    tmp_path: Path, s3_server: S3Server, settings: DataproductSettings
) -> None:
    name = s3_server.new_bucket()
    s3_server.put(name, "p/a.parquet", parquet_bytes(orders(1, 4, "2026-01-01")))
    source = {
        "type": "s3", "bucket": name, "prefix": "p/", "endpoint": s3_server.endpoint,
        "access_key_id": s3_server.access_key, "secret_access_key": s3_server.secret_key,
    }  # fmt: skip
    runtime = ProductRuntime.open(write_product(tmp_path / "product", {"orders": source}), settings)
    try:
        runtime.ingest("orders", principal="test")
        s3_server.put(name, "p/b.parquet", b"PAR1 broken")
        with pytest.raises(SourceError, match=rf"s3://{name}/p/b.parquet"):
            runtime.ingest("orders", principal="test")
        with runtime.storage.reader() as cursor:
            assert cursor.execute("SELECT count(*) FROM input.orders").fetchone() == (4,)
    finally:
        runtime.close()
