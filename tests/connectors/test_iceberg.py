"""The iceberg connector on tables written by pyiceberg: a SQL catalog on SQLite, with a
local warehouse folder or a warehouse in S3 (moto)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from connectors.iceberg import IcebergConnector
from dataproduct.connector import SourceContext
from dataproduct.errors import DescriptorError, SourceError
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.connectors.s3_server import S3Server, s3_server
from tests.connectors.test_object_store import load, write_product

__all__ = ["s3_server"]  # the fixture, imported for pytest

SECRET_ENV = "DP_TEST_ICEBERG_SECRET"
SCHEMA = pa.schema([("order_id", pa.int64()), ("country", pa.string()), ("amount", pa.float64())])


@dataclass(frozen=True)
class IcebergTable:
    """A table written in two appends: its catalog properties and both snapshot ids."""

    catalog: dict[str, str]
    name: str
    first_snapshot: int
    second_snapshot: int


def write_table(catalog: dict[str, str], name: str = "sales.orders") -> IcebergTable:
    """Create `name` with pyiceberg and append two snapshots (3 rows, then 2)."""
    from pyiceberg.catalog import load_catalog

    writer = load_catalog("default", **catalog)
    writer.create_namespace_if_not_exists(name.split(".")[0])
    table = writer.create_table(name, schema=SCHEMA)
    table.append(pa.table({"order_id": [1, 2, 3], "country": ["DE", "DE", "FR"],
                           "amount": [1.5, 3.0, 4.5]}, schema=SCHEMA))  # fmt: skip
    first = table.current_snapshot()
    table.append(pa.table({"order_id": [4, 5], "country": ["FR", "IT"],
                           "amount": [6.0, 7.5]}, schema=SCHEMA))  # fmt: skip
    second = table.current_snapshot()
    assert first is not None and second is not None
    return IcebergTable(catalog, name, first.snapshot_id, second.snapshot_id)


def local_catalog(folder: Path) -> dict[str, str]:
    """A SQL catalog in a SQLite file and a warehouse folder, both under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "type": "sql",
        "uri": f"sqlite:///{folder / 'catalog.db'}",
        "warehouse": (folder / "warehouse").as_uri(),
    }


@pytest.fixture
def local_table(tmp_path: Path) -> IcebergTable:
    """A two-snapshot table in a local warehouse."""
    return write_table(local_catalog(tmp_path / "lake"))


def connector(tmp_path: Path, **options: Any) -> IcebergConnector:
    """An iceberg source, validated as the descriptor would be."""
    spec = IcebergConnector.spec_class.model_validate({"type": "iceberg", **options})
    return IcebergConnector("orders", spec, SourceContext(tmp_path, tmp_path / "data"))


def test_latest_snapshot(tmp_path: Path, local_table: IcebergTable) -> None:
    source = connector(tmp_path, catalog=local_table.catalog, table=local_table.name)
    table = load(source, "order_id")
    assert table.to_pylist() == [
        {"order_id": 1, "country": "DE", "amount": 1.5},
        {"order_id": 2, "country": "DE", "amount": 3.0},
        {"order_id": 3, "country": "FR", "amount": 4.5},
        {"order_id": 4, "country": "FR", "amount": 6.0},
        {"order_id": 5, "country": "IT", "amount": 7.5},
    ]
    assert table.schema.field("order_id").type == pa.int64()
    assert table.schema.field("amount").type == pa.float64()


def test_time_travel_by_snapshot_id(tmp_path: Path, local_table: IcebergTable) -> None:
    source = connector(
        tmp_path, catalog=local_table.catalog, table=local_table.name,
        snapshot_id=local_table.first_snapshot,
    )  # fmt: skip
    table = load(source, "order_id")
    assert table.column("order_id").to_pylist() == [1, 2, 3]
    assert table.column("country").to_pylist() == ["DE", "DE", "FR"]
    assert source.describe()["snapshot_id"] == local_table.first_snapshot


def test_missing_table(tmp_path: Path, local_table: IcebergTable) -> None:
    source = connector(tmp_path, catalog=local_table.catalog, table="sales.nope")
    with pytest.raises(SourceError, match=r"Iceberg table sales\.nope does not exist") as caught:
        load(source)
    assert not caught.value.transient
    assert caught.value.where == "sources.orders.table"


