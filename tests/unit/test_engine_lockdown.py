"""Defence in depth: SQL run straight on the product database (no guard) cannot get out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from dataproduct.errors import SqlRejectedError
from dataproduct.storage import Storage, file_connection, memory_connection


@pytest.fixture(params=["memory", "file"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The product database, in memory and as a file, opened as the runtime opens it."""
    if request.param == "memory":
        opened = Storage(memory_connection())
    else:
        opened = Storage(file_connection(tmp_path / "db" / "product.duckdb"))
    yield opened
    opened.close()


@pytest.fixture
def cursor(storage: Storage) -> Iterator[duckdb.DuckDBPyConnection]:
    """A raw cursor on the locked database: no guard in the way."""
    raw = storage.cursor()
    yield raw
    raw.close()


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    """A real, readable CSV file."""
    path = tmp_path / "secret.csv"
    path.write_text("id,word\n1,swordfish\n", encoding="utf-8")
    return path


def test_an_unlocked_engine_reads_the_same_file(csv_file: Path) -> None:
    """Control: the file is readable, so the refusals below come from the lockdown."""
    with duckdb.connect() as plain:
        assert plain.execute(f"SELECT word FROM read_csv('{csv_file}')").fetchall() == [
            ("swordfish",)
        ]


@pytest.mark.parametrize(
    "template",
    [
        "SELECT * FROM read_csv('{path}')",
        "SELECT * FROM read_csv_auto('{path}')",
        "SELECT * FROM '{path}'",
        "SELECT * FROM read_text('{path}')",
        "SELECT * FROM read_blob('{path}')",
        "SELECT * FROM glob('{dir}/*')",
    ],
)
def test_reading_a_file_fails(
    cursor: duckdb.DuckDBPyConnection, csv_file: Path, template: str
) -> None:
    sql = template.format(path=csv_file, dir=csv_file.parent)
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        cursor.execute(sql).fetchall()


def test_copy_to_a_file_fails_and_writes_nothing(
    cursor: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    target = tmp_path / "leak.csv"
    with pytest.raises(duckdb.PermissionException):
        cursor.execute(f"COPY (SELECT 42 AS answer) TO '{target}' (FORMAT csv)")
    assert not target.exists()
    with pytest.raises(duckdb.PermissionException):
        cursor.execute(f"EXPORT DATABASE '{tmp_path / 'dump'}'")
    assert not (tmp_path / "dump").exists()


def test_attach_fails(cursor: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as writer:
        writer.execute("CREATE TABLE t AS SELECT 1 AS x")
    with pytest.raises(duckdb.PermissionException):
        cursor.execute(f"ATTACH '{other}' AS other")
    found = cursor.execute("SELECT database_name FROM duckdb_databases()").fetchall()
    databases = {row[0] for row in found}
    assert "other" not in databases


@pytest.mark.parametrize("sql", ["INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL spatial"])
def test_extensions_cannot_be_installed_or_loaded(
    cursor: duckdb.DuckDBPyConnection, sql: str
) -> None:
    with pytest.raises(duckdb.PermissionException):
        cursor.execute(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "SET python_enable_replacements = true",
        "SET autoload_known_extensions = true",
        "SET memory_limit = '64GB'",
    ],
)
def test_configuration_is_locked(cursor: duckdb.DuckDBPyConnection, sql: str) -> None:
    with pytest.raises(duckdb.InvalidInputException, match="configuration has been locked"):
        cursor.execute(sql)
    settings = dict(
        cursor.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN "
            "('enable_external_access', 'lock_configuration', 'python_enable_replacements')"
        ).fetchall()
    )
    assert settings == {
        "enable_external_access": "false",
        "lock_configuration": "true",
        "python_enable_replacements": "false",
    }


def test_python_variables_are_not_visible(cursor: duckdb.DuckDBPyConnection) -> None:
    secret_rows = pa.table({"password": ["hunter2"]})
    with duckdb.connect() as plain:  # control: an unlocked engine finds the local variable
        assert plain.execute("SELECT * FROM secret_rows").fetchall() == [("hunter2",)]
    with pytest.raises(duckdb.CatalogException, match="secret_rows"):
        cursor.execute("SELECT * FROM secret_rows").fetchall()
    assert secret_rows.num_rows == 1


def test_environment_is_not_readable(cursor: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(duckdb.Error):
        cursor.execute("SELECT getenv('HOME')").fetchall()


def test_storage_translates_the_refusal(storage: Storage, csv_file: Path) -> None:
    """Through the storage's reader the driver error becomes our 422, never a raw error."""
    with pytest.raises(SqlRejectedError) as caught, storage.reader() as reader:
        reader.execute(f"SELECT * FROM read_csv('{csv_file}')").fetchall()
    assert caught.value.status == 422
    assert caught.value.message.startswith("not allowed: ")


def test_the_writer_is_locked_too(storage: Storage, tmp_path: Path) -> None:
    target = tmp_path / "from-writer.csv"
    with pytest.raises(SqlRejectedError), storage.transaction() as writer:
        writer.execute("CREATE TABLE output.t AS SELECT 1 AS x")
        writer.execute(f"COPY output.t TO '{target}'")
    assert not target.exists()
    with storage.reader() as reader:
        tables = reader.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 't'"
        ).fetchall()
    assert tables == [(0,)]  # the transaction was rolled back whole
