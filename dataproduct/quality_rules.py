"""Quality rules as written in the descriptor and sent to the control port.

Each rule is a one-key mapping naming its kind, with optional `name` and `severity`:

    {not_null: customer_id}
    {unique: [customer_id, day]}                     one or several columns
    {accepted_values: {column: status, values: [paid, shipped]}}
    {range: {column: amount, min: 0, max: 100000}}    either bound optional
    {row_count: {min: 1, max: 1000000}}
    {freshness: {column: updated_at, max_age: 24h}}   s, m, h or d
    {sql: "SELECT * FROM output.x WHERE amount < 0", name: no_negative}

A custom SQL rule selects the failing rows; it is guarded like a pipeline model. Rules
parse into small frozen pydantic models and dump back to exactly the form they were
written in, so the descriptor round-trips through `model_dump`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import date
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from dataproduct.sqlguard import READABLE_LAYERS, GuardContext, SqlGuard, Violation

Severity = Literal["error", "warn"]
_NAME = re.compile(r"^[\w.-]{1,100}$")
_COMMON = ("name", "severity")
_AGE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _column(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a column name, not {_type_name(value)}")
    if not value.strip() or len(value) > 255:
        raise ValueError("must be a column name of 1 to 255 characters")
    return value


def _key(value: Any) -> Any:
    if isinstance(value, str):
        return _column(value)
    if not isinstance(value, list):
        raise ValueError(f"must be a column or a list of columns, not {_type_name(value)}")
    if not value:
        raise ValueError("list at least one column")
    for column in value:
        _column(column)
    if len(set(value)) != len(value):
        raise ValueError("a column is listed twice")
    return value


def _scalar(value: Any) -> Any:
    """A literal a column is compared with; YAML dates become ISO text DuckDB casts."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number, a string or a date, not {_type_name(value)}")
    return value


def _value(value: Any) -> Any:
    return value if isinstance(value, bool) else _scalar(value)


def _rule_name(value: Any) -> Any:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError("use up to 100 letters, digits, '_', '.' or '-'")
    return value


Column = Annotated[str, BeforeValidator(_column)]
Key = Annotated[str | list[str], BeforeValidator(_key)]
Bound = Annotated[int | float | str, BeforeValidator(_scalar)]
Value = Annotated[bool | int | float | str, BeforeValidator(_value)]
RuleName = Annotated[str, BeforeValidator(_rule_name)]


class RuleError(ValueError):
    """A rule that cannot be accepted; `violations` when the guard refused its SQL."""

    def __init__(
        self, reason: str, violations: Sequence[Violation] = (), index: int | None = None
    ) -> None:
        message = reason if index is None else f"{index}: {reason}"
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.index = index
        self.violations = tuple(violations)


class QualityRule(BaseModel):
    """What every rule has: an optional name and a severity (`error` blocks publishing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]
    scalar_field: ClassVar[str | None] = None  # the field a non-mapping value fills

    name: RuleName | None = None
    severity: Severity = "error"

    @property
    def rule_name(self) -> str:
        """The name results are stored under: the given one, or one derived from the rule."""
        return self.name or self.default_name()

    def default_name(self) -> str:
        """A stable name derived from the rule's content."""
        return self.kind

    def columns(self) -> tuple[str, ...]:
        """The columns of the checked table this rule needs."""
        return ()

    def value(self) -> Any:
        """The rule's value in the compact form (what follows the kind key)."""
        return self.model_dump(exclude={"name", "severity"}, exclude_none=True)

    def to_raw(self) -> dict[str, Any]:
        """The compact form, exactly as it would be written in the descriptor."""
        raw: dict[str, Any] = {self.kind: self.value()}
        if self.name is not None:
            raw["name"] = self.name
        if self.severity != "error":
            raw["severity"] = self.severity
        return raw


class NotNullRule(QualityRule):
    """No row has a null in `column`."""

    kind: ClassVar[str] = "not_null"
    scalar_field: ClassVar[str | None] = "column"
    column: Column

    def default_name(self) -> str:
        return f"not_null_{self.column}"

    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def value(self) -> Any:
        return self.column


class UniqueRule(QualityRule):
    """No two rows share the same key (rows with a null in the key are not compared)."""

    kind: ClassVar[str] = "unique"
    scalar_field: ClassVar[str | None] = "key"
    key: Key

    def default_name(self) -> str:
        return "unique_" + "_".join(self.columns())

    def columns(self) -> tuple[str, ...]:
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    def value(self) -> Any:
        return self.key


class AcceptedValuesRule(QualityRule):
    """Every non-null value of `column` is one of `values`."""

    kind: ClassVar[str] = "accepted_values"
    column: Column
    values: Annotated[list[Value], Field(min_length=1)]

    def default_name(self) -> str:
        return f"accepted_values_{self.column}"

    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class RangeRule(QualityRule):
    """Every non-null value of `column` lies within [min, max]; either bound may be left out."""

    kind: ClassVar[str] = "range"
    column: Column
    min: Bound | None = None
    max: Bound | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        numbers = (int, float)
        if isinstance(self.min, numbers) and isinstance(self.max, numbers) and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def default_name(self) -> str:
        return f"range_{self.column}"

    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class RowCountRule(QualityRule):
    """The table has between `min` and `max` rows; either bound may be left out."""

    kind: ClassVar[str] = "row_count"
    min: Annotated[StrictInt, Field(ge=0)] | None = None
    max: Annotated[StrictInt, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class FreshnessRule(QualityRule):
    """The newest value of a DATE or TIMESTAMP `column` is at most `max_age` old."""

    kind: ClassVar[str] = "freshness"
    column: Column
    max_age: str

    @field_validator("max_age")
    @classmethod
    def _age(cls, value: str) -> str:
        found = _AGE.match(value)
        if not found or int(found.group(1)) == 0:
            raise ValueError(f"'{value}' is not an age like 30m, 24h or 7d (units s, m, h, d)")
        return value

    @property
    def max_age_seconds(self) -> int:
        """The allowed age in seconds."""
        found = _AGE.match(self.max_age)
        assert found is not None  # validated
        return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]

    def default_name(self) -> str:
        return f"freshness_{self.column}"

    def columns(self) -> tuple[str, ...]:
        return (self.column,)


