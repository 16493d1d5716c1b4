"""The document a data product pushes to the marketplace, validated, with a content digest.

A publication gathers what the product's discovery port shows an administrator: the product
document, every dataset in full, the lineage and the health, plus when it was published.
Validation is strict on the fields the marketplace reads (types are not coerced) and
tolerant of fields it does not know, since products evolve faster than the marketplace.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dataproduct.errors import PayloadTooLargeError, ValidationError

MAX_PUBLICATION_BYTES = 4 * 1024 * 1024
MAX_DATASETS = 500
MAX_COLUMNS = 2000

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
DOMAIN_PATTERN = r"^[a-z0-9][a-z0-9_\-]*(/[a-z0-9][a-z0-9_\-]*)*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ShortText = Annotated[str, Field(max_length=200)]
LongText = Annotated[str, Field(max_length=20_000)]
Tag = Annotated[str, Field(min_length=1, max_length=100)]
Group = Annotated[str, Field(min_length=1, max_length=200)]

# Fields that change while the product itself does not: left out of the digest.
VOLATILE_SOURCE_FIELDS = ("freshness",)


class _Open(BaseModel):
    """A part of the document: known fields checked, unknown ones kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class Owner(_Open):
    """Who answers for the product."""

    name: ShortText = Field(min_length=1)
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)]


class Port(_Open):
    """One port of the product: where it is and how to authenticate."""

    url: ShortText
    auth: ShortText
    scope: ShortText | None = None


class DatasetSummary(_Open):
    """A dataset as the product document lists it."""

    name: Name
    description: LongText = ""
    tags: list[Tag] = []
    version: int = Field(ge=1)


class Visibility(_Open):
    """Who may see the product in the marketplace: members of `groups` (none: everyone)."""

    groups: list[Group] = Field(default=[], max_length=100)


class ProductInfo(_Open):
    """The product document of `GET /discovery`."""

    name: Name
    domain: Annotated[str, Field(pattern=DOMAIN_PATTERN, max_length=300)]
    version: ShortText = Field(min_length=1)
    major: int = Field(ge=0)
    description: LongText = ""
    owner: Owner
    tags: list[Tag] = Field(default=[], max_length=100)
    schedule: ShortText | None = None
    url: ShortText = Field(min_length=1)
    ports: dict[str, Port] = {}
    lineage: ShortText | None = None
    sources: dict[str, dict[str, Any]] = {}
    datasets: list[DatasetSummary] = Field(default=[], max_length=MAX_DATASETS)
    visibility: Visibility | None = None

    @property
    def visible_to(self) -> list[str]:
        """The groups allowed to see the product, sorted ([]: everyone signed in)."""
        return sorted(set(self.visibility.groups)) if self.visibility else []


class Column(_Open):
    """One column of a dataset, with its documentation."""

    name: ShortText = Field(min_length=1)
    type: ShortText = Field(min_length=1)
    required: bool = False
    description: LongText = ""
    classification: ShortText | None = None


class DatasetDocument(_Open):
    """A dataset in full, as `GET /discovery/datasets/{name}` returns it."""

    name: Name
    description: LongText = ""
    tags: list[Tag] = Field(default=[], max_length=100)
    version: int = Field(ge=1)
    row_count: int | None = Field(default=None, ge=0)
    updated_at: datetime | None = None
    columns: list[Column] = Field(default=[], max_length=MAX_COLUMNS)
    sql: Annotated[str, Field(max_length=200_000)] | None = None
    quality_status: ShortText = "unknown"
    quality_results: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    links: dict[str, str] = {}

    @property
    def classifications(self) -> list[str]:
        """The distinct classifications of the columns, sorted."""
        return sorted({c.classification for c in self.columns if c.classification})


class Health(_Open):
    """Whether the product is ready, and what is wrong if not."""

    ready: bool
    problems: list[Any] = []


class Publication(_Open):
    """What a product pushes: product, datasets in full, lineage, health, when."""

    product: ProductInfo
    datasets: dict[str, DatasetDocument] = Field(default={}, max_length=MAX_DATASETS)
    lineage: dict[str, Any] = {}
    health: Health
    published_at: datetime

    @model_validator(mode="after")
    def _dataset_keys_are_names(self) -> Publication:
        for key, dataset in self.datasets.items():
            if key != dataset.name:
                raise ValueError(f"datasets.{key}: the key differs from its name {dataset.name!r}")
        return self


def parse_publication(body: bytes | str | Mapping[str, Any]) -> Publication:
    """Validate a publication; raise `ValidationError` whose `where` is the first bad path.

    Every problem is listed in `details["errors"]` as {"where", "message"}. A body larger
    than `MAX_PUBLICATION_BYTES` raises `PayloadTooLargeError`.
    """
    raw = body if isinstance(body, bytes | str) else json.dumps(body, default=str)
    size = len(raw.encode("utf-8")) if isinstance(raw, str) else len(raw)
    if size > MAX_PUBLICATION_BYTES:
        raise PayloadTooLargeError(
            f"the publication has {size} bytes, more than {MAX_PUBLICATION_BYTES}",
            where="publication",
            limit=MAX_PUBLICATION_BYTES,
        )
    try:
        return Publication.model_validate_json(raw)
    except pydantic.ValidationError as error:
        raise _validation_error(error) from None


def _validation_error(error: pydantic.ValidationError) -> ValidationError:
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in item["loc"]) or "publication"
        message = str(item["msg"])
        moved = re.match(r"Value error, (datasets\.[^:]+): (.*)", message)
        if moved:  # a check across fields names its own path
            where, message = moved.group(1), moved.group(2)
        problems.append({"where": where, "message": message})
    first = problems[0]
    return ValidationError(
        f"invalid publication at {first['where']}: {first['message']}",
        where=first["where"],
        errors=problems,
    )


def publication_digest(publication: Publication) -> str:
    """SHA-256 of the canonical JSON of the publication, volatile fields left out.

    Left out: `published_at` and the freshness of each source (load and attempt times),
    so a product that republishes without a change gets the same digest.
    """
    content = publication.model_dump(mode="json", exclude={"published_at"})
    for source in content["product"].get("sources", {}).values():
        if isinstance(source, dict):
            for field in VOLATILE_SOURCE_FIELDS:
                source.pop(field, None)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
