"""Reading listed objects: Parquet scanned in place, text formats copied and read by DuckDB.

Parquet objects are scanned with `pyarrow.dataset` over the store's pyarrow file system:
row groups are fetched with ranged reads and streamed as record batches, several objects at
a time. CSV, JSON and NDJSON objects are copied one by one into a private temporary folder
and read by DuckDB's own readers (`dataproduct.ingest.file_reader`), exactly as the `file`
connector and the input port read them. A failure names the object (by its store URL) that
could not be read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from connectors.errors import first_line, translated_stream, without_colours
from connectors.object_store_listing import Listing
from dataproduct.errors import DataproductError, SourceError
from dataproduct.ingest import BATCH_ROWS, FileFormat, file_reader


@dataclass(frozen=True)
class ObjectReads:
    """How to read one listing of objects, and how its errors are named.

    `translate(error, store)` turns a library error into ours; `url(path)` names an object
    (`root/key`) in messages; `where` is the source's place in the descriptor.
    """

    fs: pafs.FileSystem
    listing: Listing
    store: str
    where: str
    url: Callable[[str], str]
    translate: Callable[[BaseException, str], DataproductError]
    hive_partitioning: bool

    def parquet(self) -> AbstractContextManager[pa.RecordBatchReader]:
        """The Parquet objects scanned in place as one stream."""
        try:
            dataset = ds.dataset(
                self.listing.paths,
                filesystem=self.fs,
                format="parquet",
                partitioning=ds.partitioning(flavor="hive") if self.hive_partitioning else None,
                partition_base_dir=self.listing.base,
            )
            scanner = dataset.scanner(batch_size=BATCH_ROWS, use_threads=True)
        except (OSError, pa.ArrowException) as error:
            raise self.parquet_error(error) from None
        return translated_stream(scanner.projected_schema, scanner.to_batches(), self.parquet_error)

    def parquet_error(self, error: BaseException) -> DataproductError:
        """The error of a Parquet scan, naming the object that failed."""
        found = self.translate(error, self.store)
        if found.transient:
            return found
        paths = self.listing.paths
        named = next((p for p in paths if p in str(error)), None)
        named = named or _first_unreadable(self.fs, paths)
        if named is None:
            return found
        return SourceError(
            f"cannot read the Parquet object {self.url(named)}: {first_line(error)}",
            where=f"{self.where}: {self.url(named)}",
        )

    @contextmanager
    def text(
        self, file_format: FileFormat, scratch: Path, prefix: str
    ) -> Iterator[pa.RecordBatchReader]:
        """The objects copied into a temporary folder of `scratch` and read by DuckDB."""
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=prefix, dir=scratch) as folder:
            local = self.download(Path(folder))
            options = {"hive_partitioning": self.hive_partitioning}

            def translate(error: BaseException) -> DataproductError:
                return self.text_error(error, local, file_format, options)

            try:
                with (
                    file_reader(local, file_format, options) as reader,
                    translated_stream(reader.schema, reader, translate) as translated,
                ):
                    yield translated
            except SourceError as error:
                if error.where and folder in error.where:  # raised by file_reader itself
                    raise translate(error) from None
                raise

    def text_error(
        self,
        error: BaseException,
        local: list[str],
        file_format: FileFormat,
        options: dict[str, Any],
    ) -> SourceError:
        """A DuckDB reader error naming the object (by its store URL) that failed."""
        text = f"{error.__context__ or ''}\n{error}"
        bad = next((path for path in local if path in text), None)
        if bad is None:
            bad = (
                local[0] if len(local) == 1 else _first_unreadable_text(local, file_format, options)
            )
        message = _csv_reason(text) or first_line(error).removeprefix(
            f"cannot read {file_format}: "
        )
        for path, remote in zip(local, self.listing.paths, strict=True):
            message = message.replace(path, self.url(remote))
        if bad is None:
            return SourceError(f"cannot read {file_format}: {message}", where=self.where)
        remote = self.url(self.listing.paths[local.index(bad)])
        return SourceError(
            f"cannot read the {file_format} object {remote}: {message}",
            where=f"{self.where}: {remote}",
        )

    def download(self, folder: Path) -> list[str]:
        """Copy the objects into `folder`, keeping their folders under the base."""
        local: list[str] = []
        start = len(self.listing.base) + 1
        for path in self.listing.paths:
            target = folder / path[start:]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                pafs.copy_files(
                    path, str(target), source_filesystem=self.fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )  # fmt: skip
            except (OSError, pa.ArrowException) as error:
                raise self.translate(error, self.url(path)) from None
            local.append(str(target))
        return local


def _first_unreadable(fs: pafs.FileSystem, paths: list[str]) -> str | None:
    """The first object whose Parquet footer or pages cannot be read (after a failed scan)."""
    for path in paths:
        try:
            for _ in ds.dataset(path, filesystem=fs, format="parquet").to_batches():
                pass
        except (OSError, pa.ArrowException):
            return path
    return None


def _first_unreadable_text(
    paths: list[str], file_format: FileFormat, options: dict[str, Any]
) -> str | None:
    """The first local copy DuckDB cannot read on its own (after a failed read of all)."""
    for path in paths:
        try:
            with file_reader(path, file_format, options) as reader:
                for _ in reader:
                    pass
        except (SourceError, duckdb.Error):
            return path
    return None


def _csv_reason(text: str) -> str | None:
    """DuckDB's CSV error line and its reason (never the offending line: it may hold data)."""
    lines = [line.strip() for line in without_colours(text).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "CSV Error on Line" in line:
            reasons = [r for r in lines[i + 1 : i + 3] if not r.startswith("Original Line")]
            return f"{line.split('Error: ', 1)[-1]}: {reasons[0]}" if reasons else line
    return None