class SqlRule(QualityRule):
    """A custom assertion: a guarded query (input, staging, output) selecting failing rows."""

    kind: ClassVar[str] = "sql"
    scalar_field: ClassVar[str | None] = "sql"
    sql: Annotated[str, Field(min_length=1, max_length=100_000)]

    def default_name(self) -> str:
        return "sql_" + hashlib.sha256(self.sql.encode()).hexdigest()[:8]

    def value(self) -> Any:
        return self.sql


RULE_KINDS: dict[str, type[QualityRule]] = {
    cls.kind: cls
    for cls in (
        NotNullRule,
        UniqueRule,
        AcceptedValuesRule,
        RangeRule,
        RowCountRule,
        FreshnessRule,
        SqlRule,
    )
}


def guard_rule_sql(sql: str) -> Any:
    """The parsed query of a custom SQL rule, or RuleError naming guard rule, line and column."""
    result = SqlGuard().check(sql, GuardContext(readable_layers=READABLE_LAYERS))
    if not result.ok:
        first = result.violations[0] if result.violations else None
        reason = str(first) if first else "the statement was refused"
        raise RuleError(f"sql: refused by the guard: {reason}", result.violations)
    return result.tree


def parse_rule(raw: Any) -> QualityRule:
    """One rule from its compact form; RuleError (a ValueError) with a precise message."""
    if isinstance(raw, QualityRule):
        return raw
    if not isinstance(raw, dict):
        raise RuleError(f"a rule is a mapping like {{not_null: column}}, not {_type_name(raw)}")
    kinds = [key for key in raw if key in RULE_KINDS]
    unknown = [str(key) for key in raw if key not in RULE_KINDS and key not in _COMMON]
    if unknown:
        raise RuleError(f"unknown field '{unknown[0]}'; a rule is one of: {', '.join(RULE_KINDS)}")
    if len(kinds) != 1:
        found = " and ".join(kinds) if kinds else "none"
        raise RuleError(f"a rule has exactly one kind ({', '.join(RULE_KINDS)}); found {found}")
    kind = kinds[0]
    rule_class = RULE_KINDS[kind]
    fields = _fields(rule_class, kind, raw[kind])
    common = {key: raw[key] for key in _COMMON if key in raw}
    try:
        rule = rule_class.model_validate({**fields, **common})
    except PydanticValidationError as error:
        raise RuleError(_first_problem(rule_class, kind, error)) from None
    if isinstance(rule, SqlRule):
        guard_rule_sql(rule.sql)
    return rule


def _fields(rule_class: type[QualityRule], kind: str, value: Any) -> dict[str, Any]:
    """The model's input from the value after the kind key."""
    if rule_class.scalar_field is not None:
        return {rule_class.scalar_field: value}
    if not isinstance(value, dict):
        example = "{column: amount, min: 0}" if kind == "range" else "{...}"
        raise RuleError(f"{kind}: must be a mapping like {example}, not {_type_name(value)}")
    for key in _COMMON:
        if key in value:
            raise RuleError(f"{kind}.{key}: put '{key}' beside the rule, not inside it")
    return dict(value)


def _first_problem(rule_class: type[QualityRule], kind: str, error: PydanticValidationError) -> str:
    item = error.errors()[0]
    loc = [str(part) for part in item["loc"]]
    if loc and loc[0] in _COMMON:
        path = ".".join(loc)
    elif rule_class.scalar_field is not None:
        path = ".".join([kind, *loc[1:]])
    else:
        path = ".".join([kind, *loc])
    message = item["msg"].removeprefix("Value error, ")
    if item["type"] == "extra_forbidden":
        message = "unknown field"
    elif item["type"] == "missing":
        message = "is required"
    return f"{path}: {message}"


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a mapping", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def parse_rules(raw: Any) -> list[QualityRule]:
    """A list of rules; RuleError prefixed with the index of the first bad one (`2: ...`).

    Names must be unique in the list: results are kept per dataset and rule name.
    """
    if not isinstance(raw, list):
        raise RuleError(f"rules are a list, not {_type_name(raw)}")
    rules: list[QualityRule] = []
    for index, item in enumerate(raw):
        try:
            rules.append(parse_rule(item))
        except RuleError as error:
            raise RuleError(error.reason, error.violations, index) from None
    duplicate = duplicate_name(rules)
    if duplicate is not None:
        index, name = duplicate
        raise RuleError(f"another rule is named '{name}'; give this one a name", index=index)
    return rules


def duplicate_name(rules: Sequence[QualityRule]) -> tuple[int, str] | None:
    """The index and name of the first rule whose name an earlier rule already has."""
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.rule_name in seen:
            return index, rule.rule_name
        seen.add(rule.rule_name)
    return None


def rules_to_raw(rules: Sequence[QualityRule]) -> list[dict[str, Any]]:
    """The compact form of each rule."""
    return [rule.to_raw() for rule in rules]


RuleField = Annotated[
    QualityRule,
    PlainValidator(parse_rule),
    PlainSerializer(lambda rule: rule.to_raw(), return_type=dict[str, Any]),
]
"""A rule as a pydantic field: validated from, and dumped to, the compact form."""
