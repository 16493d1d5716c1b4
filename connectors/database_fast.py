"""The three read paths of the database connector and the Arrow types they agree on.

Types: NUMERIC(p,s)/DECIMAL(p,s) with p <= 38 -> DECIMAL(p,s); unconstrained NUMERIC (or
p > 38) -> DOUBLE, as DuckDB's own postgres scanner does; PostgreSQL json/jsonb -> JSON
text; uuid -> UUID; arrays -> lists; timestamptz and MySQL TIMESTAMP -> TIMESTAMP WITH TIME
ZONE (UTC); timestamp and DATETIME -> TIMESTAMP; MySQL TINYINT(1)/BOOLEAN -> BOOLEAN;
MariaDB JSON and UUID (text on the wire) -> VARCHAR; other unknown types -> VARCHAR.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from connectors.database import ReadTarget, open_connection
from dataproduct.errors import SourceError

if TYPE_CHECKING:
    import sqlalchemy as sa

MAX_DECIMAL_PRECISION = 38
RUST_DECIMAL_DIGITS = 28
WATERMARK_SETTING = "dataproduct.watermark"
UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")
_LIST_ITEMS = {1000: pa.bool_(), 1005: pa.int16(), 1007: pa.int32(), 1016: pa.int64()}
_LIST_ITEMS |= {1021: pa.float32(), 1022: pa.float64(), 1009: pa.string(), 1015: pa.string()}
_PG_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(), 17: pa.binary(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(),
    26: pa.uint32(), 700: pa.float32(), 701: pa.float64(), 1082: pa.date32(),
    1083: pa.time64("us"), 1114: pa.timestamp("us"), 1184: UTC_TIMESTAMP,
    114: pa.json_(), 3802: pa.json_(), 2950: pa.uuid(),
}  # fmt: skip
_PG_TYPES |= {oid: pa.list_(item) for oid, item in _LIST_ITEMS.items()}
# pymysql FIELD_TYPE codes
_MYSQL_INTS = {1: pa.int8(), 2: pa.int16(), 9: pa.int32(), 3: pa.int32(), 8: pa.int64()}
_MYSQL_UINTS = {1: pa.uint8(), 2: pa.uint16(), 9: pa.uint32(), 3: pa.uint32(), 8: pa.uint64()}
_MYSQL_TYPES: dict[int, pa.DataType] = {
    4: pa.float32(), 5: pa.float64(), 7: UTC_TIMESTAMP, 10: pa.date32(), 11: pa.time64("us"),
    12: pa.timestamp("us"), 13: pa.int16(), 14: pa.date32(), 16: pa.int64(),
}  # fmt: skip
_MYSQL_BYTES = {15, 249, 250, 251, 252, 253, 254, 255}
_BINARY_CHARSET = 63
_UNSIGNED_FLAG = 32


def _decimal(precision: int | None, scale: int | None) -> pa.DataType:
    if precision and 0 < precision <= MAX_DECIMAL_PRECISION:
        return pa.decimal128(precision, max(scale or 0, 0))
    return pa.float64()


def postgres_type(type_code: int, precision: int | None, scale: int | None) -> pa.DataType:
    """The Arrow type of a PostgreSQL result column (psycopg description)."""
    if type_code == 1700:
        return _decimal(precision, scale)
    return _PG_TYPES.get(type_code, pa.string())


def mysql_type(column: Any, field: Any) -> pa.DataType:
    """The Arrow type of a MySQL/MariaDB result column (pymysql description and field)."""
    type_code, length, scale = column[1], column[3], column[5]
    unsigned = bool(getattr(field, "flags", 0) & _UNSIGNED_FLAG)
    if type_code in (0, 246):  # the field length counts the sign and the decimal point
        digits = length - (1 if scale else 0) - (0 if unsigned else 1)
        return _decimal(digits, scale)
    if type_code == 1 and length == 1 and not unsigned:
        return pa.bool_()
    if type_code in _MYSQL_INTS:
        return (_MYSQL_UINTS if unsigned else _MYSQL_INTS)[type_code]
    if type_code in _MYSQL_BYTES and getattr(field, "charsetnr", 0) == _BINARY_CHARSET:
        return pa.binary()
    return _MYSQL_TYPES.get(type_code, pa.string())


def described_schema(backend: str, cursor: Any) -> pa.Schema | None:
    """The Arrow schema of a DBAPI cursor's result, for the drivers we know; else None."""
    description = cursor.description or []
    if backend == "postgresql":
        fields = [pa.field(c[0], postgres_type(c[1], c[4], c[5])) for c in description]
    elif backend in ("mysql", "mariadb"):
        raw = getattr(getattr(cursor, "_result", None), "fields", None) or [None] * len(description)
        fields = [pa.field(c[0], mysql_type(c, f)) for c, f in zip(description, raw, strict=True)]
    else:
        return None
    return pa.schema(fields)


