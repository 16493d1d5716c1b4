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

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Model:
        """A model from its descriptor entry."""
        return cls(spec.name, spec.sql, spec.layer, spec.description)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class Pipeline:
    """A set of models; the planner orders them."""

    models: tuple[Model, ...]

    @classmethod
    def from_specs(cls, specs: list[ModelSpec]) -> Pipeline:
        """A pipeline from descriptor entries."""
        return cls(tuple(Model.from_spec(spec) for spec in specs))

    @classmethod
    def from_dicts(cls, items: list[dict[str, Any]]) -> Pipeline:
        """A pipeline from stored or submitted JSON (already validated)."""
        return cls(tuple(Model(**item) for item in items))

    def to_dicts(self) -> list[dict[str, Any]]:
        """JSON-ready form."""
        return [model.to_dict() for model in self.models]

    def digest(self) -> str:
        """A content hash: the same models give the same digest."""
        text = json.dumps(self.to_dicts(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
