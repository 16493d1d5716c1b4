"""Loading data into the input layer, atomically, and the record of every load.

Files are read by DuckDB's own readers in a separate in-memory engine that may touch the
file system (the product database may not), and streamed as Arrow record batches into the
product database inside one transaction: all rows or none.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
from sqlglot import exp

from dataproduct import watermark
from dataproduct.errors import DataproductError, SourceError, first_line
from dataproduct.input_schema import InputRules, conform
from dataproduct.input_write import write_input
from dataproduct.storage import Storage, fetch_one
from dataproduct.watermark import LoadMeter

log = logging.getLogger("dataproduct")

FileFormat = Literal["csv", "json", "ndjson", "parquet"]
FILE_FORMATS: tuple[FileFormat, ...] = ("csv", "json", "ndjson", "parquet")
ROW_GROUP_ROWS = 122_880  # DuckDB's default row group size
# Whole row groups per batch: a batch that is not a multiple of the row group size leaves a
# partial row group behind each batch, which the next checkpoint rewrites (10M rows of CSV:
# +2-4 s at close and a database file nearly twice as large).
BATCH_ROWS = 2 * ROW_GROUP_ROWS

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
        raise SourceError(first_line(error), where=_describe(paths)) from None
    except duckdb.Error as error:
        raise SourceError(
            f"cannot read {file_format}: {first_line(error)}", where=_describe(paths)
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
    watermark: str | None = None
    idempotency_key: str | None = None
    attempts: int = 1
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        data["duration_s"] = round((self.finished_at - self.started_at).total_seconds(), 3)
        data["watermark"] = watermark.shown(self.watermark)
        if not self.replayed:
            del data["replayed"]
        return data


@dataclass(frozen=True)
class LoadOptions:
    """How one load is done.

    `cursor` names the column whose maximum becomes the load's watermark; `unique_key`
    makes an append a merge; `retries` transient faults are retried after `backoff_s`,
    doubled each time; `before_commit` runs inside the load's transaction, last.
    """

    mode: str = "replace"
    rules: InputRules | None = None
    cursor: str | None = None
    unique_key: tuple[str, ...] = ()
    retries: int = 0
    backoff_s: float = 0.5
    idempotency_key: str | None = None
    before_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None
    watermark: Any = None  # where an incremental load started: kept if no row is newer


MAX_BACKOFF_S = 30.0


class _Replayed(Exception):
    """The idempotency key was used by a load that committed meanwhile."""


def load_stream(
    storage: Storage,
    source: str,
    open_stream: Callable[[], Any],
    options: LoadOptions | None = None,
    *,
    principal: str,
    mode: str | None = None,
    size_bytes: int = 0,
    redact: Callable[[DataproductError], None] | None = None,
    meter: LoadMeter | None = None,
) -> Ingestion:
    """Load a stream of batches into `input.<source>` in one transaction and record it.

    `open_stream` is a context manager factory yielding a RecordBatchReader; it is called
    again for each retry of a transient fault. On any error the input table is left
    exactly as it was, the failure is recorded (after `redact` hides private details) and
    the error is raised again. A load whose idempotency key already committed is not done
    again: its first record comes back, marked `replayed`.
    """
    options = options or LoadOptions()
    if mode is not None:
        options = replace(options, mode=mode)
    if options.idempotency_key:
        earlier = find_ingestion(storage, source, options.idempotency_key)
        if earlier is not None:
            return replace(earlier, replayed=True)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    ingestion_id = uuid.uuid4().hex[:12]
    attempt = 0
    while True:
        attempt += 1
        meter_now = meter or LoadMeter(options.cursor)
        meter_now.reset()
        try:
            return _load_once(
                storage, source, open_stream, options, meter_now,
                Ingestion(
                    ingestion_id, source, options.mode, "succeeded", principal, 0,
                    size_bytes, started, started, idempotency_key=options.idempotency_key,
                    attempts=attempt,
                ),
                clock,
            )  # fmt: skip
        except _Replayed:
            earlier = find_ingestion(storage, source, options.idempotency_key or "")
            assert earlier is not None
            return replace(earlier, replayed=True)
        except Exception as raised:
            error = _ours(raised)
            if error.transient and attempt <= options.retries:
                time.sleep(min(options.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
                continue
            if redact is not None:
                redact(error)
            failed = Ingestion(
                ingestion_id, source, options.mode, "failed", principal, 0, size_bytes,
                started, _after(started, clock), error.to_dict()["error"],
                idempotency_key=options.idempotency_key, attempts=attempt,
            )  # fmt: skip
            with storage.transaction(changes_data=False) as cursor:
                _record(cursor, failed)
            if error is raised:
                raise
            raise error from raised


def _ours(error: Exception) -> DataproductError:
    """Our error as it is; any other (a connector's bug, a full disk) as a SourceError."""
    if isinstance(error, DataproductError):
        return error
    log.error("load failed with %s", type(error).__name__, exc_info=error)
    return SourceError(f"the load failed: {type(error).__name__}: {first_line(error)}")


def _load_once(
    storage: Storage,
    source: str,
    open_stream: Callable[[], Any],
    options: LoadOptions,
    meter: LoadMeter,
    record: Ingestion,
    clock: float,
) -> Ingestion:
    try:
        return _write_recorded(storage, source, open_stream, options, meter, record, clock)
    except Exception:
        if meter.failure is not None:  # the stream failed: its own error, not the engine's
            raise meter.failure from None
        raise


def _write_recorded(
    storage: Storage,
    source: str,
    open_stream: Callable[[], Any],
    options: LoadOptions,
    meter: LoadMeter,
    record: Ingestion,
    clock: float,
) -> Ingestion:
    with open_stream() as reader, storage.transaction() as cursor:
        if options.idempotency_key and _key_used(cursor, source, options.idempotency_key):
            raise _Replayed
        stream = meter.wrap(conform(reader, options.rules, source))
        rows = write_input(
            cursor,
            source,
            stream,
            mode=options.mode,
            declared=options.rules.columns if options.rules else None,
            unique_key=options.unique_key,
            latest_by=options.cursor,
        )
        done = replace(
            record,
            rows=rows,
            bytes=record.bytes or meter.bytes,
            finished_at=_after(record.started_at, clock),
            watermark=watermark.encode(options.watermark if meter.high is None else meter.high),
        )
        _record(cursor, done)
        if options.before_commit is not None:
            options.before_commit(cursor)
    return done


def _after(started: datetime, clock: float) -> datetime:
    return datetime.fromtimestamp(started.timestamp() + (time.perf_counter() - clock), tz=UTC)


_COLUMNS = (
    "id, source, mode, status, principal, rows, bytes, started_at, finished_at, error, "
    "watermark, idempotency_key, attempts"
)


def _record(cursor: duckdb.DuckDBPyConnection, record: Ingestion) -> None:
    cursor.execute(
        f"INSERT INTO meta.ingestions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            record.id, record.source, record.mode, record.status, record.principal,
            record.rows, record.bytes, record.started_at, record.finished_at,
            json.dumps(record.error) if record.error else None,
            record.watermark, record.idempotency_key, record.attempts,
        ],
    )  # fmt: skip


