"""The connector interface and its registry.

A connector is a small class with a typed spec (pydantic, `type: Literal[...]`). It turns a
source into a stream of Arrow record batches; the core loads that stream into
`input.<source>` in one transaction. Connectors are found by `type` through the
`dataproduct.connectors` entry-point group, so a third party adds one by installing a
package that declares it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from dataproduct.descriptor import DESCRIPTOR_FILE, ProductDescriptor, SourceConfig
from dataproduct.errors import DescriptorError

ENTRY_POINT_GROUP = "dataproduct.connectors"

LoadMode = Literal["replace", "append"]


class SourceSpec(BaseModel):
    """Base of every connector's spec: the fields of one entry under `sources:`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    mode: LoadMode = "replace"


@dataclass(frozen=True)
class SourceContext:
    """What a connector may know of the product it feeds."""

    product_dir: Path
    data_dir: Path


class Connector(ABC):
    """Reads one source as a stream of Arrow record batches."""

    spec_class: ClassVar[type[SourceSpec]]
    pulls: ClassVar[bool] = True

    def __init__(self, name: str, spec: SourceSpec, context: SourceContext) -> None:
        self.name = name
        self.spec = spec
        self.context = context

    @abstractmethod
    def open_stream(self) -> AbstractContextManager[pa.RecordBatchReader]:
        """Open the source; the context yields its rows as a stream of record batches."""

    def describe(self) -> dict[str, Any]:
        """What discovery may show of this source (never credentials)."""
        return {"type": self.spec.type, "mode": self.spec.mode}


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
