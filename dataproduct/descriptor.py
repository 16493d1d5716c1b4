"""The product descriptor: `dataproduct.yaml`, a pure and validated model of one product.

It is loaded once, validated with precise messages (the file, the path inside it, the
reason) and it is exactly what discovery and the marketplace publish.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlglot import errors as sqlglot_errors
from sqlglot import exp

from dataproduct.cron import Cron, CronError
from dataproduct.errors import DescriptorError
from dataproduct.grants import GrantSpec
from dataproduct.quality_rules import QualityRule, RuleField, duplicate_name

DESCRIPTOR_FILE = "dataproduct.yaml"
PIPELINE_DIR = "pipeline"

SLUG = r"^[a-z][a-z0-9-]{0,62}$"
IDENTIFIER = r"^[a-z_][a-z0-9_]{0,62}$"
SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"

Layer = Literal["staging", "output"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OwnerSpec(_Strict):
    """Who answers for the product."""

    name: str = Field(min_length=1)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")


class ColumnSpec(_Strict):
    """One documented column of a dataset: its contract with consumers."""

    type: str
    required: bool = False
    description: str = ""
    classification: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        return normalize_type(value)


class DatasetSpec(_Strict):
    """A documented output dataset."""

    description: str = ""
    tags: list[str] = []
    columns: dict[str, ColumnSpec] = {}
    quality: list[RuleField] = []

    @field_validator("columns")
    @classmethod
    def _column_names(cls, value: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        for name in value:
            check_identifier(name, "column name")
        return value

    @field_validator("quality")
    @classmethod
    def _unique_rule_names(cls, value: list[QualityRule]) -> list[QualityRule]:
        duplicate = duplicate_name(value)
        if duplicate is not None:
            index, name = duplicate
            reason = f"another rule is named '{name}'; give this one a name"
            error = PydanticCustomError("value_error", "{reason}", {"reason": reason})
            details = InitErrorDetails(type=error, loc=(index,), input=value[index].to_raw())
            raise PydanticValidationError.from_exception_data("quality", [details])
        return value


Materialization = Literal["table", "view", "incremental"]


class ModelSpec(_Strict):
    """One SQL model of the pipeline: a single SELECT that builds a table (or a view).

    `incremental` models append new rows (those past the target's high-water mark of
    `cursor`, when given) or merge them on `unique_key`. `dialect` names the SQL dialect
    the model is written in; it is transpiled to DuckDB.
    """

    name: str = Field(pattern=IDENTIFIER)
    layer: Layer = "output"
    sql: str = Field(min_length=1)
    description: str = ""
    materialized: Materialization = "table"
    unique_key: list[str] = []
    cursor: str | None = None
    dialect: str | None = None

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        return check_dialect(value) if value else value

    @model_validator(mode="after")
    def _materialization(self) -> ModelSpec:
        if self.materialized == "view" and self.layer == "output":
            raise ValueError(
                "output datasets are published tables; a view belongs in the staging layer"
            )
        if self.materialized != "incremental" and (self.unique_key or self.cursor):
            raise ValueError("unique_key and cursor apply to incremental models only")
        return self


class SourceConfig(BaseModel):
    """A source as written: its `type` picks the connector that validates the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)

    def options(self) -> dict[str, Any]:
        """Every field but `type`, for the connector's own spec."""
        return dict(self.model_extra or {})


class MarketplaceSpec(_Strict):
    """How the product appears in the marketplace: who may see it there (groups; none means
    everyone signed in) and which groups, besides the owner, approve access requests."""

    visible_to: list[str] = []
    approvers: list[str] = []


