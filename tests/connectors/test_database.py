"""The database connector against the real PostgreSQL and MariaDB of this machine, and SQLite.

Each test creates its own uniquely named tables and drops them afterwards.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors.database import DatabaseConnector, DatabaseSpec
from dataproduct.connector import LoadState, SourceContext
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime
from tests.conftest import skip_or_fail

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A real database server: run statements, make unique table names, drop them after."""

    def __init__(self, url: str, kind: str) -> None:
        import sqlalchemy as sa

        driver_url = url.replace("postgresql://", "postgresql+psycopg://")
        self.url, self.kind = url, kind
        self.engine = sa.create_engine(driver_url, isolation_level="AUTOCOMMIT")
        self.tables: list[str] = []

    def table(self, prefix: str = "dp") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.tables.append(name)
        return name

    def run(self, *statements: str) -> None:
        with self.engine.connect() as connection:
            for statement in statements:  # the drivers format even without parameters
                connection.exec_driver_sql(statement.replace("%", "%%"))

    def close(self) -> None:
        quote = '"' if self.kind == "postgresql" else "`"
        self.run(*(f"DROP TABLE IF EXISTS {quote}{t}{quote}" for t in self.tables))
        self.engine.dispose()


def _server(url: str, kind: str, port: int) -> Iterator[Server]:
    if not _reachable(port):
        skip_or_fail(f"{kind} is not reachable on 127.0.0.1:{port}")
    server = Server(url, kind)
    yield server
    server.close()


@pytest.fixture
def pg() -> Iterator[Server]:
    """The local PostgreSQL."""
    yield from _server(PG_URL, "postgresql", 5432)


