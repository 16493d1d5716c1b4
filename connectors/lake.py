"""Lake tables: Delta Lake tables on the product's disk or in S3, at any version.

A Delta table is read with `deltalake` (delta-rs): the transaction log says which Parquet
files make up the chosen version, and `DeltaTable.scan()` streams them as Arrow record
batches through delta-rs' own engine, which also applies deletion vectors and column
mapping (a plain Parquet scan of the files would not). S3 options are the same as the
`s3` connector's and become delta-rs `AWS_*` storage options.

Hive-partitioned Parquet folders need no connector of their own: the `file` connector reads
them locally (`options: {hive_partitioning: true}`) and the `s3` connector in a bucket
(`hive_partitioning: true`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from connectors.errors import first_line, scanned_stream, without_colours
from connectors.object_store_s3 import S3Access, S3AccessSpec, store_error
from dataproduct.connector import Connector, LoadState
from dataproduct.errors import DataproductError, SourceError

S3_SCHEMES = ("s3://", "s3a://")
MESSAGE_CHARS = 400


class DeltaSpec(S3AccessSpec):
    """`{type: delta, path: lake/orders}` or `{type: delta, path: "s3://bucket/orders"}`.

    A relative local path is inside the product folder; `version` reads an older version
    of the table (time travel). Endpoint and credentials apply to `s3://` paths.
    """

    type: Literal["delta"] = "delta"
    path: str = Field(min_length=1)
    version: int | None = Field(default=None, ge=0)


class DeltaConnector(Connector):
    """Streams one version of a Delta Lake table."""

    spec_class = DeltaSpec

    @property
    def delta_spec(self) -> DeltaSpec:
        """The spec, typed."""
        assert isinstance(self.spec, DeltaSpec)
        return self.spec

    @property
    def in_s3(self) -> bool:
        """True when the table lives in an S3(-compatible) store."""
        return self.delta_spec.path.startswith(S3_SCHEMES)

    def table_uri(self) -> str:
        """The table's URI: an `s3://` URI as written, a local path made absolute."""
        if self.in_s3:
            return self.delta_spec.path
        path = Path(self.delta_spec.path)
        return str(path if path.is_absolute() else self.context.product_dir / path)

    def shown_path(self) -> str:
        """How errors name the table (with its endpoint, if not AWS)."""
        spec = self.delta_spec
        at = f" at {spec.shown()['endpoint']}" if self.in_s3 and spec.endpoint else ""
        return f"{spec.path}{at}"

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Open the table at its latest (or the declared) version and stream its rows."""
        return scanned_stream(self._scan, self._error, self.secrets)

    def _scan(self) -> pa.RecordBatchReader:
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError

        where = f"sources.{self.name}.path"
        options = None
        if self.in_s3:
            options = S3Access.resolve(self.delta_spec, self.secret).storage_options()
        elif not Path(self.table_uri()).exists():
            raise SourceError(f"no folder at '{self.delta_spec.path}'", where=where)
        try:
            table = DeltaTable(
                self.table_uri(), version=self.delta_spec.version, storage_options=options
            )
            return pa.RecordBatchReader.from_stream(table.scan())
        except (DeltaError, OSError, ValueError, pa.ArrowException) as error:
            raise self._error(error) from None

    def _error(self, error: BaseException) -> DataproductError:
        """A delta-rs error as SourceError (or SourceUnavailableError when it may pass)."""
        from deltalake.exceptions import TableNotFoundError

        where = f"sources.{self.name}.path"
        version = self.delta_spec.version
        if isinstance(error, TableNotFoundError):
            return SourceError(
                f"'{self.shown_path()}' is not a Delta table (no readable _delta_log): "
                f"{first_line(error)}",
                where=where,
            )
        found = store_error(error, store=self.shown_path(), where=where, message=_chain(error))
        if not found.transient and version is not None and "version" in str(error):
            return SourceError(
                f"version {version} of the Delta table '{self.shown_path()}' cannot be read: "
                f"{_chain(error)}",
                where=f"sources.{self.name}.version",
            )
        return found

    def describe(self) -> dict[str, Any]:
        """Type, mode, path, version, endpoint and region; never keys."""
        spec = self.delta_spec
        found: dict[str, Any] = {**super().describe(), "format": "delta", "path": spec.path}
        if spec.version is not None:
            found["version"] = spec.version
        return found | spec.shown()


def _chain(error: BaseException) -> str:
    """delta-rs' nested error lines (`Kernel error -> Generic S3 error -> ...`) as one."""
    lines = [line.strip().lstrip("↳").strip() for line in without_colours(str(error)).splitlines()]
    joined = " -> ".join(line for line in lines if line)
    return joined[:MESSAGE_CHARS] if joined else type(error).__name__