class ProductDescriptor(_Strict):
    """Identity, ownership, sources, pipeline, datasets and access of one data product."""

    name: str = Field(pattern=SLUG)
    domain: str
    version: str = Field(pattern=SEMVER)
    description: str = ""
    owner: OwnerSpec
    tags: list[str] = []
    sources: dict[str, SourceConfig] = {}
    pipeline: list[ModelSpec] = []
    dialect: str | None = None
    datasets: dict[str, DatasetSpec] = {}
    access: list[GrantSpec] = []
    schedule: str | None = None
    marketplace: MarketplaceSpec = MarketplaceSpec()

    @field_validator("domain")
    @classmethod
    def _domain_path(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not all(re.match(SLUG, part) for part in parts):
            raise ValueError("must be a business-area path of lowercase slugs, like 'sales/europe'")
        return "/".join(parts)

    @field_validator("dialect")
    @classmethod
    def _pipeline_dialect(cls, value: str | None) -> str | None:
        return check_dialect(value) if value else value

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            check_identifier(name, "source name")
        return value

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, value: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        for name in value:
            check_identifier(name, "dataset name")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            Cron.parse(value)
        except CronError as error:
            raise ValueError(f"{error} (a cron expression, like '0 * * * *')") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProductDescriptor:
        """Cross-field checks, each reported at the exact path of the offending entry."""
        problems: list[InitErrorDetails] = []

        def problem(loc: tuple[str | int, ...], value: Any, message: str) -> None:
            error = PydanticCustomError("value_error", "{reason}", {"reason": message})
            problems.append(InitErrorDetails(type=error, loc=loc, input=value))

        names = [model.name for model in self.pipeline]
        for index, name in enumerate(names):
            if name in names[:index]:
                problem(("pipeline", index, "name"), name, f"another model is named '{name}'")
            elif name in self.sources:
                problem(("pipeline", index, "name"), name, f"a source is named '{name}' too")
        for index, grant in enumerate(self.access):
            if grant.dataset is not None and grant.dataset not in {*self.datasets, *names}:
                problem(
                    ("access", index, "dataset"),
                    grant.dataset,
                    f"unknown dataset '{grant.dataset}'",
                )
            if grant.source is not None and grant.source not in self.sources:
                problem(
                    ("access", index, "source"), grant.source, f"unknown source '{grant.source}'"
                )
        if problems:
            raise PydanticValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @property
    def major(self) -> int:
        """The major version: a new one means a breaking change for consumers."""
        return int(self.version.split(".", 1)[0])


def check_dialect(name: str) -> str:
    """A SQL dialect sqlglot can read; ValueError naming the known ones otherwise."""
    from sqlglot.dialects.dialect import Dialect, Dialects

    try:
        Dialect.get_or_raise(name)
    except ValueError:
        known = ", ".join(sorted(d.value for d in Dialects if d.value))
        raise ValueError(f"unknown SQL dialect '{name}' (known: {known})") from None
    return name.lower()


def normalize_type(type_name: str) -> str:
    """The canonical DuckDB spelling of a SQL type; ValueError if it is not a type."""
    try:
        built = exp.DataType.build(type_name, dialect="duckdb")
    except (sqlglot_errors.ParseError, ValueError) as error:
        raise ValueError(f"'{type_name}' is not a SQL type") from error
    return built.sql("duckdb")


def check_identifier(name: str, what: str) -> None:
    if not re.match(IDENTIFIER, name):
        raise ValueError(
            f"{what} '{name}' must be lowercase letters, digits and underscores, "
            "starting with a letter"
        )


def load_descriptor(product_dir: Path) -> ProductDescriptor:
    """Read and validate `DIR/dataproduct.yaml` and `DIR/pipeline/*.sql`.

    Raises DescriptorError naming the file, the path inside it and every reason.
    """
    path = product_dir / DESCRIPTOR_FILE
    if not path.is_file():
        raise DescriptorError(f"no {DESCRIPTOR_FILE} in {product_dir}", where=str(path))
    raw = _read_yaml(path)
    sql_files: dict[int, Path] = {}
    raw["pipeline"] = _merge_sql_files(product_dir, raw.get("pipeline"), sql_files)
    try:
        return ProductDescriptor.model_validate(raw)
    except PydanticValidationError as error:
        raise _descriptor_error(path, error, sql_files) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise DescriptorError(f"not valid YAML: {error.problem}", where=where) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DescriptorError(f"not valid YAML: {error}", where=str(path)) from None
    if not isinstance(data, dict):
        raise DescriptorError("the descriptor must be a mapping of fields", where=str(path))
    return data


def _merge_sql_files(product_dir: Path, declared: Any, sql_files: dict[int, Path]) -> Any:
    """Models from `pipeline/*.sql`: the file stem is the name; leading comments like
    `-- layer: staging` or `-- materialized: incremental` set the model's other fields.

    `sql_files` is filled with the index in the pipeline of each model read from a file.
    """
    sql_dir = product_dir / PIPELINE_DIR
    if not sql_dir.is_dir():
        return declared if declared is not None else []
    if declared is not None and not isinstance(declared, list):
        return declared  # let validation report the wrong shape
    models = list(declared or [])
    declared_names = {m.get("name") for m in models if isinstance(m, dict)}
    for sql_file in sorted(sql_dir.glob("*.sql")):
        if sql_file.stem in declared_names:
            continue
        sql = sql_file.read_text(encoding="utf-8")
        sql_files[len(models)] = sql_file
        models.append({"name": sql_file.stem, **_header_settings(sql), "sql": sql})
    return models


_HEADER = re.compile(r"^\s*--\s*(layer|materialized|unique_key|cursor|dialect)\s*:\s*(.+?)\s*$")


def _header_settings(sql: str) -> dict[str, Any]:
    """Settings from the leading `-- key: value` comments of a SQL file."""
    found: dict[str, Any] = {}
    for line in sql.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("--"):
            break
        match = _HEADER.match(line)
        if match:
            key, value = match.groups()
            found[key] = [v.strip() for v in value.split(",")] if key == "unique_key" else value
    return found


def _descriptor_error(
    path: Path, error: PydanticValidationError, sql_files: dict[int, Path]
) -> DescriptorError:
    problems: list[dict[str, str]] = []
    for item in error.errors():
        loc = item["loc"]
        file = path
        if len(loc) > 1 and loc[0] == "pipeline" and loc[1] in sql_files:
            file, loc = sql_files[int(loc[1])], loc[2:]  # a model of pipeline/*.sql
        location = ".".join(str(part) for part in loc) or "(top level)"
        reason = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            reason = "unknown field"
        problem = {"path": location, "message": reason}
        if file != path:
            problem["file"] = str(file)
        problems.append(problem)
    first = problems[0]
    summary = f"{first['path']}: {first['message']}"
    if len(problems) > 1:
        summary += f" (and {len(problems) - 1} more)"
    where = f"{first.get('file', path)}: {first['path']}"
    return DescriptorError(f"invalid descriptor: {summary}", where=where, problems=problems)
