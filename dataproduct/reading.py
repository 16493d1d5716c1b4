"""Reading published datasets: projection, keyset pages and whole-table streams.

Results leave DuckDB as Arrow record batches; nothing here builds Python lists of a large
result. JSON pages are small by construction (a bounded limit) and keyed by `rowid`, so
the next page starts where the last one ended even under concurrent publishing (a cursor
from an older publish is refused rather than silently mixing versions).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from dataproduct.catalog import (
    PublishedDataset,
    older_versions,
    output_tables,
)
from dataproduct.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    QueryTimeoutError,
    SqlRejectedError,
)
from dataproduct.policy import DatasetAccess
from dataproduct.sqlguard import GuardContext, SqlGuard, position
from dataproduct.storage import Storage, translate
from dataproduct.watchdog import WATCHDOG

BATCH_ROWS = 1 << 17
_NESTED = ("[]", "STRUCT", "MAP", "UNION")
_FLOATS = frozenset({"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"})


@dataclass(frozen=True)
class Page:
    """One JSON page: rows already encoded as JSON text, and the next cursor if any."""

    rows_json: list[str]
    next_cursor: str | None


def readable_tables(storage: Storage) -> dict[str, PublishedDataset]:
    """Every readable table of the output layer and the dataset version it holds (kept in
    memory until the next commit)."""

    def load() -> dict[str, PublishedDataset]:
        with storage.reader() as cursor:
            return output_tables(cursor)

    return storage.memo("output_tables", load)


def find_dataset(storage: Storage, name: str, version: int | None = None) -> PublishedDataset:
    """A published output dataset (its current version, or an older major one)."""
    versions = [d for d in readable_tables(storage).values() if d.name == name]
    dataset = next((d for d in versions if d.current), None)
    if dataset is None:
        raise NotFoundError(f"no dataset '{name}'", where=f"datasets/{name}")
    if version is None:
        return dataset
    found = next((d for d in versions if d.version == version), None)
    if found is not None:
        return found
    readable = [d.version for d in versions]
    raise NotFoundError(
        f"{name} has no version {version}; readable versions: "
        f"{', '.join(str(v) for v in sorted(set(readable), reverse=True))}",
        where="version",
    )


def dataset_versions(storage: Storage, name: str) -> list[PublishedDataset]:
    """The older major versions of a dataset that are still readable, newest first."""
    with storage.reader() as cursor:
        return older_versions(cursor, name)


def select_columns(dataset: PublishedDataset, columns: list[str] | None) -> list[dict[str, Any]]:
    """The requested columns in the requested order (all with None); 400 for unknown ones."""
    by_name = {c["name"]: c for c in dataset.columns}
    if not columns:
        return list(dataset.columns)
    unknown = [c for c in columns if c not in by_name]
    if unknown:
        raise BadRequestError(
            f"unknown column(s) {', '.join(unknown)}; {dataset.name} has: {', '.join(by_name)}",
            where="columns",
        )
    return [by_name[c] for c in dict.fromkeys(columns)]


def column_value(column: dict[str, Any], access: DatasetAccess | None) -> exp.Expr:
    """A column as the reader may see it: itself, null (typed) or a keyed hash."""
    ref: exp.Expr = exp.column(column["name"], quoted=True)
    mask = access.masks.get(column["name"]) if access else None
    if mask == "null":
        return exp.cast(exp.null(), exp.DataType.build(column["type"], dialect="duckdb"))
    if mask == "hash":
        assert access is not None
        salted = exp.DPipe(
            this=exp.Literal.string(access.salt), expression=exp.cast(ref, "VARCHAR")
        )
        return exp.Anonymous(this="sha256", expressions=[salted])
    return ref


def _masked(column: dict[str, Any], access: DatasetAccess | None) -> bool:
    return bool(access and column["name"] in access.masks)


def _projection(
    columns: list[dict[str, Any]], text_nested: bool, access: DatasetAccess | None
) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    for column in columns:
        value = column_value(column, access)
        if text_nested and any(mark in column["type"] for mark in _NESTED):
            value = exp.cast(value, "VARCHAR")
        out.append(exp.alias_(value, column["name"], quoted=True))
    return out


def _visible_rows(
    query: exp.Select, access: DatasetAccess | None, condition: exp.Expr | None = None
) -> exp.Select:
    """The query restricted to the rows the reader may see (and to `condition`)."""
    if access is not None and access.row_filter is not None:
        query = query.where(access.row_filter.copy())
    if condition is not None:
        query = query.where(condition.copy())
    return query


def rows_after(
    storage: Storage,
    dataset: PublishedDataset,
    access: DatasetAccess | None,
    column: str,
    value: str,
) -> exp.Expr:
    """`"column" > CAST('value' AS <its type>)`: only the rows past a consumer's watermark.

    The value is a typed literal, never SQL text. 400 for an unknown or nested column or a
    value that does not convert to the column's type; 403 for a column masked for the
    reader (filtering on it would reveal what the mask hides).
    """
    by_name = {c["name"]: c for c in dataset.columns}
    found = by_name.get(column)
    if found is None:
        raise BadRequestError(
            f"unknown column '{column}' in after_column; {dataset.name} has: {', '.join(by_name)}",
            where="after_column",
        )
    if access is not None and column in access.masks:
        raise PermissionDeniedError(
            f"the column '{column}' of {dataset.name} is masked for you; "
            "it cannot be used in after_column",
            where="after_column",
        )
    if any(mark in found["type"] for mark in _NESTED):
        raise BadRequestError(
            f"the column '{column}' is of the nested type {found['type']}; "
            "after_column needs a scalar column",
            where="after_column",
        )
    typed = exp.cast(exp.Literal.string(value), exp.DataType.build(found["type"], dialect="duckdb"))
    with storage.reader() as cursor:
        try:
            cursor.execute(exp.select(typed).sql("duckdb")).fetchall()
        except duckdb.Error:
            raise BadRequestError(
                f"after: '{value}' is not a value of the column '{column}' ({found['type']})",
                where="after",
            ) from None
    return exp.GT(this=exp.column(column, quoted=True), expression=typed)


@contextmanager
def deadline(cursor: duckdb.DuckDBPyConnection, seconds: float | None) -> Iterator[None]:
    """Interrupt the cursor's statement after `seconds`; QueryTimeoutError (504) if it was."""
    if seconds is None:
        yield
        return
    ticket = WATCHDOG.watch(cursor, seconds)
    try:
        yield
    except duckdb.InterruptException:
        if not ticket.fired:
            raise
        raise QueryTimeoutError(
            f"the query ran longer than {seconds:g} s and was stopped", where="sql"
        ) from None
    finally:
        ticket.cancel()