def test_missing_snapshot(tmp_path: Path, local_table: IcebergTable) -> None:
    source = connector(
        tmp_path, catalog=local_table.catalog, table=local_table.name, snapshot_id=12345
    )
    with pytest.raises(SourceError, match="has no snapshot 12345") as caught:
        load(source)
    assert caught.value.where == "sources.orders.snapshot_id"


def test_missing_data_file_is_a_source_error(tmp_path: Path, local_table: IcebergTable) -> None:
    for data_file in (tmp_path / "lake" / "warehouse").rglob("*.parquet"):
        data_file.unlink()
    source = connector(tmp_path, catalog=local_table.catalog, table=local_table.name)
    with pytest.raises(SourceError, match=r"cannot read the Iceberg table sales\.orders") as caught:
        load(source)
    assert not caught.value.transient


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"table": "orders"}, "table"),
        ({"catalog": {}}, "catalog"),
        ({"snapshot_id": "latest"}, "snapshot_id"),
    ],
)
def test_invalid_spec_is_refused(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        IcebergConnector.spec_class.model_validate(
            {"type": "iceberg", "catalog": {"type": "sql"}, "table": "a.b", **options}
        )


def test_s3_warehouse_with_checked_credentials(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.new_bucket("ice")
    catalog = {
        **local_catalog(tmp_path / "lake"),
        "warehouse": f"s3://{bucket}/warehouse",
        "s3.endpoint": s3_server.endpoint,
        "s3.region": s3_server.region,
        "s3.access-key-id": s3_server.access_key,
        "s3.secret-access-key": s3_server.secret_key,
    }
    written = write_table(catalog)
    with s3_server.enforced_credentials() as (key_id, secret):
        reading = {**catalog, "s3.access-key-id": key_id}
        reading["s3.secret-access-key"] = f"${{env:{SECRET_ENV}}}"
        source = connector(tmp_path, table=written.name, catalog=reading)
        monkeypatch.setenv(SECRET_ENV, secret)
        table = load(source, "order_id")
        assert table.column("order_id").to_pylist() == [1, 2, 3, 4, 5]
        wrong = "wrong-iceberg-secret-0123456789"
        monkeypatch.setenv(SECRET_ENV, wrong)
        with pytest.raises(SourceError) as caught:
            load(source)
        assert not caught.value.transient
        assert "access denied" in caught.value.message
        assert "ACCESS_DENIED" in caught.value.message
        assert wrong not in str(caught.value.to_dict())
    shown = json.dumps(source.describe())
    assert secret not in shown and SECRET_ENV not in shown
    assert source.describe()["catalog"]["warehouse"] == f"s3://{bucket}/warehouse"


def test_ingest_iceberg_source_through_a_product(
    tmp_path: Path, local_table: IcebergTable, settings: DataproductSettings
) -> None:
    """Needs the `iceberg` entry point (connectors.iceberg:IcebergConnector) installed."""
    sources = {
        "orders": {"type": "iceberg", "catalog": local_table.catalog, "table": local_table.name},
        "orders_v1": {
            "type": "iceberg", "catalog": local_table.catalog, "table": local_table.name,
            "snapshot_id": local_table.first_snapshot,
        },
    }  # fmt: skip
    product = write_product(tmp_path / "product", sources)
    try:
        runtime = ProductRuntime.open(product, settings)
    except DescriptorError as error:
        if "unknown connector type 'iceberg'" in error.message:
            pytest.fail("register the entry point iceberg = connectors.iceberg:IcebergConnector")
        raise
    try:
        ingestions = runtime.ingest(None, principal="test")
        assert sorted(i.rows for i in ingestions) == [3, 5]
        with runtime.storage.reader() as cursor:
            latest = cursor.execute(
                "SELECT order_id, country, amount FROM input.orders ORDER BY order_id"
            ).fetchall()
            first = cursor.execute("SELECT count(*) FROM input.orders_v1").fetchone()
        assert latest[-1] == (5, "IT", 7.5) and len(latest) == 5
        assert first == (3,)
    finally:
        runtime.close()