def _key_used(cursor: duckdb.DuckDBPyConnection, source: str, key: str) -> bool:
    found = fetch_one(
        cursor,
        "SELECT count(*) FROM meta.ingestions "
        "WHERE source = ? AND idempotency_key = ? AND status = 'succeeded'",
        [source, key],
    )
    return bool(found and found[0])


def find_ingestion(storage: Storage, source: str, idempotency_key: str) -> Ingestion | None:
    """The committed load of `source` that used this idempotency key, if any."""
    found = _select(
        storage,
        "WHERE source = ? AND idempotency_key = ? AND status = 'succeeded' LIMIT 1",
        [source, idempotency_key],
    )
    return found[0] if found else None


def last_watermark(storage: Storage, source: str) -> Any:
    """The high-water mark of the source's latest successful load (None if never)."""
    with storage.reader() as cursor:
        found = fetch_one(
            cursor,
            "SELECT watermark FROM meta.ingestions WHERE source = ? AND status = 'succeeded' "
            "ORDER BY started_at DESC LIMIT 1",
            [source],
        )
    return watermark.decode(found[0]) if found else None


def _select(storage: Storage, clause: str, params: list[Any]) -> list[Ingestion]:
    with storage.reader() as cursor:
        rows = cursor.execute(f"SELECT {_COLUMNS} FROM meta.ingestions {clause}", params).fetchall()
    return [
        Ingestion(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
            json.loads(r[9]) if r[9] else None, r[10], r[11], r[12] or 1,
        )
        for r in rows
    ]  # fmt: skip


def source_freshness(storage: Storage) -> dict[str, dict[str, Any]]:
    """Per source: when it last loaded successfully, how many rows, and its last outcome."""
    query = """
        SELECT source,
               max(finished_at) FILTER (WHERE status = 'succeeded') AS loaded_at,
               arg_max(rows, finished_at) FILTER (WHERE status = 'succeeded') AS rows,
               arg_max(status, finished_at) AS last_status,
               arg_max(finished_at, finished_at) AS last_attempt_at
        FROM meta.ingestions GROUP BY source"""
    with storage.reader() as cursor:
        found = cursor.execute(query).fetchall()
    return {
        source: {
            "loaded_at": loaded.isoformat() if loaded else None,
            "rows": rows,
            "last_status": status,
            "last_attempt_at": attempt.isoformat() if attempt else None,
        }
        for source, loaded, rows, status, attempt in found
    }


def ingestion_history(
    storage: Storage, source: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The latest ingestions, newest first."""
    clause = "WHERE source = ? " if source else ""
    params: list[Any] = [source] if source else []
    found = _select(storage, clause + "ORDER BY started_at DESC LIMIT ?", [*params, limit])
    return [record.to_dict() for record in found]