def _first_batch_read(
    cursor: duckdb.DuckDBPyConnection, sql: str, timeout_s: float | None
) -> pa.RecordBatchReader:
    """A reader whose first batch was computed already: errors and timeouts surface here,
    before a response starts, instead of cutting a stream short."""
    with deadline(cursor, timeout_s):
        reader = cursor.sql(sql).to_arrow_reader(batch_size=BATCH_ROWS)
        try:
            first = [reader.read_next_batch()]
        except StopIteration:
            first = []
    return pa.RecordBatchReader.from_batches(reader.schema, itertools.chain(first, reader))


def open_stream(
    storage: Storage,
    dataset: PublishedDataset,
    columns: list[dict[str, Any]],
    *,
    limit: int | None = None,
    nested_as_text: bool = False,
    json_lines: bool = False,
    access: DatasetAccess | None = None,
    timeout_s: float | None = None,
    condition: exp.Expr | None = None,
) -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader]:
    """A cursor (the caller closes it) and a reader over the rows the reader may see, in
    table order, with masked columns masked.

    `json_lines` gives one column of newline-terminated JSON objects instead; `condition`
    (from `rows_after`) keeps only the rows that also satisfy it.
    """
    table = exp.table_(dataset.table_name, db="output", quoted=True)
    if json_lines:
        query = exp.select(_json_object(columns, access).as_("line")).from_(table)
    else:
        query = exp.select(*_projection(columns, nested_as_text, access)).from_(table)
    query = _visible_rows(query, access, condition)
    if limit is not None:
        query = query.limit(limit)
    cursor = storage.cursor()
    try:
        reader = _first_batch_read(cursor, query.sql("duckdb"), timeout_s)
    except duckdb.Error as error:
        cursor.close()
        raise translate(error) from None
    except BaseException:
        cursor.close()
        raise
    return cursor, reader


