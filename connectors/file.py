"""Files on the product's disk: a path or a glob; CSV, JSON, NDJSON or Parquet."""

from __future__ import annotations

import glob
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from dataproduct.connector import Connector, LoadState, SourceSpec
from dataproduct.errors import SourceError
from dataproduct.ingest import FileFormat, file_reader, format_from_name


class FileSpec(SourceSpec):
    """`{type: file, path: data/orders.csv, format: csv}`; a relative path is in the product."""

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)
    format: FileFormat | None = None
    options: dict[str, str | int | float | bool] = {}


class FileConnector(Connector):
    """Reads local files with DuckDB's native readers."""

    spec_class = FileSpec

    @property
    def file_spec(self) -> FileSpec:
        """The spec, typed."""
        assert isinstance(self.spec, FileSpec)
        return self.spec

    def resolved_path(self) -> str:
        """The absolute path or glob."""
        path = Path(self.file_spec.path)
        return str(path if path.is_absolute() else self.context.product_dir / path)

    def file_format(self) -> FileFormat:
        """The declared format, or the one the file name implies."""
        found = self.file_spec.format or format_from_name(self.file_spec.path)
        if found is None:
            raise SourceError(
                f"cannot tell the format of '{self.file_spec.path}': set 'format'",
                where=f"sources.{self.name}.format",
            )
        return found

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Stream the matching files; SourceError when none match."""
        pattern = self.resolved_path()
        if not glob.glob(pattern):
            raise SourceError(
                f"no file matches '{self.file_spec.path}'", where=f"sources.{self.name}.path"
            )
        return file_reader(pattern, self.file_format(), dict(self.file_spec.options))

    def describe(self) -> dict[str, Any]:
        """Type, mode, path and format."""
        return {**super().describe(), "path": self.file_spec.path, "format": self.file_spec.format}
