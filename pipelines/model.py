"""The pipeline as data: named SQL models, each building one table in a layer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from dataproduct.descriptor import ModelSpec


@dataclass(frozen=True)
class Model:
    """One SQL model: a single SELECT that builds `layer.name`."""

    name: str
    sql: str
    layer: str = "output"
    description: str = ""
    materialized: str = "table"
    unique_key: tuple[str, ...] = ()
    cursor: str | None = None
    dialect: str = "duckdb"

    @classmethod
    def from_spec(cls, spec: ModelSpec, dialect: str | None = None) -> Model:
        """A model from its descriptor entry; `dialect` is the pipeline's default."""
        return cls(
            name=spec.name,
            sql=spec.sql,
            layer=spec.layer,
            description=spec.description,
            materialized=spec.materialized,
            unique_key=tuple(spec.unique_key),
            cursor=spec.cursor,
            dialect=spec.dialect or dialect or "duckdb",
        )

    @property
    def incremental(self) -> bool:
        """Whether runs add to the table instead of rebuilding it."""
        return self.materialized == "incremental"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Pipeline:
    """A set of models; the planner orders them."""

    models: tuple[Model, ...]

    @classmethod
    def from_specs(cls, specs: list[ModelSpec], dialect: str | None = None) -> Pipeline:
        """A pipeline from descriptor entries, written in `dialect` unless a model says."""
        return cls(tuple(Model.from_spec(spec, dialect) for spec in specs))

    @classmethod
    def from_dicts(cls, items: list[dict[str, Any]]) -> Pipeline:
        """A pipeline from stored JSON (validated when it was accepted)."""
        return cls(
            tuple(
                Model(**{**item, "unique_key": tuple(item.get("unique_key", ()))}) for item in items
            )
        )

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready form."""
        return [model.to_dict() for model in self.models]

    def digest(self) -> str:
        """A content hash: the same models give the same digest."""
        text = json.dumps(self.to_dicts(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