def _json_object(columns: list[dict[str, Any]], access: DatasetAccess | None = None) -> exp.Expr:
    """`to_json({...})::VARCHAR || chr(10)`: one JSON line per row, typed by DuckDB."""
    newline = exp.Anonymous(this="chr", expressions=[exp.Literal.number(10)])
    return exp.DPipe(this=_json_text(columns, access), expression=newline)


def _json_text(columns: list[dict[str, Any]], access: DatasetAccess | None = None) -> exp.Expr:
    """`to_json({...})::VARCHAR`: the row as a JSON object, typed by DuckDB."""
    struct = exp.Struct(
        expressions=[
            exp.PropertyEQ(
                this=exp.to_identifier(c["name"], quoted=True),
                expression=_json_value(c, access),
            )
            for c in columns
        ]
    )
    return exp.cast(exp.Anonymous(this="to_json", expressions=[struct]), "VARCHAR")


def _json_value(column: dict[str, Any], access: DatasetAccess | None) -> exp.Expr:
    """A column as JSON may carry it: NaN and infinities (not JSON) become null."""
    value = column_value(column, access)
    if column["type"].upper() not in _FLOATS or _masked(column, access):
        return value
    finite = exp.Anonymous(this="isfinite", expressions=[value.copy()])
    return exp.Case(ifs=[exp.If(this=finite, true=value)])


def read_page(
    storage: Storage,
    dataset: PublishedDataset,
    columns: list[dict[str, Any]],
    *,
    limit: int,
    cursor_token: str | None,
    access: DatasetAccess | None = None,
    timeout_s: float | None = None,
    condition: exp.Expr | None = None,
) -> Page:
    """One page of the rows the reader may see (and that satisfy `condition`), as JSON
    objects, in table order, after the cursor."""
    after = decode_cursor(cursor_token, dataset) if cursor_token else -1
    table = exp.table_(dataset.table_name, db="output", quoted=True)
    query = (
        exp.select(exp.column("rowid"), _json_text(columns, access))
        .from_(table)
        .where(exp.column("rowid") > exp.Literal.number(after))
        .order_by(exp.column("rowid"))
        .limit(limit + 1)
    )
    query = _visible_rows(query, access, condition)
    with storage.reader() as cursor, deadline(cursor, timeout_s):
        rows = cursor.execute(query.sql("duckdb")).fetchall()
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1][0], dataset) if has_more and rows else None
    return Page([row[1] for row in rows], next_cursor)


