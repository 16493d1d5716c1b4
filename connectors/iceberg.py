"""An Apache Iceberg table, found through a pyiceberg catalog (SQL, REST, Glue, Hive, ...).

`catalog` holds pyiceberg's catalog properties (`type`, `uri`, `warehouse`, `s3.endpoint`,
...); any value may be a `${env:NAME}` or `${file:/path}` reference. The table is read at
its current snapshot or at `snapshot_id` (time travel), data files streamed as Arrow
record batches by pyiceberg's scan (`to_arrow_batch_reader`), never read whole.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from connectors.errors import first_line, looks_denied, looks_unreachable, scanned_stream
from dataproduct.connector import Connector, LoadState, SourceSpec
from dataproduct.errors import DataproductError, SourceError, SourceUnavailableError
from dataproduct.secrets import mask_url

SHOWN_PROPERTIES = ("type", "uri", "warehouse", "s3.endpoint", "s3.region")


class IcebergSpec(SourceSpec):
    """`{type: iceberg, catalog: {type: sql, uri: "sqlite:///cat.db", warehouse: ...},
    table: sales.orders}`, optionally `snapshot_id` for time travel.

    `catalog_name` is the catalog's name as the catalog itself records it (a SQL catalog
    keeps tables per catalog name).
    """

    type: Literal["iceberg"] = "iceberg"
    catalog: dict[str, str] = Field(min_length=1)
    catalog_name: str = Field(default="default", min_length=1)
    table: str = Field(pattern=r"^[^.\s]+(\.[^.\s]+)+$")
    snapshot_id: int | None = None


class IcebergConnector(Connector):
    """Reads one Iceberg table (latest snapshot, or a given one) as record batches."""

    spec_class = IcebergSpec

    @property
    def iceberg_spec(self) -> IcebergSpec:
        """The spec, typed."""
        assert isinstance(self.spec, IcebergSpec)
        return self.spec

    @property
    def where(self) -> str:
        """The source's place in the descriptor, for errors."""
        return f"sources.{self.name}"

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Load the table from the catalog and stream the chosen snapshot."""
        return scanned_stream(self._scan, self._error, self.secrets)

    def _scan(self) -> pa.RecordBatchReader:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

        spec = self.iceberg_spec
        properties = {key: self.secret(value) for key, value in spec.catalog.items()}
        try:
            catalog = load_catalog(spec.catalog_name, **properties)
            table = catalog.load_table(spec.table)
        except (NoSuchTableError, NoSuchNamespaceError):
            raise SourceError(
                f"the Iceberg table {spec.table} does not exist in the catalog",
                where=f"{self.where}.table",
            ) from None
        except Exception as error:  # noqa: BLE001 - catalogs raise many kinds; translated
            raise self._error(error) from None
        if spec.snapshot_id is not None and table.snapshot_by_id(spec.snapshot_id) is None:
            raise SourceError(
                f"the Iceberg table {spec.table} has no snapshot {spec.snapshot_id}",
                where=f"{self.where}.snapshot_id",
            )
        try:
            return table.scan(snapshot_id=spec.snapshot_id).to_arrow_batch_reader()
        except Exception as error:  # noqa: BLE001
            raise self._error(error) from None

    def _error(self, error: BaseException) -> DataproductError:
        """A catalog or file error as SourceError, or SourceUnavailableError if it may pass."""
        from pyiceberg.exceptions import (
            ForbiddenError,
            ServerError,
            ServiceUnavailableError,
            UnauthorizedError,
        )

        table = self.iceberg_spec.table
        message = first_line(error)
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, UnauthorizedError | ForbiddenError) or looks_denied(text):
            return SourceError(
                f"access denied to the Iceberg table {table}: check the catalog's credentials "
                f"({message})",
                where=f"{self.where}.catalog",
            )
        transient = (ConnectionError, TimeoutError, ServerError, ServiceUnavailableError)
        if isinstance(error, transient) or looks_unreachable(text):
            return SourceUnavailableError(
                f"cannot reach the Iceberg catalog or files of {table}: {message}",
                where=self.where,
            )
        return SourceError(f"cannot read the Iceberg table {table}: {message}", where=self.where)

    def describe(self) -> dict[str, Any]:
        """Type, mode, table, snapshot and the catalog's type, uri and warehouse (masked)."""
        spec = self.iceberg_spec
        catalog = {
            key: mask_url(value)
            for key, value in spec.catalog.items()
            if key in SHOWN_PROPERTIES and not value.startswith("${")
        }
        found = {**super().describe(), "table": spec.table, "catalog": catalog}
        if spec.snapshot_id is not None:
            found["snapshot_id"] = spec.snapshot_id
        return found
