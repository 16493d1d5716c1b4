"""The connector interface and its registry.

A connector is a small class with a typed spec (pydantic, `type: Literal[...]`). A pulling
connector turns a source into a stream of Arrow record batches; the core checks that stream
against the declared columns and loads it into `input.<source>` in one transaction. A
message connector runs in the background and hands micro-batches of broker messages to a
sink that commits them. Connectors are found by `type` through the `dataproduct.connectors`
entry-point group, so a third party adds one by installing a package that declares it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from dataproduct.descriptor import (
    DESCRIPTOR_FILE,
    ColumnSpec,
    ProductDescriptor,
    SourceConfig,
    check_identifier,
)
from dataproduct.errors import ConflictError, DescriptorError
from dataproduct.secrets import SecretResolver

ENTRY_POINT_GROUP = "dataproduct.connectors"
# The optional extra that brings the libraries of each built-in connector.
_EXTRAS = {
    "delta": "lake",
    "iceberg": "lake",
    "database": "database",
    "nats": "brokers",
    "rabbitmq": "brokers",
    "mqtt": "brokers",
}

LoadMode = Literal["replace", "append"]
NewColumnPolicy = Literal["add", "ignore", "refuse"]


class IncrementalSpec(BaseModel):
    """`incremental: {cursor: updated_at}`: load only rows past the last high-water mark.

    With `unique_key`, a row whose key is already loaded replaces the old one (a merge);
    without it, new rows are appended.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cursor: str = Field(min_length=1)
    unique_key: list[str] = []


class SourceSpec(BaseModel):
    """Base of every connector's spec: the fields of one entry under `sources:`.

    `columns` is the source's data dictionary: each declared column must arrive with a
    value that fits its type (and not null when required). `new_columns` says what happens
    to a column the dictionary does not declare: `add` it, `ignore` (drop) it, or `refuse`
    the load. `retries` is how often a transient fault (a source that is down) is retried,
    with exponential backoff; `trigger_run` starts a pipeline run after each load.
    `poll_s` pulls the source every so many seconds (when its connector can tell, only
    after the source changed).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    mode: LoadMode = "replace"
    columns: dict[str, ColumnSpec] = {}
    new_columns: NewColumnPolicy = "add"
    retries: int = Field(default=3, ge=0, le=10)
    trigger_run: bool = False
    poll_s: float | None = Field(default=None, ge=1)

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        for name in value:
            check_identifier(name, "column name")
        return value


@dataclass(frozen=True)
class SourceContext:
    """What a connector may know of the product it feeds."""

    product_dir: Path
    data_dir: Path


@dataclass(frozen=True)
class LoadState:
    """What the core tells a connector about the load it opens.

    `watermark` is the high-water mark of the cursor column after the last successful
    incremental load (None for the first load or a full refresh): read only rows past it.
    """

    watermark: Any = None


class Connector(ABC):
    """Reads one source as a stream of Arrow record batches."""

    spec_class: ClassVar[type[SourceSpec]]
    pulls: ClassVar[bool] = True

    def __init__(self, name: str, spec: SourceSpec, context: SourceContext) -> None:
        self.name = name
        self.spec = spec
        self.context = context
        self.secrets = SecretResolver(where=f"sources.{name}")

    @abstractmethod
    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Open the source; the context yields its rows as a stream of record batches.

        Raise SourceUnavailableError for a fault that may pass (the core retries it) and
        SourceError for one that will not (bad credentials, a missing table, bad content).
        """

    @property
    def incremental(self) -> IncrementalSpec | None:
        """The incremental settings, for connectors whose spec has them."""
        found = getattr(self.spec, "incremental", None)
        return found if isinstance(found, IncrementalSpec) else None

    def secret(self, value: str) -> str:
        """A spec value with its `${env:...}` and `${file:...}` references read."""
        return self.secrets.resolve(value)

    def probe(self) -> str | None:
        """A marker of the source's current state, if the connector can tell it cheaply.

        A poll pulls only when the marker changed; None means "cannot tell": pull.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """What discovery may show of this source (never credentials)."""
        found: dict[str, Any] = {"type": self.spec.type, "mode": self.spec.mode}
        if self.spec.poll_s is not None:
            found["poll_s"] = self.spec.poll_s
        if self.incremental:
            found["incremental"] = self.incremental.model_dump()
        if self.spec.columns:
            found["columns"] = {
                name: column.model_dump(exclude_defaults=True)
                for name, column in self.spec.columns.items()
            }
        return found


@dataclass(frozen=True)
class Message:
    """One broker message: its id (for de-duplication) and its body (a JSON record, an
    array of records, or NDJSON lines)."""

    id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class MessageSink(ABC):
    """Where a message connector lands what it receives."""

    @abstractmethod
    def land(self, messages: Sequence[Message]) -> int:
        """Commit a micro-batch to `input.<source>` (all or nothing, already-seen ids
        skipped) and return the rows added. Acknowledge the messages only after it returns;
        if it raises, do not acknowledge them (the broker will deliver them again)."""


class MessageConnector(Connector):
    """A source that subscribes to a broker and lands messages in micro-batches."""

    pulls = False

    @abstractmethod
    def consume(self, sink: MessageSink, stop: threading.Event) -> None:
        """Receive until `stop` is set, landing micro-batches in `sink`. Raise
        SourceUnavailableError when the broker is lost; the core reconnects with backoff."""

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Message sources are not pulled on demand."""
        raise ConflictError(
            f"source {self.name} receives broker messages; it is not pulled",
            where=f"sources.{self.name}",
        )


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def connector_types() -> list[str]:
    """Every installed connector type."""
    return sorted(_entry_points())


@cache
def connector_class(type_name: str) -> type[Connector]:
    """The connector registered for `type_name`; KeyError if none is installed."""
    loaded = _entry_points()[type_name].load()
    if not (isinstance(loaded, type) and issubclass(loaded, Connector)):
        raise TypeError(f"entry point '{type_name}' is not a Connector class")
    return loaded


def build_connector(name: str, config: SourceConfig, context: SourceContext) -> Connector:
    """Validate a source's config against its connector's spec and build the connector."""
    where = f"{context.product_dir / DESCRIPTOR_FILE}: sources.{name}"
    try:
        cls = connector_class(config.type)
    except ImportError as error:
        extra = _EXTRAS.get(config.type)
        hint = f"pip install 'dataproduct[{extra}]'" if extra else "install its dependencies"
        raise DescriptorError(
            f"sources.{name}.type: the '{config.type}' connector needs {error.name or 'a library'}"
            f", which is not installed: {hint}",
            where=f"{where}.type",
        ) from None
    except KeyError:
        known = ", ".join(connector_types())
        raise DescriptorError(
            f"sources.{name}.type: unknown connector type '{config.type}' (installed: {known})",
            where=f"{where}.type",
        ) from None
    try:
        spec = cls.spec_class.model_validate({"type": config.type, **config.options()})
    except PydanticValidationError as error:
        item = error.errors()[0]
        path = ".".join(str(part) for part in item["loc"])
        reason = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        raise DescriptorError(f"sources.{name}.{path}: {reason}", where=f"{where}.{path}") from None
    return cls(name, spec, context)


def build_connectors(descriptor: ProductDescriptor, context: SourceContext) -> dict[str, Connector]:
    """Every source of the product, validated."""
    return {
        name: build_connector(name, config, context) for name, config in descriptor.sources.items()
    }