# values -> arrays (the generic path) ------------------------------------------------------


def _timedelta_time(value: Any) -> Any:
    if isinstance(value, timedelta):
        return (datetime.min + value).time()
    return value


def _converter(kind: pa.DataType, backend: str) -> Callable[[Any], Any] | None:
    if kind == pa.json_():
        return lambda value: value if isinstance(value, str) else json.dumps(value)
    if kind == pa.uuid():
        return lambda value: value.bytes
    if pa.types.is_floating(kind):
        return float
    if pa.types.is_boolean(kind):
        return bool
    if pa.types.is_time(kind):
        return _timedelta_time
    if pa.types.is_string(kind):
        return lambda value: value if isinstance(value, str) else str(value)
    return None


def column_array(values: Iterable[Any], kind: pa.DataType, backend: str) -> pa.Array:
    """One column of a batch of rows as an Arrow array of the given type."""
    convert = _converter(kind, backend)
    if convert is not None:
        values = [None if v is None else convert(v) for v in values]
    if isinstance(kind, pa.ExtensionType):
        storage = pa.array(values, type=kind.storage_type)
        return pa.ExtensionArray.from_storage(kind, storage)
    return pa.array(values, type=kind)


def inferred_schema(names: list[str], rows: Sequence[Any]) -> pa.Schema:
    """For drivers without usable types (SQLite): the types of the first batch's values."""
    fields = []
    for index, name in enumerate(names):
        kind = pa.array([row[index] for row in rows]).type if rows else pa.null()
        fields.append(pa.field(name, pa.string() if pa.types.is_null(kind) else kind))
    return pa.schema(fields)


def rows_batch(rows: Sequence[Any], schema: pa.Schema, backend: str) -> pa.RecordBatch:
    """A batch of DBAPI rows as a record batch of `schema`."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = [column_array(c, f.type, backend) for c, f in zip(columns, schema, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# the generic path ----------------------------------------------------------------------


@contextmanager
def sqlalchemy_reader(
    target: ReadTarget, statement: sa.Select[Any], batch_rows: int
) -> Iterator[pa.RecordBatchReader]:
    """SQLAlchemy Core with a server-side cursor, one batch of rows at a time."""
    with open_connection(target) as connection:
        streaming = connection.execution_options(stream_results=True, yield_per=batch_rows)
        try:
            result = streaming.execute(statement)
            schema = described_schema(target.backend, result.cursor)  # before it may close
            rows = result.fetchmany(batch_rows)
        except Exception as error:  # noqa: BLE001 - drivers raise their own classes
            raise target.error(f"cannot read {target.what}", error) from None
        if schema is None:
            schema = inferred_schema(list(result.keys()), rows)

        def batches() -> Iterator[pa.RecordBatch]:
            chunk = rows
            while chunk:
                yield rows_batch(chunk, schema, target.backend)
                chunk = result.fetchmany(batch_rows)

        try:
            yield pa.RecordBatchReader.from_batches(schema, target.watched(batches()))
        finally:
            result.close()


# the fast paths --------------------------------------------------------------------------


def rebatched(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `rows` rows (the last one shorter), whatever the driver sends."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows).combine_chunks().to_batches()[0]
            rest = table.slice(rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _pg_numeric(field: pa.Field) -> pa.DataType | None:
    metadata = field.metadata or {}
    if metadata.get(b"POSTGRESQL:type") != b"numeric":
        return None
    typmod = int(metadata.get(b"POSTGRESQL:typmod", b"-1"))
    if typmod < 4:
        return pa.float64()
    return _decimal((typmod - 4) >> 16, (typmod - 4) & 0xFFFF)


def adbc_schema(schema: pa.Schema) -> pa.Schema:
    """ADBC's schema with numerics made decimals and other opaque types made text."""
    fields = []
    for field in schema:
        kind = _pg_numeric(field)
        if kind is None and isinstance(field.type, pa.ExtensionType):
            opaque = field.type.extension_name == "arrow.opaque"
            kind = field.type.storage_type if opaque else field.type
        fields.append(pa.field(field.name, kind or field.type))
    return pa.schema(fields)


