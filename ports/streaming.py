"""Arrow record batches out as bytes: Arrow IPC stream, Parquet, CSV or NDJSON.

Each record batch is encoded into a few byte pieces and handed on before the next batch is
read, so a response streams with memory bounded by a few batches whatever the size of the
dataset.

Served through an ASGI server, the stream is iterated asynchronously: one hop to a worker
thread per record batch (not per piece), pieces handed to the server without being joined
and no larger than `CHUNK_BYTES` (large writes to a socket that only takes part of them make
asyncio copy the rest into its buffer, again and again). Arrow IPC pieces are the batch's own
buffers, never copied here. CSV, the costly text format, is encoded by pyarrow outside the
GIL in a small shared pool, a couple of batches of one stream at a time, in order. Iterated
synchronously, the same stream yields one `bytes` object per batch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
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

CHUNK_BYTES = 1 << 20
"""The largest piece handed to the server at once (larger buffers go as slices of views)."""
SMALL_PIECE_BYTES = 64 << 10
"""Pieces smaller than this are joined with their neighbours before they are handed on."""
CSV_BATCHES_IN_FLIGHT = 2
"""Batches of one CSV stream being encoded at once (memory: that many batches and texts)."""

_CSV_POOL = ThreadPoolExecutor(
    max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="csv-encoder"
)  # threads start on first use

Pieces = list[Any]
"""Bytes-like objects (bytes, memoryview, pyarrow.Buffer), in order."""


class ChunkSink:
    """A write-only file object that hands back what was written since the last drain.

    With `copy=False` it keeps the objects it is given (for writers that hand over
    immutable buffers, like the Arrow IPC writer); otherwise it copies each write, as a
    writer may reuse its buffer after `write` returns.
    """

    def __init__(self, copy: bool = True) -> None:
        self._chunks: list[Any] = []
        self._position = 0
        self._copy = copy
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data) if self._copy else data
        size = memoryview(chunk).nbytes
        if size:
            self._chunks.append(chunk)
            self._position += size
        return size

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

    def take(self) -> Pieces:
        """What was written since the last call, as pieces (not joined)."""
        pieces = self._chunks
        self._chunks = []
        return pieces

    def drain(self) -> bytes:
        """What was written since the last call, as one bytes object."""
        return b"".join(self.take())


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


class EncodedStream:
    """The encoded bytes of a result: iterate it for `bytes` per batch, or async-iterate it.

    The DuckDB cursor is closed when the stream ends, fails, or is closed or dropped.
    """

    def __init__(self, pieces: Generator[Pieces, None, None]) -> None:
        self._pieces = pieces

    def __iter__(self) -> EncodedStream:
        return self

    def __next__(self) -> bytes:
        while True:
            data = b"".join(next(self._pieces))
            if data:
                return data

    def close(self) -> None:
        """Stop early: release the cursor."""
        self._pieces.close()

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return _serve(self._pieces)


def encode_batches(
    reader: pa.RecordBatchReader, file_format: str, cursor: duckdb.DuckDBPyConnection
) -> EncodedStream:
    """The encoded stream; the cursor is closed when the stream ends or is dropped."""
    return EncodedStream(_encode(reader, file_format, cursor))


def _encode(
    reader: pa.RecordBatchReader, file_format: str, cursor: duckdb.DuckDBPyConnection
) -> Generator[Pieces, None, None]:
    try:
        if file_format == "ndjson":
            yield from _json_lines(reader)
        elif file_format == "csv":
            yield from _csv_pieces(reader)
        else:
            # the IPC writer hands over the batch's own buffers: no copy needed
            sink = ChunkSink(copy=file_format != "arrow")
            writer = WRITERS[file_format](sink, reader.schema)
            for batch in reader:
                writer.write_batch(batch)
                yield sink.take()
            writer.close()
            yield sink.take()
    finally:
        cursor.close()


async def _serve(pieces: Generator[Pieces, None, None]) -> AsyncIterator[bytes | memoryview]:
    """One worker-thread hop per batch; its pieces go out in server-friendly sizes."""
    try:
        while True:
            batch = await anyio.to_thread.run_sync(next, pieces, None)
            if batch is None:
                return
            for index, chunk in enumerate(_chunked(batch)):
                if index:
                    # let the loop see a lost connection before writing more into it
                    await anyio.lowlevel.checkpoint()
                yield chunk
    finally:
        # off the event loop, even when cancelled: closing waits for running encoders
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(pieces.close)


def _chunked(pieces: Pieces) -> Iterator[bytes | memoryview]:
    """Small pieces joined, big ones sliced (views, no copy) to at most CHUNK_BYTES."""
    small: list[Any] = []
    small_size = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        if view.nbytes < SMALL_PIECE_BYTES:
            small.append(view)
            small_size += view.nbytes
            if small_size >= SMALL_PIECE_BYTES:
                yield b"".join(small)
                small, small_size = [], 0
            continue
        if small:
            yield b"".join(small)
            small, small_size = [], 0
        for start in range(0, view.nbytes, CHUNK_BYTES):
            yield view[start : start + CHUNK_BYTES]
    if small:
        yield b"".join(small)


def _csv_text(data: pa.RecordBatch | pa.Table, header: bool) -> pa.Buffer:
    out = pa.BufferOutputStream()
    pa_csv.write_csv(data, out, pa_csv.WriteOptions(include_header=header))
    return out.getvalue()


def _csv_pieces(reader: pa.RecordBatchReader) -> Iterator[Pieces]:
    """CSV with one header, batches encoded a few at a time in the pool, in order.

    The same bytes as one `pyarrow.csv.CSVWriter` fed every batch.
    """
    pending: deque[Future[pa.Buffer]] = deque()
    header = True
    try:
        for batch in reader:
            pending.append(_CSV_POOL.submit(_csv_text, batch, header))
            header = False
            if len(pending) >= CSV_BATCHES_IN_FLIGHT:
                yield [pending.popleft().result()]
        while pending:
            yield [pending.popleft().result()]
        if header:  # no batch at all: the header alone
            yield [_csv_text(reader.schema.empty_table(), header=True)]
    finally:  # stopped early: nothing of this stream keeps running after it
        for future in pending:
            future.cancel()
        wait(pending)


def _json_lines(reader: pa.RecordBatchReader) -> Iterator[Pieces]:
    """Batches of one text column of newline-terminated JSON: emit their bytes as they are."""
    for batch in reader:
        column = batch.column(0)
        if len(column) == 0:
            continue
        yield [_string_buffer(column)]


def _string_bytes(column: pa.Array) -> bytes:
    """The concatenated values of a string array, without a Python object per row."""
    data: bytes = _string_buffer(column).to_pybytes()
    return data


def _string_buffer(column: pa.Array) -> pa.Buffer:
    """The concatenated values of a string array: a slice of its data buffer, not a copy."""
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
        return data[start:end] if data is not None else pa.py_buffer(b"")
    raise TypeError(f"expected a string column, got {column.type}")
