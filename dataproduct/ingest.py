"""Loading data into the input layer, atomically, and the record of every load.

Files are read by DuckDB's own readers in a separate in-memory engine that may touch the
file system (the product database may not), and streamed as Arrow record batches into the
product database inside one transaction: all rows or none.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
from sqlglot import exp

from dataproduct.errors import DataproductError, SourceError, ValidationError
from dataproduct.storage import Storage, fetch_one

FileFormat = Literal["csv", "json", "ndjson", "parquet"]
FILE_FORMATS: tuple[FileFormat, ...] = ("csv", "json", "ndjson", "parquet")
ROW_GROUP_ROWS = 122_880  # DuckDB's default row group size
# Whole row groups per batch: a batch that is not a multiple of the row group size leaves a
# partial row group behind each batch, which the next checkpoint rewrites (10M rows of CSV:
# +2-4 s at close and a database file nearly twice as large).
BATCH_ROWS = 2 * ROW_GROUP_ROWS
_STREAM_NAME = "__dataproduct_ingest_stream"

_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def format_from_name(name: str) -> FileFormat | None:
    """The file format implied by a file name's extension, if any."""
    suffix = Path(name.removesuffix(".gz")).suffix.lower()
    return _EXTENSIONS.get(suffix)


@contextmanager
def file_reader(
    paths: str | Sequence[str], file_format: FileFormat, options: dict[str, Any] | None = None
) -> Iterator[pa.RecordBatchReader]:
    """Stream files (a path, a glob or a list) through DuckDB's native readers as batches."""
    engine = duckdb.connect(":memory:")
    try:
        engine.execute("SET enable_progress_bar = false")
        call = _reader_call(paths, file_format, options or {})
        relation = engine.sql(f"SELECT * FROM {call.sql('duckdb')}")
        yield relation.to_arrow_reader(batch_size=BATCH_ROWS)
    except duckdb.IOException as error:
        raise SourceError(_first_line(error), where=_describe(paths)) from None
    except duckdb.Error as error:
        raise SourceError(
            f"cannot read {file_format}: {_first_line(error)}", where=_describe(paths)
        ) from None
    finally:
        engine.close()


def _reader_call(
    paths: str | Sequence[str], file_format: FileFormat, options: dict[str, Any]
) -> exp.Expr:
    target: exp.Expr
    if isinstance(paths, str):
        target = exp.Literal.string(paths)
    else:
        target = exp.Array(expressions=[exp.Literal.string(p) for p in paths])
    function = {
        "csv": "read_csv",
        "json": "read_json",
        "ndjson": "read_json",
        "parquet": "read_parquet",
    }[file_format]
    settings = dict(options)
    if file_format == "ndjson":
        settings["format"] = "newline_delimited"
    elif file_format == "json":
        settings.setdefault("format", "auto")
    args: list[exp.Expr] = [target]
    for key, value in settings.items():
        args.append(exp.EQ(this=exp.column(key), expression=exp.convert(value)))
    return exp.Anonymous(this=function, expressions=args)


def _describe(paths: str | Sequence[str]) -> str:
    return paths if isinstance(paths, str) else ", ".join(paths)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class Ingestion:
    """The record of one load into the input layer."""

    id: str
    source: str
    mode: str
    status: str
    principal: str
    rows: int
    bytes: int
    started_at: datetime
    finished_at: datetime
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["duration_s"] = round((self.finished_at - self.started_at).total_seconds(), 3)
        return data


def load_stream(
    storage: Storage,
    source: str,
    open_stream: Callable[[], Any],
    *,
    mode: str,
    principal: str,
    size_bytes: int = 0,
    redact: dict[str, str] | None = None,
) -> Ingestion:
    """Load a stream of batches into `input.<source>` in one transaction and record it.

    `open_stream` is a context manager factory yielding a RecordBatchReader. On any error
    the input table is left exactly as it was, the failure is recorded, and the error is
    raised again, with each key of `redact` in its text replaced by its value.
    """
    started = datetime.now(UTC)
    ingestion_id = uuid.uuid4().hex[:12]
    clock = time.perf_counter()
    try:
        with open_stream() as reader, storage.transaction() as cursor:
            rows = _write_input(cursor, source, reader, mode)
    except DataproductError as error:
        _redact(error, redact or {})
        record = Ingestion(
            ingestion_id, source, mode, "failed", principal, 0, size_bytes,
            started, _after(started, clock), error.to_dict()["error"],
        )  # fmt: skip
        _record(storage, record)
        raise
    record = Ingestion(
        ingestion_id, source, mode, "succeeded", principal, rows, size_bytes,
        started, _after(started, clock),
    )  # fmt: skip
    _record(storage, record)
    return record


def _redact(error: DataproductError, replacements: dict[str, str]) -> None:
    """Hide private details (a server-side upload path) from an error before it is shown."""
    for secret, shown in replacements.items():
        error.message = error.message.replace(secret, shown)
        if error.where:
            error.where = error.where.replace(secret, shown)
        error.args = (error.message,)


def _after(started: datetime, clock: float) -> datetime:
    return datetime.fromtimestamp(started.timestamp() + (time.perf_counter() - clock), tz=UTC)


def _write_input(
    cursor: duckdb.DuckDBPyConnection, source: str, reader: pa.RecordBatchReader, mode: str
) -> int:
    table = exp.table_(source, db="input", quoted=True)
    stream = exp.select("*").from_(exp.to_identifier(_STREAM_NAME))
    exists = fetch_one(
        cursor,
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'input' AND table_name = ?",
        [source],
    )
    cursor.register(_STREAM_NAME, reader)
    try:
        if mode == "append" and exists and exists[0]:
            before = _count(cursor, table)
            insert = exp.Insert(this=table, expression=stream, by_name=True)
            try:
                cursor.execute(insert.sql("duckdb"))
            except (duckdb.BinderException, duckdb.ConversionException) as error:
                raise ValidationError(
                    f"rows do not fit input.{source}: {_first_line(error)}",
                    where=f"input.{source}",
                ) from None
            return _count(cursor, table) - before
        create = exp.Create(this=table, kind="TABLE", replace=True, expression=stream)
        cursor.execute(create.sql("duckdb"))
        return _count(cursor, table)
    finally:
        with suppress(duckdb.Error):  # an aborted transaction drops it with the rollback
            cursor.unregister(_STREAM_NAME)


def _count(cursor: duckdb.DuckDBPyConnection, table: exp.Table) -> int:
    found = fetch_one(cursor, exp.select("count(*)").from_(table).sql("duckdb"))
    return int(found[0]) if found else 0


def _record(storage: Storage, record: Ingestion) -> None:
    with storage.transaction() as cursor:
        cursor.execute(
            "INSERT INTO meta.ingestions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                record.id, record.source, record.mode, record.status, record.principal,
                record.rows, record.bytes, record.started_at, record.finished_at,
                json.dumps(record.error) if record.error else None,
            ],
        )  # fmt: skip


def ingestion_history(
    storage: Storage, source: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The latest ingestions, newest first."""
    query = "SELECT * FROM meta.ingestions"
    params: list[Any] = []
    if source:
        query += " WHERE source = ?"
        params.append(source)
    query += " ORDER BY started_at DESC LIMIT ?"
    params.append(limit)
    with storage.reader() as cursor:
        rows = cursor.execute(query, params).fetchall()
    return [
        Ingestion(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
            json.loads(r[9]) if r[9] else None,
        ).to_dict()
        for r in rows
    ]  # fmt: skip