@pytest.fixture
def my() -> Iterator[Server]:
    """The local MariaDB."""
    yield from _server(MY_URL, "mysql", 3306)


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each real server in turn."""
    return request.getfixturevalue("pg" if request.param == "postgresql" else "my")


def connector(tmp_path: Path, **options: Any) -> DatabaseConnector:
    spec = DatabaseSpec.model_validate({"type": "database", **options})
    return DatabaseConnector("src", spec, SourceContext(tmp_path, tmp_path))


def load(
    tmp_path: Path, watermark: Any = None, **options: Any
) -> tuple[dict[str, str], list[tuple[Any, ...]]]:
    """Stream a source through DuckDB (as the core does): its column types and its rows."""
    engine = duckdb.connect()
    with connector(tmp_path, **options).open_stream(LoadState(watermark)) as reader:
        engine.register("stream", reader)
        engine.execute("CREATE TABLE loaded AS SELECT * FROM stream")
    types = {row[0]: row[1] for row in engine.execute("DESCRIBE loaded").fetchall()}
    rows = engine.execute("SELECT * FROM loaded").fetchall()
    engine.close()
    return types, rows


def make_orders(server: Server) -> str:
    name = server.table("orders")
    ts = "TIMESTAMPTZ" if server.kind == "postgresql" else "TIMESTAMP(6) NULL"
    server.run(
        f"CREATE TABLE {name} (id BIGINT PRIMARY KEY, customer VARCHAR(40), "
        f"amount NUMERIC(12,2), updated_at {ts})",
        f"INSERT INTO {name} VALUES (1, 'ada', 10.50, '2024-01-01 10:00:00'), "
        "(2, 'bob', 20.25, '2024-01-02 10:00:00'), (3, 'cy:d%', NULL, '2024-01-03 10:00:00')",
    )
    return name


def at(day: int) -> datetime:
    return datetime(2024, 1, day, 10, tzinfo=UTC)


# loads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_full_load_of_a_table(server: Server, tmp_path: Path, fast: bool) -> None:
    name = make_orders(server)
    types, rows = load(tmp_path, url=server.url, table=name, fast=fast)
    assert types == {
        "id": "BIGINT",
        "customer": "VARCHAR",
        "amount": "DECIMAL(12,2)",
        "updated_at": "TIMESTAMP WITH TIME ZONE",
    }
    assert sorted(rows) == [
        (1, "ada", Decimal("10.50"), at(1)),
        (2, "bob", Decimal("20.25"), at(2)),
        (3, "cy:d%", None, at(3)),
    ]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_full_load_of_a_query(server: Server, tmp_path: Path, fast: bool) -> None:
    """Colons and percent signs in the query reach the server untouched."""
    name = make_orders(server)
    query = (
        f"SELECT id, customer, amount * 2 AS doubled FROM {name} "
        "WHERE customer LIKE '%:d%%' OR amount > 15;"
    )
    types, rows = load(tmp_path, url=server.url, query=query, fast=fast)
    assert list(types) == ["id", "customer", "doubled"]
    assert sorted(rows) == [(2, "bob", Decimal("40.50")), (3, "cy:d%", None)]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("cursor", ["id", "updated_at"])
def test_incremental_loads_only_new_rows(
    server: Server, tmp_path: Path, fast: bool, cursor: str
) -> None:
    name = make_orders(server)
    options = {"url": server.url, "table": name, "fast": fast, "incremental": {"cursor": cursor}}
    _, first = load(tmp_path, **options)
    assert [row[0] for row in first] == [1, 2, 3]  # in cursor order
    watermark = max(row[0 if cursor == "id" else 3] for row in first)
    server.run(
        f"INSERT INTO {name} VALUES (4, 'dee', 1.00, '2024-01-04 10:00:00'), "
        "(5, 'eve', 2.00, '2024-01-05 10:00:00')"
    )
    _, second = load(tmp_path, watermark, **options)
    assert second == [(4, "dee", Decimal("1.00"), at(4)), (5, "eve", Decimal("2.00"), at(5))]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_incremental_query_with_a_text_cursor(server: Server, tmp_path: Path, fast: bool) -> None:
    """A query is wrapped as a subquery; a string watermark with quotes stays a value."""
    name = make_orders(server)
    server.run(f"INSERT INTO {name} VALUES (4, 'it''s', 1.00, '2024-01-04 10:00:00')")
    options = {
        "url": server.url,
        "query": f"SELECT customer, id FROM {name}",
        "fast": fast,
        "incremental": {"cursor": "customer"},
    }
    _, rows = load(tmp_path, "bob", **options)
    assert rows == [("cy:d%", 3), ("it's", 4)]
    _, rows = load(tmp_path, "cy:d%' OR '1'='1", **options)
    assert rows == [("it's", 4)]


# types -----------------------------------------------------------------------------------

PG_TYPES = {
    "id": ("BIGINT", "BIGINT"),
    "price": ("NUMERIC(12,2)", "DECIMAL(12,2)"),
    "ratio": ("NUMERIC", "DOUBLE"),
    "at_local": ("TIMESTAMP", "TIMESTAMP"),
    "at_utc": ("TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"),
    "day": ("DATE", "DATE"),
    "flag": ("BOOLEAN", "BOOLEAN"),
    "doc": ("JSON", "JSON"),
    "docb": ("JSONB", "JSON"),
    "ints": ("INT[]", "INTEGER[]"),
    "texts": ("TEXT[]", "VARCHAR[]"),
    "note": ("TEXT", "VARCHAR"),
    "raw": ("BYTEA", "BLOB"),
    "uid": ("UUID", "UUID"),
}
PG_ROW = (
    "1, 1234567890.12, 1.000000000001, '2024-01-02 03:04:05.123456', "
    "'2024-01-02 03:04:05+02', '2024-01-02', TRUE, '{\"a\": 1}', '{\"b\": [1, 2]}', "
    "'{1,2,NULL}', '{\"a\",\"b c\"}', 'héllo 😀 漢字', '\\x00ff', "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"
)
PG_VALUES = (
    1, Decimal("1234567890.12"), 1.000000000001, datetime(2024, 1, 2, 3, 4, 5, 123456),
    datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC), date(2024, 1, 2), True, '{"a": 1}',
    '{"b": [1, 2]}', [1, 2, None], ["a", "b c"], "héllo 😀 漢字", b"\x00\xff",
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
)  # fmt: skip


def test_postgres_types_are_the_same_on_both_paths(pg: Server, tmp_path: Path) -> None:
    name = pg.table("types")
    columns = ", ".join(f"{column} {sql}" for column, (sql, _) in PG_TYPES.items())
    pg.run(
        f"CREATE TABLE {name} ({columns})",
        f"INSERT INTO {name} VALUES ({PG_ROW})",
        f"INSERT INTO {name} (id) VALUES (2)",
    )
    expected = {column: duck for column, (_, duck) in PG_TYPES.items()}
    for fast in (True, False):
        types, rows = load(tmp_path, url=pg.url, table=name, fast=fast)
        assert types == expected, f"fast={fast}"
        values = sorted(rows)
        assert values[0] == PG_VALUES, f"fast={fast}"
        assert values[1] == (2,) + (None,) * (len(PG_TYPES) - 1)
        assert json.loads(values[0][7]) == {"a": 1}


MY_TYPES = {
    "id": ("BIGINT", "BIGINT"),
    "price": ("DECIMAL(12,2)", "DECIMAL(12,2)"),
    "big": ("DECIMAL(38,10)", "DECIMAL(38,10)"),
    "at_local": ("DATETIME(6)", "TIMESTAMP"),
    "at_utc": ("TIMESTAMP(6) NULL", "TIMESTAMP WITH TIME ZONE"),
    "day": ("DATE", "DATE"),
    "flag": ("BOOLEAN", "BOOLEAN"),
    "small": ("TINYINT", "TINYINT"),
    "count_u": ("INT UNSIGNED", "UINTEGER"),
    "doc": ("JSON", "VARCHAR"),
    "note": ("TEXT", "VARCHAR"),
    "raw": ("BLOB", "BLOB"),
    "uid": ("UUID", "VARCHAR"),
}
MY_ROW = (
    "1, 1234567890.12, 12345678901234567890.0123456789, '2024-01-02 03:04:05.123456', "
    "'2024-01-02 03:04:05', '2024-01-02', TRUE, -5, 4000000000, '{\"a\":1}', "
    "'héllo 😀 漢字', x'00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"
)
MY_VALUES = (
    1, Decimal("1234567890.12"), Decimal("12345678901234567890.0123456789"),
    datetime(2024, 1, 2, 3, 4, 5, 123456), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    date(2024, 1, 2), True, -5, 4000000000, '{"a":1}', "héllo 😀 漢字", b"\x00\xff",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
)  # fmt: skip


def test_mariadb_types_are_the_same_on_both_paths(my: Server, tmp_path: Path) -> None:
    """TIMESTAMP values are read in UTC whatever the server's time zone."""
    name = my.table("types")
    columns = ", ".join(f"{column} {sql}" for column, (sql, _) in MY_TYPES.items())
    my.run(
        f"CREATE TABLE {name} ({columns}) DEFAULT CHARSET=utf8mb4",
        "SET time_zone = '+00:00'",
    )
    with my.engine.connect() as connection:  # one session: the time zone applies to it
        connection.exec_driver_sql("SET time_zone = '+00:00'")
        connection.exec_driver_sql(f"INSERT INTO {name} VALUES ({MY_ROW})")
        connection.exec_driver_sql(f"INSERT INTO {name} (id) VALUES (2)")
    expected = {column: duck for column, (_, duck) in MY_TYPES.items()}
    for fast in (True, False):
        types, rows = load(tmp_path, url=my.url, table=name, fast=fast)
        assert types == expected, f"fast={fast}"
        values = sorted(rows)
        assert values[0] == MY_VALUES, f"fast={fast}"
        assert values[1] == (2,) + (None,) * (len(MY_TYPES) - 1)


