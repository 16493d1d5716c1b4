"""Counting a load as it streams: rows and bytes so far, and the cursor's high-water mark.

The mark is kept in `meta.ingestions` as JSON that remembers its type, so the next
incremental load gets back the same kind of value (an int, a Decimal, a tz-aware datetime)
to compare with.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dataproduct.errors import DataproductError, SourceError, first_line


class LoadMeter:
    """Wraps a stream to count what passes and track the maximum of one column."""

    def __init__(self, cursor: str | None = None) -> None:
        self.cursor = cursor
        self.rows = 0
        self.bytes = 0
        self.high: Any = None
        self.failure: DataproductError | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start counting again (a retried load)."""
        with self._lock:
            self.rows = self.bytes = 0
            self.high = None
            self.failure = None

    def wrap(self, reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
        """The same stream, counted."""
        return pa.RecordBatchReader.from_batches(reader.schema, self._counted(reader))

    def _counted(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        """The batches, counted. An error raised while reading is kept in `failure`: the
        engine consuming the stream wraps it in its own, and the load raises it instead."""
        batches = iter(reader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except DataproductError as error:
                self.failure = error
                raise
            except Exception as error:
                self.failure = SourceError(f"reading the source failed: {first_line(error)}")
                raise
            high = self._batch_high(batch)
            with self._lock:
                self.rows += batch.num_rows
                self.bytes += batch.nbytes
                if high is not None and (self.high is None or high > self.high):
                    self.high = high
            yield batch

    def _batch_high(self, batch: pa.RecordBatch) -> Any:
        if self.cursor is None or batch.num_rows == 0:
            return None
        index = batch.schema.get_field_index(self.cursor)
        if index < 0:
            return None
        column = batch.column(index)
        if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
            # Python's datetime holds microseconds: a nanosecond mark rounds down, so the
            # next load reads the last microsecond again rather than skipping a row
            column = pc.cast(column, pa.timestamp("us", column.type.tz), safe=False)
        return pc.max(column).as_py()

    def snapshot(self) -> dict[str, int]:
        """Rows and bytes so far."""
        with self._lock:
            return {"rows": self.rows, "bytes": self.bytes}


def encode(value: Any) -> str | None:
    """A watermark as JSON text that keeps its type; None stays None."""
    if value is None:
        return None
    kind: str
    shown: Any
    if isinstance(value, bool):
        kind, shown = "bool", value
    elif isinstance(value, int):
        kind, shown = "int", value
    elif isinstance(value, float):
        kind, shown = "float", value
    elif isinstance(value, Decimal):
        kind, shown = "decimal", str(value)
    elif isinstance(value, datetime):
        kind, shown = "datetime", value.isoformat()
    elif isinstance(value, date):
        kind, shown = "date", value.isoformat()
    else:
        kind, shown = "str", str(value)
    return json.dumps({"type": kind, "value": shown})


def decode(text: str | None) -> Any:
    """The watermark `encode` wrote."""
    if not text:
        return None
    data = json.loads(text)
    value = data["value"]
    match data["type"]:
        case "decimal":
            return Decimal(value)
        case "datetime":
            return datetime.fromisoformat(value)
        case "date":
            return date.fromisoformat(value)
        case _:
            return value


def shown(text: str | None) -> Any:
    """A stored watermark as JSON shows it (its value only)."""
    return json.loads(text)["value"] if text else None
