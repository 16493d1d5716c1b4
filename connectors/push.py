"""A source that is only pushed to, through the input port."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import pyarrow as pa

from dataproduct.connector import Connector, LoadMode, LoadState, SourceSpec
from dataproduct.errors import ConflictError
from dataproduct.ingest import FileFormat


class PushSpec(SourceSpec):
    """`{type: push, format: csv}`: rows arrive through `POST /input/{source}`."""

    type: Literal["push"] = "push"
    mode: LoadMode = "append"
    format: FileFormat | None = None


class PushConnector(Connector):
    """Nothing to pull: the input port loads what is pushed."""

    spec_class = PushSpec
    pulls = False

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """A push source has nothing to pull."""
        raise ConflictError(
            f"source {self.name} is a push source: send data to POST /input/{self.name}",
            where=f"sources.{self.name}",
        )

    def describe(self) -> dict[str, Any]:
        """Type, mode and format."""
        spec = self.spec
        assert isinstance(spec, PushSpec)
        return {**super().describe(), "format": spec.format}
