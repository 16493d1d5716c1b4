"""Arrow record batches out as bytes: Arrow IPC stream, Parquet, CSV or NDJSON.

Each writer is fed one batch at a time and yields what it wrote, so a response streams
with memory bounded by one batch whatever the size of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

MEDIA_TYPES = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}


class ChunkSink:
    """A write-only file object that hands back what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


WriterFactory = Callable[[ChunkSink, pa.Schema], Any]


def _arrow_writer(sink: ChunkSink, schema: pa.Schema) -> Any:
    return pa.ipc.new_stream(sink, schema)


def _parquet_writer(sink: ChunkSink, schema: pa.Schema) -> Any:
    return pq.ParquetWriter(sink, schema, compression="snappy")


def _csv_writer(sink: ChunkSink, schema: pa.Schema) -> Any:
    return pa_csv.CSVWriter(sink, schema)


WRITERS: dict[str, WriterFactory] = {
    "arrow": _arrow_writer,
    "parquet": _parquet_writer,
    "csv": _csv_writer,
}


def encode_batches(
    reader: pa.RecordBatchReader, file_format: str, cursor: duckdb.DuckDBPyConnection
) -> Iterator[bytes]:
    """Yield the encoded stream; the cursor is closed when the stream ends or is dropped."""
    try:
        if file_format == "ndjson":
            yield from _json_lines(reader)
            return
        sink = ChunkSink()
        writer = WRITERS[file_format](sink, reader.schema)
        for batch in reader:
            writer.write_batch(batch)
            chunk = sink.drain()
            if chunk:
                yield chunk
        writer.close()
        yield sink.drain()
    finally:
        cursor.close()


def _json_lines(reader: pa.RecordBatchReader) -> Iterator[bytes]:
    """Batches of one text column of newline-terminated JSON: emit their bytes as they are."""
    for batch in reader:
        column = batch.column(0)
        if len(column) == 0:
            continue
        yield _string_bytes(column)


def _string_bytes(column: pa.Array) -> bytes:
    """The concatenated values of a string array, without a Python object per row."""
    if pa.types.is_string_view(column.type):
        column = column.cast(pa.large_string())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        width = 8 if pa.types.is_large_string(column.type) else 4
        offsets, data = column.buffers()[1], column.buffers()[2]
        start = int.from_bytes(
            offsets[column.offset * width : (column.offset + 1) * width], "little", signed=True
        )
        end_index = column.offset + len(column)
        end = int.from_bytes(
            offsets[end_index * width : (end_index + 1) * width], "little", signed=True
        )
        return data[start:end].to_pybytes() if data is not None else b""
    raise TypeError(f"expected a string column, got {column.type}")
