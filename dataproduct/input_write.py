"""Writing a stream of batches into `input.<source>`: replace, append or merge on a key.

It runs inside the caller's transaction, so a failure anywhere leaves the table as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress

import duckdb
import pyarrow as pa
from sqlglot import exp

from dataproduct.descriptor import ColumnSpec
from dataproduct.errors import ValidationError
from dataproduct.storage import fetch_one

_STREAM = "__dataproduct_ingest_stream"
_STAGED = "__dataproduct_ingest_staged"
_SHAPE = "__dataproduct_ingest_shape"


def create_declared(
    cursor: duckdb.DuckDBPyConnection, source: str, declared: Mapping[str, ColumnSpec]
) -> None:
    """An empty `input.<source>` with the declared columns, unless the table exists."""
    table = exp.table_(source, db="input", quoted=True)
    columns = ", ".join(
        f"{exp.to_identifier(name, quoted=True).sql('duckdb')} {spec.type}"
        for name, spec in declared.items()
    )
    cursor.execute(f"CREATE TABLE IF NOT EXISTS {table.sql('duckdb')} ({columns})")


def write_input(
    cursor: duckdb.DuckDBPyConnection,
    source: str,
    reader: pa.RecordBatchReader,
    *,
    mode: str,
    declared: Mapping[str, ColumnSpec] | None = None,
    unique_key: Sequence[str] = (),
    latest_by: str | None = None,
) -> int:
    """Load `reader` into `input.<source>` and return the rows it added (or replaced with).

    `mode` is `replace` or `append`; with a `unique_key`, appended rows replace the stored
    rows with the same key, and of several new rows with one key only the one with the
    greatest `latest_by` is kept. Declared columns get their declared SQL type in the table.
    """
    table = exp.table_(source, db="input", quoted=True)
    exists = _exists(cursor, source)
    cursor.register(_STREAM, reader)
    try:
        stream = _typed_select(reader.schema, declared or {})
        if mode != "append" or not exists:
            create = exp.Create(this=table, kind="TABLE", replace=True, expression=stream)
            cursor.execute(create.sql("duckdb"))
            return _count(cursor, table)
        _add_new_columns(cursor, table, reader.schema, source)
        if unique_key:
            return _merge(
                cursor, table, _latest_per_key(stream, unique_key, latest_by), unique_key, source
            )
        before = _count(cursor, table)
        _insert(cursor, table, stream, source)
        return _count(cursor, table) - before
    finally:
        with suppress(duckdb.Error):  # an aborted transaction drops it with the rollback
            cursor.unregister(_STREAM)


def _typed_select(schema: pa.Schema, declared: Mapping[str, ColumnSpec]) -> exp.Select:
    """SELECT from the stream, casting declared columns to their SQL type (JSON, UUID...)."""
    columns: list[exp.Expr] = []
    for name in schema.names:
        column: exp.Expr = exp.column(name, quoted=True)
        if name in declared:
            to = exp.DataType.build(declared[name].type, dialect="duckdb")
            column = exp.Cast(this=column, to=to).as_(name, quoted=True)
        columns.append(column)
    return exp.select(*columns).from_(exp.to_identifier(_STREAM))


def _latest_per_key(
    stream: exp.Select, unique_key: Sequence[str], latest_by: str | None
) -> exp.Select:
    """One row per key: the one with the greatest `latest_by` (any one without it)."""
    order = (
        exp.Order(
            expressions=[
                exp.Ordered(this=exp.column(latest_by, quoted=True), desc=True, nulls_first=False)
            ]
        )
        if latest_by
        else None
    )
    rank = exp.Window(
        this=exp.RowNumber(),
        partition_by=[exp.column(key, quoted=True) for key in unique_key],
        order=order,
    )
    return stream.qualify(exp.EQ(this=rank, expression=exp.Literal.number(1)))


def _add_new_columns(
    cursor: duckdb.DuckDBPyConnection, table: exp.Table, schema: pa.Schema, source: str
) -> None:
    """Columns the stream has and the table lacks are added to the table (nulls before)."""
    existing = {
        row[0]
        for row in cursor.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'input' AND table_name = ?",
            [source],
        ).fetchall()
    }
    new = [name for name in schema.names if name not in existing]
    if not new:
        return
    shape = pa.schema([schema.field(name) for name in new])
    cursor.register(_SHAPE, pa.Table.from_batches([], shape))
    try:
        types = cursor.execute(f'DESCRIBE SELECT * FROM "{_SHAPE}"').fetchall()
    finally:
        cursor.unregister(_SHAPE)
    for name, type_name, *_ in types:
        add = exp.Alter(
            this=table,
            kind="TABLE",
            actions=[
                exp.ColumnDef(
                    this=exp.to_identifier(name, quoted=True),
                    kind=exp.DataType.build(type_name, dialect="duckdb"),
                )
            ],
        )
        cursor.execute(add.sql("duckdb"))


def _merge(
    cursor: duckdb.DuckDBPyConnection,
    table: exp.Table,
    stream: exp.Select,
    unique_key: Sequence[str],
    source: str,
) -> int:
    staged = exp.to_identifier(_STAGED)
    cursor.execute(
        exp.Create(this=staged, kind="TABLE", expression=stream, properties=_temporary()).sql(
            "duckdb"
        )
    )
    try:
        match = exp.and_(
            *(
                exp.column(key, table=source, quoted=True).eq(
                    exp.column(key, table=_STAGED, quoted=True)
                )
                for key in unique_key
            )
        )
        target = exp.alias_(table, source, quoted=True)
        delete = exp.Delete(this=target, using=[exp.to_table(_STAGED)], where=exp.Where(this=match))
        cursor.execute(delete.sql("duckdb"))
        _insert(cursor, table, exp.select("*").from_(staged), source)
        return _count(cursor, exp.to_table(_STAGED))
    finally:
        cursor.execute(f"DROP TABLE IF EXISTS {_STAGED}")


def _temporary() -> exp.Properties:
    return exp.Properties(expressions=[exp.TemporaryProperty()])


def _insert(
    cursor: duckdb.DuckDBPyConnection, table: exp.Table, rows: exp.Select, source: str
) -> None:
    insert = exp.Insert(this=table, expression=rows, by_name=True)
    try:
        cursor.execute(insert.sql("duckdb"))
    except (duckdb.BinderException, duckdb.ConversionException) as error:
        first = str(error).strip().splitlines()[0]
        raise ValidationError(
            f"rows do not fit input.{source}: {first}", where=f"input.{source}"
        ) from None


def _exists(cursor: duckdb.DuckDBPyConnection, source: str) -> bool:
    found = fetch_one(
        cursor,
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'input' AND table_name = ?",
        [source],
    )
    return bool(found and found[0])


def _count(cursor: duckdb.DuckDBPyConnection, table: exp.Table) -> int:
    found = fetch_one(cursor, exp.select("count(*)").from_(table).sql("duckdb"))
    return int(found[0]) if found else 0
