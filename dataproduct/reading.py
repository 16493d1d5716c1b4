"""Reading published datasets: projection, keyset pages and whole-table streams.

Results leave DuckDB as Arrow record batches; nothing here builds Python lists of a large
result. JSON pages are small by construction (a bounded limit) and keyed by `rowid`, so
the next page starts where the last one ended even under concurrent publishing (a cursor
from an older publish is refused rather than silently mixing versions).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from dataproduct.catalog import PublishedDataset, older_versions, published_dataset
from dataproduct.errors import BadRequestError, ConflictError, NotFoundError, SqlRejectedError
from dataproduct.sqlguard import GuardContext, SqlGuard
from dataproduct.storage import Storage, translate

BATCH_ROWS = 1 << 17
_NESTED = ("[]", "STRUCT", "MAP", "UNION")
_FLOATS = frozenset({"FLOAT", "DOUBLE", "REAL", "FLOAT4", "FLOAT8"})


@dataclass(frozen=True)
class Page:
    """One JSON page: rows already encoded as JSON text, and the next cursor if any."""

    rows_json: list[str]
    next_cursor: str | None


def find_dataset(storage: Storage, name: str, version: int | None = None) -> PublishedDataset:
    """A published output dataset (its current version, or an older major one)."""
    with storage.reader() as cursor:
        dataset = published_dataset(cursor, name)
        if dataset is None:
            raise NotFoundError(f"no dataset '{name}'", where=f"datasets/{name}")
        if version is None or version == dataset.version:
            return dataset
        for older in older_versions(cursor, name):
            if older.version == version:
                return older
    readable = [dataset.version] + [v.version for v in dataset_versions(storage, name)]
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


def _projection(columns: list[dict[str, Any]], text_nested: bool) -> list[exp.Expr]:
    out: list[exp.Expr] = []
    for column in columns:
        ref: exp.Expr = exp.column(column["name"], quoted=True)
        if text_nested and any(mark in column["type"] for mark in _NESTED):
            ref = exp.alias_(exp.cast(ref, "VARCHAR"), column["name"], quoted=True)
        out.append(ref)
    return out


def open_stream(
    storage: Storage,
    dataset: PublishedDataset,
    columns: list[dict[str, Any]],
    *,
    limit: int | None = None,
    nested_as_text: bool = False,
    json_lines: bool = False,
) -> tuple[duckdb.DuckDBPyConnection, pa.RecordBatchReader]:
    """A cursor (the caller closes it) and a reader over the dataset's rows, in table order.

    `json_lines` gives one column of newline-terminated JSON objects instead.
    """
    table = exp.table_(dataset.table_name, db="output", quoted=True)
    if json_lines:
        query = exp.select(_json_object(columns).as_("line")).from_(table)
    else:
        query = exp.select(*_projection(columns, nested_as_text)).from_(table)
    if limit is not None:
        query = query.limit(limit)
    cursor = storage.cursor()
    try:
        reader = cursor.sql(query.sql("duckdb")).to_arrow_reader(batch_size=BATCH_ROWS)
    except BaseException:
        cursor.close()
        raise
    return cursor, reader


def _json_object(columns: list[dict[str, Any]]) -> exp.Expr:
    """`to_json({...})::VARCHAR || chr(10)`: one JSON line per row, typed by DuckDB."""
    newline = exp.Anonymous(this="chr", expressions=[exp.Literal.number(10)])
    return exp.DPipe(this=_json_text(columns), expression=newline)


def _json_text(columns: list[dict[str, Any]]) -> exp.Expr:
    """`to_json({...})::VARCHAR`: the row as a JSON object, typed by DuckDB."""
    struct = exp.Struct(
        expressions=[
            exp.PropertyEQ(
                this=exp.to_identifier(c["name"], quoted=True),
                expression=_json_value(c),
            )
            for c in columns
        ]
    )
    return exp.cast(exp.Anonymous(this="to_json", expressions=[struct]), "VARCHAR")


def _json_value(column: dict[str, Any]) -> exp.Expr:
    """A column as JSON may carry it: NaN and infinities (not JSON) become null."""
    ref = exp.column(column["name"], quoted=True)
    if column["type"].upper() not in _FLOATS:
        return ref
    finite = exp.Anonymous(this="isfinite", expressions=[ref.copy()])
    return exp.Case(ifs=[exp.If(this=finite, true=ref)])


def read_page(
    storage: Storage,
    dataset: PublishedDataset,
    columns: list[dict[str, Any]],
    *,
    limit: int,
    cursor_token: str | None,
) -> Page:
    """One page of rows as JSON objects, in table order, after the cursor."""
    after = decode_cursor(cursor_token, dataset) if cursor_token else -1
    table = exp.table_(dataset.table_name, db="output", quoted=True)
    query = (
        exp.select(exp.column("rowid"), _json_text(columns))
        .from_(table)
        .where(exp.column("rowid") > exp.Literal.number(after))
        .order_by(exp.column("rowid"))
        .limit(limit + 1)
    )
    with storage.reader() as cursor:
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


def query_page(storage: Storage, query: exp.Query, limit: int) -> tuple[list[str], bool]:
    """Up to `limit` rows of a guarded query as JSON text, and whether more were left."""
    with storage.reader() as cursor:
        row_json = _json_text(_query_columns(cursor, query))
        wrapped = exp.select(row_json).from_(query.subquery("q")).limit(limit + 1)
        rows = cursor.execute(wrapped.sql("duckdb")).fetchall()
    return [row[0] for row in rows[:limit]], len(rows) > limit


def open_query_stream(
    storage: Storage, query: exp.Query, *, limit: int | None, json_lines: bool
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
        reader = cursor.sql(statement.sql("duckdb")).to_arrow_reader(batch_size=BATCH_ROWS)
    except duckdb.Error as error:
        cursor.close()
        raise translate(error) from None
    return cursor, reader


def _query_columns(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> list[dict[str, Any]]:
    """Names and types of a query's columns, as subquery `q` exposes them."""
    described = exp.select("*").from_(query.subquery("q")).sql("duckdb")
    rows = cursor.execute(f"DESCRIBE {described}").fetchall()
    return [{"name": row[0], "type": row[1]} for row in rows]