def test_sqlite_through_the_generic_path(tmp_path: Path) -> None:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER, name TEXT, price REAL, note TEXT)")
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [(1, "pen", 1.5, None), (2, "ink 🖋", 3.0, None), (3, "pad", 2.25, "x")],
        )
    url = f"sqlite:///{path}"
    types, rows = load(tmp_path, url=url, table="items")
    assert types == {"id": "BIGINT", "name": "VARCHAR", "price": "DOUBLE", "note": "VARCHAR"}
    assert sorted(rows) == [(1, "pen", 1.5, None), (2, "ink 🖋", 3.0, None), (3, "pad", 2.25, "x")]
    _, rows = load(tmp_path, 1, url=url, table="items", incremental={"cursor": "id"})
    assert [row[0] for row in rows] == [2, 3]
    _, rows = load(tmp_path, url=url, query="SELECT name FROM items WHERE price > 2")
    assert sorted(rows) == [("ink 🖋",), ("pad",)]


# errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "mysql+pymysql"])
def test_unreachable_server_is_transient(tmp_path: Path, scheme: str) -> None:
    url = f"{scheme}://user:pw-secret-1@127.0.0.1:{_closed_port()}/test"
    with pytest.raises(SourceUnavailableError) as raised:
        load(tmp_path, url=url, table="anything")
    assert "cannot reach the database" in raised.value.message
    assert raised.value.where == "sources.src.url"
    assert "pw-secret-1" not in str(raised.value.to_dict())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_mariadb_wrong_password(my: Server, tmp_path: Path, fast: bool) -> None:
    url = "mysql+pymysql://root:wrong-Pa55word@127.0.0.1:3306/test"
    with pytest.raises(SourceError) as raised:
        load(tmp_path, url=url, table="anything", fast=fast)
    assert not isinstance(raised.value, SourceUnavailableError)
    assert "Access denied" in raised.value.message
    assert raised.value.where == "sources.src.url"
    assert "wrong-Pa55word" not in str(raised.value.to_dict())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize(
    ("path", "reason"),
    [("nobody_dp:pw-Secret-9@127.0.0.1:5432/test", 'role "nobody_dp" does not exist'),
     ("postgres:pw-Secret-9@127.0.0.1:5432/no_such_db_dp", 'database "no_such_db_dp" does not')],
)  # fmt: skip
def test_postgres_refused_login(
    pg: Server, tmp_path: Path, fast: bool, path: str, reason: str
) -> None:
    """Trust auth cannot reject a password, so an unknown role and database stand in."""
    with pytest.raises(SourceError) as raised:
        load(tmp_path, url=f"postgresql://{path}", table="anything", fast=fast)
    assert not isinstance(raised.value, SourceUnavailableError)
    assert reason in raised.value.message
    assert raised.value.where == "sources.src.url"
    assert "pw-Secret-9" not in str(raised.value.to_dict())


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_missing_table_is_named(server: Server, tmp_path: Path, fast: bool) -> None:
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(SourceError) as raised:
        load(tmp_path, url=server.url, table=missing, fast=fast)
    assert not isinstance(raised.value, SourceUnavailableError)
    assert f"cannot read table {missing}" in raised.value.message
    assert raised.value.where == "sources.src.table"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_bad_query(server: Server, tmp_path: Path, fast: bool) -> None:
    with pytest.raises(SourceError) as raised:
        load(tmp_path, url=server.url, query="SELECT no_such_column_x FROM (SELECT 1 AS a) t")
    assert "cannot read the query" in raised.value.message
    assert "no_such_column_x" in raised.value.message
    assert raised.value.where == "sources.src.query"