def encode_cursor(rowid: int, dataset: PublishedDataset) -> str:
    """An opaque cursor: the last row read and the publish it belongs to."""
    raw = json.dumps({"after": rowid, "run": dataset.run_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str, dataset: PublishedDataset) -> int:
    """The row a cursor points after; 400 if malformed, 409 if the data was republished."""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, run = int(data["after"]), str(data["run"])
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
        raise BadRequestError("malformed cursor", where="cursor") from None
    if run != dataset.run_id:
        raise ConflictError(
            f"the cursor belongs to an older publish of {dataset.name}; start again without it",
            where="cursor",
        )
    return after


def guarded_query(sql: str) -> exp.Query:
    """Parse and guard a consumer's query: one SELECT over `output.*` only."""
    result = SqlGuard().check(sql, GuardContext(readable_layers=("output",)))
    if not result.ok or not isinstance(result.tree, exp.Query):
        violations = [v.to_dict() for v in result.violations]
        first = result.violations[0] if result.violations else None
        raise SqlRejectedError(
            f"query refused: {first}" if first else "query refused",
            where=f"sql, line {first.line}, column {first.column}"
            if first and first.line
            else "sql",
            violations=violations,
        )
    return result.tree


def restrict_query(
    storage: Storage, query: exp.Query, access_for: Callable[[str], DatasetAccess]
) -> exp.Query:
    """A guarded query over only what the reader may see.

    Each output table it names becomes the reader's view of that dataset (masked columns,
    allowed rows). A table that is not a published dataset, a dataset without a read grant
    (`access_for` raises), or a masked column named in the query is refused.
    """
    query = query.copy()
    tables = readable_tables(storage)
    masked: dict[str, str] = {}
    views: list[tuple[exp.Table, PublishedDataset, DatasetAccess]] = []
    for table in list(query.find_all(exp.Table)):
        if table.db.lower() != "output":
            continue
        dataset = tables.get(table.name)
        if dataset is None:
            raise SqlRejectedError(
                f"there is no dataset '{table.name}' in the output layer", where=_at(table)
            )
        access = access_for(dataset.name)
        masked |= {column: dataset.name for column in access.masks}
        views.append((table, dataset, access))
    for column in query.find_all(exp.Column):
        if column.name in masked:
            raise PermissionDeniedError(
                f"the column '{column.name}' of {masked[column.name]} is masked for you; "
                "it cannot be named in a query",
                where=_at(column),
            )
    for table, dataset, access in views:
        if access.restricted:
            table.replace(_view(table, dataset, access))
    return query


def _view(table: exp.Table, dataset: PublishedDataset, access: DatasetAccess) -> exp.Subquery:
    """`(SELECT <masked columns> FROM output.t WHERE <filter>) AS <alias>`."""
    source = exp.table_(dataset.table_name, db="output", quoted=True)
    select = exp.select(*_projection(dataset.columns, False, access)).from_(source)
    alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))
    return exp.Subquery(this=_visible_rows(select, access), alias=alias.copy())


def _at(node: exp.Expr) -> str:
    line, column = position(node)
    return f"sql, line {line}, column {column}" if line else "sql"


def query_page(
    storage: Storage, query: exp.Query, limit: int, timeout_s: float | None = None
) -> tuple[list[str], bool]:
    """Up to `limit` rows of a guarded query as JSON text, and whether more were left."""
    with storage.reader() as cursor, deadline(cursor, timeout_s):
        row_json = _json_text(_query_columns(cursor, query))
        wrapped = exp.select(row_json).from_(query.subquery("q")).limit(limit + 1)
        rows = cursor.execute(wrapped.sql("duckdb")).fetchall()
    return [row[0] for row in rows[:limit]], len(rows) > limit


def open_query_stream(
    storage: Storage,
    query: exp.Query,
    *,
    limit: int | None,
    json_lines: bool,
    timeout_s: float | None = None,
) -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader]:
    """A cursor and a reader over a guarded query's rows."""
    cursor = storage.cursor()
    try:
        if json_lines:
            outer = exp.select(_json_object(_query_columns(cursor, query)))
        else:
            outer = exp.select("*")
        statement = outer.from_(query.subquery("q"))
        if limit is not None:
            statement = statement.limit(limit)
        reader = _first_batch_read(cursor, statement.sql("duckdb"), timeout_s)
    except duckdb.Error as error:
        cursor.close()
        raise translate(error) from None
    except BaseException:
        cursor.close()
        raise
    return cursor, reader


def _query_columns(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> list[dict[str, Any]]:
    """Names and types of a query's columns, as subquery `q` exposes them."""
    described = exp.select("*").from_(query.subquery("q")).sql("duckdb")
    rows = cursor.execute(f"DESCRIBE {described}").fetchall()
    return [{"name": row[0], "type": row[1]} for row in rows]