def _cast(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for column, field in zip(batch.columns, schema, strict=True):
        if isinstance(column.type, pa.ExtensionType) and column.type != field.type:
            column = column.storage
        arrays.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _pg_cast_type(watermark: Any) -> str:
    if isinstance(watermark, datetime):
        return "timestamptz" if watermark.tzinfo else "timestamp"
    names = {bool: "boolean", int: "bigint", float: "double precision", Decimal: "numeric"}
    names |= {str: "text"}
    return next((n for t, n in names.items() if isinstance(watermark, t)), "date")


def _pg_text(watermark: Any) -> str:
    if isinstance(watermark, str):
        return watermark
    return watermark.isoformat() if hasattr(watermark, "isoformat") else str(watermark)


def _fast_sql(statement: sa.Select[Any], replacement: Any, dialect: Any) -> str:
    """The statement as text for a driver without bound parameters: the watermark
    parameter is replaced by a server-side expression (never by the value's text)."""
    from sqlalchemy.sql import visitors

    def swap(element: Any) -> Any:
        return replacement if getattr(element, "key", None) == "watermark" else None

    rewritten: Any = visitors.replacement_traverse(statement, {}, swap)  # type: ignore[call-overload]
    return str(rewritten.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


@contextmanager
def adbc_reader(
    target: ReadTarget, statement: sa.Select[Any], watermark: Any, batch_rows: int
) -> Iterator[pa.RecordBatchReader]:
    """PostgreSQL through ADBC: binary COPY streamed as Arrow batches.

    ADBC materialises a whole result when parameters are bound, so the watermark is bound
    in a statement of its own (`set_config`) and the query reads it back server-side.
    """
    import adbc_driver_postgresql.dbapi as adbc
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    server_side: Any = None
    if watermark is not None:  # our constants only: the value itself is bound below
        server_side = sa.literal_column(
            f"CAST(current_setting('{WATERMARK_SETTING}') AS {_pg_cast_type(watermark)})"
        )
    dialect = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
    sql = _fast_sql(statement, server_side, dialect)
    uri = target.url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = adbc.connect(uri)
    except Exception as error:  # noqa: BLE001 - drivers raise their own classes
        shown = target.url.render_as_string(hide_password=True)
        raise target.error(f"cannot connect to {shown}", error, connecting=True) from None
    try:
        cursor = connection.cursor()
        try:
            if watermark is not None:
                cursor.execute(
                    f"SELECT set_config('{WATERMARK_SETTING}', $1, false)",
                    parameters=(_pg_text(watermark),),
                )
                cursor.fetchall()
            cursor.execute(sql)
            stream = cursor.fetch_record_batch()
        except Exception as error:  # noqa: BLE001 - drivers raise their own classes
            raise target.error(f"cannot read {target.what}", error) from None
        schema = adbc_schema(stream.schema)
        batches = (_cast(b, schema) for b in stream)
        yield pa.RecordBatchReader.from_batches(
            schema, target.watched(rebatched(batches, batch_rows))
        )
    finally:
        connection.close()


def _mysql_literal(watermark: Any) -> Any:
    """The watermark as a MySQL literal built from its type, never from quoted user text:
    strings travel hex-encoded, numbers and dates are rendered by Python's own formatters."""
    import sqlalchemy as sa

    if isinstance(watermark, str):
        return sa.literal_column(f"CONVERT(X'{watermark.encode().hex()}' USING utf8mb4)")
    if isinstance(watermark, datetime):
        moment = watermark.astimezone(UTC).replace(tzinfo=None) if watermark.tzinfo else watermark
        return sa.literal_column(f"TIMESTAMP'{moment.isoformat(sep=' ')}'")
    if isinstance(watermark, time):
        raise SourceError("a TIME cursor is not supported")
    if isinstance(watermark, bool | int | Decimal | float):
        return sa.literal_column(
            repr(int(watermark)) if isinstance(watermark, bool) else str(watermark)
        )
    return sa.literal_column(f"DATE'{watermark.isoformat()}'")


def _mysql_schema(target: ReadTarget, statement: sa.Select[Any]) -> pa.Schema:
    """The result's Arrow types from a `LIMIT 0` run through pymysql (raw cursor: an empty
    SQLAlchemy result closes its cursor before the description can be read)."""
    with open_connection(target) as connection:
        compiled = statement.limit(0).compile(dialect=connection.dialect)
        cursor = connection.connection.cursor()
        try:
            cursor.execute(str(compiled), compiled.params)
            schema = described_schema(target.backend, cursor)
        except Exception as error:  # noqa: BLE001 - drivers raise their own classes
            raise target.error(f"cannot read {target.what}", error) from None
        finally:
            cursor.close()
    assert schema is not None
    return schema


def _rust_decimal_safe(statement: sa.Select[Any], schema: pa.Schema) -> sa.Select[Any]:
    """connectorx decodes DECIMAL through rust_decimal (28 digits) and panics past that:
    such columns are sent as text and cast back to their decimal type in Arrow."""
    import sqlalchemy as sa
    from sqlalchemy.sql import quoted_name

    def wide(kind: pa.DataType) -> bool:
        return isinstance(kind, pa.Decimal128Type) and kind.precision > RUST_DECIMAL_DIGITS

    if not any(wide(f.type) for f in schema):
        return statement
    columns = []
    for field in schema:
        column: Any = sa.column(quoted_name(field.name, True))
        columns.append(sa.cast(column, sa.CHAR).label(field.name) if wide(field.type) else column)
    return statement.with_only_columns(*columns)


@contextmanager
def connectorx_reader(
    target: ReadTarget, statement: sa.Select[Any], watermark: Any, batch_rows: int
) -> Iterator[pa.RecordBatchReader]:
    """MySQL/MariaDB through connectorx's Arrow stream, typed from pymysql's description.

    A `LIMIT 0` probe through pymysql first gives fast, clear errors (connectorx retries a
    failed connection for 30 s) and the declared types (connectorx reads every DECIMAL as
    DECIMAL(38,10) and BOOLEAN as TINYINT).
    """
    import connectorx
    from sqlalchemy.dialects import mysql

    schema = _mysql_schema(target, statement)
    statement = _rust_decimal_safe(statement, schema)
    replacement = None if watermark is None else _mysql_literal(watermark)
    sql = _fast_sql(statement, replacement, mysql.dialect(paramstyle="named"))
    url = target.url.set(drivername="mysql").render_as_string(hide_password=False)
    try:
        stream = connectorx.read_sql(
            url, sql, return_type="arrow_stream", batch_size=batch_rows,
            pre_execution_query=["SET time_zone = '+00:00'"],
        )  # fmt: skip
    except Exception as error:  # noqa: BLE001 - drivers raise their own classes
        raise target.error(f"cannot read {target.what}", error) from None
    batches = (_cast(b, schema) for b in stream)
    yield pa.RecordBatchReader.from_batches(schema, target.watched(batches))