def test_spec_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of 'table' or 'query'"):
        DatabaseSpec.model_validate({"url": PG_URL, "table": "a", "query": "SELECT 1"})
    with pytest.raises(ValueError, match="exactly one"):
        DatabaseSpec.model_validate({"url": PG_URL})
    with pytest.raises(ValueError, match="single SELECT"):
        DatabaseSpec.model_validate({"url": PG_URL, "query": "DELETE FROM orders"})
    with pytest.raises(ValueError, match="single SELECT"):
        DatabaseSpec.model_validate({"url": PG_URL, "query": "SELECT 1; DROP TABLE orders"})
    spec = DatabaseSpec.model_validate({"url": PG_URL, "table": "t", "schema": "crm"})
    assert spec.db_schema == "crm"
    assert spec.batch_rows == 245_760


def test_describe_hides_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    literal = connector(tmp_path, url="postgresql://u:hunter2-pw@db:5432/crm", table="orders")
    described = literal.describe()
    assert "hunter2-pw" not in json.dumps(described)
    assert described["url"] == "postgresql://u:***@db:5432/crm"
    assert described["table"] == "orders"
    referenced = connector(tmp_path, url="postgresql://u:${env:PG_PW}@db/crm", query="SELECT 1")
    assert referenced.describe()["url"] == "postgresql://u:${env:PG_PW}@db/crm"


def test_password_from_the_environment(
    pg: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `${env:..}` password is read at open time (trust auth accepts any password)."""
    name = make_orders(pg)
    monkeypatch.setenv("DP_TEST_PG_PW", "from-env-pw")
    _, rows = load(tmp_path, url="postgresql://postgres:${env:DP_TEST_PG_PW}@127.0.0.1/test",
                   table=name)  # fmt: skip
    assert len(rows) == 3


# end to end ------------------------------------------------------------------------------


def test_ingest_through_a_product(
    pg: Server, tmp_path: Path, settings: DataproductSettings
) -> None:
    name = make_orders(pg)
    product = tmp_path / "product"
    product.mkdir()
    descriptor = {
        "name": "crm-orders",
        "domain": "sales",
        "version": "1.0.0",
        "owner": {"name": "Ana", "email": "ana@example.com"},
        "sources": {"orders": {"type": "database", "url": PG_URL, "table": name}},
    }
    (product / "dataproduct.yaml").write_text(json.dumps(descriptor), encoding="utf-8")
    runtime = ProductRuntime.open(product, settings)
    try:
        [ingestion] = runtime.ingest("orders", principal="test")
        assert ingestion.status == "succeeded"
        assert ingestion.rows == 3
        with runtime.storage.reader() as cursor:
            rows = cursor.execute("SELECT id, customer, amount FROM input.orders ORDER BY id")
            assert rows.fetchall() == [
                (1, "ada", Decimal("10.50")),
                (2, "bob", Decimal("20.25")),
                (3, "cy:d%", None),
            ]
            kind = cursor.execute(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = 'input' AND table_name = 'orders' AND column_name = 'amount'"
            ).fetchone()
            assert kind == ("DECIMAL(12,2)",)
        assert runtime.source("orders").describe()["table"] == name
    finally:
        runtime.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_error_while_streaming_is_a_source_error(pg: Server, tmp_path: Path, fast: bool) -> None:
    """A row that fails deep in the result surfaces as SourceError, not as DuckDB's wrapper."""
    query = "SELECT g, 1 / (g - 400000) AS boom FROM generate_series(1, 500000) AS g"
    with pytest.raises(SourceError) as raised:
        load(tmp_path, url=pg.url, query=query, fast=fast, batch_rows=1000)
    assert "division by zero" in raised.value.message


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_incremental_merge_through_a_product(
    server: Server, tmp_path: Path, settings: DataproductSettings, fast: bool
) -> None:
    """The product keeps the watermark: the next pull reads from it, a changed row replaces
    the stored one, and a row committed later at the very watermark is not missed."""
    name = make_orders(server)
    product = tmp_path / "product"
    product.mkdir()
    source = {
        "type": "database", "url": server.url, "table": name, "fast": fast,
        "incremental": {"cursor": "updated_at", "unique_key": ["id"]},
    }  # fmt: skip
    descriptor = {
        "name": "crm-orders",
        "domain": "sales",
        "version": "1.0.0",
        "owner": {"name": "Ana", "email": "ana@example.com"},
        "sources": {"orders": source},
    }
    (product / "dataproduct.yaml").write_text(json.dumps(descriptor), encoding="utf-8")
    runtime = ProductRuntime.open(product, settings)
    try:
        assert runtime.ingest("orders", principal="test")[0].rows == 3
        server.run(
            f"UPDATE {name} SET amount = 99.00, updated_at = '2024-01-04 10:00:00' WHERE id = 2",
            f"INSERT INTO {name} VALUES (4, 'dee', 1.00, '2024-01-03 10:00:00')",
        )
        second = runtime.ingest("orders", principal="test")[0]
        assert second.mode == "append"
        with runtime.storage.reader() as cursor:
            rows = cursor.execute("SELECT id, amount FROM input.orders ORDER BY id").fetchall()
        assert rows == [
            (1, Decimal("10.50")),
            (2, Decimal("99.00")),
            (3, None),
            (4, Decimal("1.00")),
        ]
    finally:
        runtime.close()
