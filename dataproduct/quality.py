"""Data-quality checks of built tables, and their results in the meta layer.

`run_checks` checks one table against its rules with SQL built as sqlglot expressions.
Work is bounded: failing rows are counted with `count(*)` and at most a few are sampled
with `LIMIT`. A rule that cannot be checked (a missing column, a value that is not of the
column's type, an engine error) gives a result with status `error`, never an exception.

Checks usually run inside a run's transaction, where any engine error aborts the whole
transaction. Queries are bound before they run (a binding error does not abort), literals
are tried against the column's type first, so only a custom SQL rule failing at runtime
can abort it; its result and every later one then say so (`transaction_aborted`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb
from sqlglot import exp
from sqlglot.errors import ParseError

from dataproduct.catalog import table_columns
from dataproduct.errors import first_line
from dataproduct.quality_rules import (
    AcceptedValuesRule,
    FreshnessRule,
    NotNullRule,
    QualityRule,
    RangeRule,
    RowCountRule,
    RuleError,
    SqlRule,
    UniqueRule,
    guard_rule_sql,
    parse_rule,
    parse_rules,
    rules_to_raw,
)
from dataproduct.quality_store import (
    CheckResult,
    QualityGateError,
    RuleSet,
    Status,
    blocking,
    latest_results,
    raise_for_blocking,
    record_results,
    results_for_run,
    rules_for,
    save_rules,
    stored_rule_sets,
)

__all__ = [
    "SAMPLE_ROWS",
    "CheckResult",
    "QualityGateError",
    "QualityRule",
    "RuleError",
    "RuleSet",
    "blocking",
    "json_safe",
    "latest_results",
    "parse_rule",
    "parse_rules",
    "raise_for_blocking",
    "record_results",
    "results_for_run",
    "rules_for",
    "rules_to_raw",
    "run_checks",
    "save_rules",
    "stored_rule_sets",
]

SAMPLE_ROWS = 5
_MAX_TEXT = 1000
_ABORTED = "not checked: an earlier check's engine error aborted the transaction"


@dataclass(frozen=True)
class _Table:
    """The checked table: where it is and its columns (lower-case name to name and type)."""

    cursor: duckdb.DuckDBPyConnection
    layer: str
    name: str
    columns: dict[str, tuple[str, str]]

    def ref(self) -> exp.Table:
        return exp.table_(self.name, db=self.layer, quoted=True)

    def column(self, name: str) -> exp.Column:
        return exp.column(self.columns[name.lower()][0], quoted=True)

    def type_of(self, name: str) -> str:
        return self.columns[name.lower()][1]


@dataclass(frozen=True)
class _Outcome:
    status: Status
    sql: str
    failing_rows: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None


def run_checks(
    cursor: duckdb.DuckDBPyConnection,
    layer: str,
    dataset: str,
    rules: Sequence[QualityRule],
    *,
    run_id: str,
) -> list[CheckResult]:
    """Check `layer.dataset` against every rule, in order; never raises for a bad rule.

    A cancel (DuckDB interrupt) is the one error that propagates.
    """
    columns = table_columns(cursor, layer, dataset)
    table = _Table(
        cursor, layer, dataset, {c["name"].lower(): (c["name"], c["type"]) for c in columns}
    )
    results: list[CheckResult] = []
    aborted = False
    for rule in rules:
        started, checked_at = time.perf_counter(), datetime.now(UTC)
        if aborted:
            outcome = _Outcome("error", "", message=_ABORTED)
        else:
            outcome = _check_one(table, rule, has_table=bool(columns))
            aborted = outcome.status == "error" and _transaction_aborted(cursor)
        results.append(
            CheckResult(
                run_id=run_id,
                dataset=dataset,
                rule=rule.rule_name,
                kind=rule.kind,
                severity=rule.severity,
                status=outcome.status,
                failing_rows=outcome.failing_rows,
                samples=outcome.samples,
                sql=outcome.sql,
                message=outcome.message,
                seconds=time.perf_counter() - started,
                checked_at=checked_at,
                transaction_aborted=aborted,
            )
        )
    return results


def _check_one(table: _Table, rule: QualityRule, *, has_table: bool) -> _Outcome:
    if not has_table and not isinstance(rule, SqlRule):
        return _Outcome("error", "", message=f"table {table.layer}.{table.name} does not exist")
    missing = [c for c in rule.columns() if c.lower() not in table.columns]
    if missing:
        have = ", ".join(name for name, _ in table.columns.values())
        message = (
            f"column '{missing[0]}' does not exist in {table.layer}.{table.name} (it has: {have})"
        )
        return _Outcome("error", "", message=message)
    try:
        return _CHECKS[type(rule)](table, rule)
    except duckdb.InterruptException:
        raise
    except duckdb.Error as error:
        sql = rule.sql if isinstance(rule, SqlRule) else ""
        return _Outcome("error", sql, message=first_line(error))
    except _Unchecked as problem:
        return _Outcome("error", problem.sql, message=problem.message)


class _Unchecked(Exception):
    """A rule that cannot be checked on this table (raised before any query runs)."""

    def __init__(self, message: str, sql: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.sql = sql


def _check_not_null(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, NotNullRule)
    return _failing(table, _select_rows(table, table.column(rule.column).is_(exp.null())))


def _check_accepted_values(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, AcceptedValuesRule)
    values = _typed_literals(table, rule.column, list(rule.values))
    where = exp.not_(exp.In(this=table.column(rule.column), expressions=values))
    return _failing(table, _select_rows(table, where))


def _check_range(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, RangeRule)
    bounds = {k: v for k, v in (("min", rule.min), ("max", rule.max)) if v is not None}
    typed = dict(
        zip(bounds, _typed_literals(table, rule.column, list(bounds.values())), strict=True)
    )
    outside: list[exp.Expr] = []
    if "min" in typed:
        outside.append(exp.LT(this=table.column(rule.column), expression=typed["min"]))
    if "max" in typed:
        outside.append(exp.GT(this=table.column(rule.column), expression=typed["max"]))
    return _failing(table, _select_rows(table, exp.or_(*outside)))


def _check_unique(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, UniqueRule)
    key = [table.column(c) for c in rule.columns()]
    present = exp.and_(*[exp.not_(c.copy().is_(exp.null())) for c in key])
    duplicates = (
        exp.select(*key, exp.alias_(exp.Count(this=exp.Star()), "duplicate_rows", quoted=True))
        .from_(table.ref())
        .where(present)
        .group_by(*[c.copy() for c in key])
        .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1)))
    )
    total = exp.func(
        "coalesce", exp.Sum(this=exp.column("duplicate_rows", quoted=True)), exp.Literal.number(0)
    )
    counted = _value(table.cursor, exp.select(total).from_(duplicates.subquery("duplicates")))
    samples: list[dict[str, Any]] = []
    if counted:
        ordered = (
            exp.select("*")
            .from_(duplicates.subquery("duplicates"))
            .order_by(exp.Ordered(this=exp.column("duplicate_rows", quoted=True), desc=True))
        )
        samples = _dicts(table.cursor, ordered.limit(SAMPLE_ROWS))
    sql = duplicates.sql("duckdb")
    return _Outcome("fail" if counted else "pass", sql, int(counted or 0), samples)


def _check_row_count(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, RowCountRule)
    query = exp.select(exp.Count(this=exp.Star())).from_(table.ref())
    rows = int(_value(table.cursor, query))
    message = f"{rows} rows"
    if rule.min is not None and rows < rule.min:
        return _Outcome(
            "fail", query.sql("duckdb"), message=f"{message}, expected at least {rule.min}"
        )
    if rule.max is not None and rows > rule.max:
        return _Outcome(
            "fail", query.sql("duckdb"), message=f"{message}, expected at most {rule.max}"
        )
    return _Outcome("pass", query.sql("duckdb"), message=message)


def _check_freshness(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, FreshnessRule)
    column_type = table.type_of(rule.column).upper()
    query = exp.select(exp.Max(this=table.column(rule.column))).from_(table.ref())
    sql = query.sql("duckdb")
    if column_type != "DATE" and not column_type.startswith("TIMESTAMP"):
        raise _Unchecked(f"column '{rule.column}' is {column_type}, not a DATE or TIMESTAMP", sql)
    newest = _value(table.cursor, query)
    if newest is None:
        return _Outcome("fail", sql, message=f"column '{rule.column}' has no value")
    if not isinstance(newest, datetime):  # a DATE counts from midnight UTC
        newest = datetime.combine(newest, datetime.min.time())
    newest = newest if newest.tzinfo else newest.replace(tzinfo=UTC)
    age = datetime.now(UTC) - newest
    message = (
        f"newest {rule.column} is {newest.isoformat()}, {_age(age)} old (allowed: {rule.max_age})"
    )
    status: Status = "fail" if age.total_seconds() > rule.max_age_seconds else "pass"
    return _Outcome(status, sql, message=message)


def _check_sql(table: _Table, rule: QualityRule) -> _Outcome:
    assert isinstance(rule, SqlRule)
    try:
        tree = guard_rule_sql(rule.sql)
    except RuleError as error:
        raise _Unchecked(error.message, rule.sql) from None
    return _failing(table, tree)


_CHECKS: dict[type[QualityRule], Callable[[_Table, QualityRule], _Outcome]] = {
    NotNullRule: _check_not_null,
    UniqueRule: _check_unique,
    AcceptedValuesRule: _check_accepted_values,
    RangeRule: _check_range,
    RowCountRule: _check_row_count,
    FreshnessRule: _check_freshness,
    SqlRule: _check_sql,
}


def _select_rows(table: _Table, where: exp.Expr) -> exp.Select:
    return exp.select("*").from_(table.ref()).where(where)


def _failing(table: _Table, query: exp.Query) -> _Outcome:
    """Count the rows a query selects and sample a few of them."""
    counted = int(
        _value(
            table.cursor, exp.select(exp.Count(this=exp.Star())).from_(query.subquery("failing"))
        )
    )
    samples: list[dict[str, Any]] = []
    if counted:
        samples = _dicts(
            table.cursor, exp.select("*").from_(query.subquery("failing")).limit(SAMPLE_ROWS)
        )
    return _Outcome("fail" if counted else "pass", query.sql("duckdb"), counted, samples)


def _typed_literals(table: _Table, column: str, values: list[Any]) -> list[exp.Expr]:
    """Each value as a literal of the column's type; _Unchecked if one does not convert.

    The conversion is tried first (TRY_CAST), so a bad value never aborts the transaction.
    """
    column_type = table.type_of(column)
    try:
        target = exp.DataType.build(column_type, dialect="duckdb")
    except (ParseError, ValueError):
        raise _Unchecked(
            f"cannot compare values with column '{column}' of type {column_type}"
        ) from None
    literals = [exp.convert(v) for v in values]
    probe = exp.select(
        *[exp.TryCast(this=lit.copy(), to=target.copy()).is_(exp.null()) for lit in literals]
    )
    failed = _rows(table.cursor, probe)[0]
    for value, did_fail in zip(values, failed, strict=True):
        if did_fail:
            raise _Unchecked(f"{value!r} is not a valid {column_type} for column '{column}'")
    if column_type.upper() == "VARCHAR" and all(isinstance(v, str) for v in values):
        return literals
    return [exp.cast(lit, target.copy()) for lit in literals]


def _rows(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> list[tuple[Any, ...]]:
    """Run a query, binding it first: a binding error does not abort the transaction."""
    relation = cursor.sql(query.sql("duckdb"))
    rows: list[tuple[Any, ...]] = relation.fetchall()
    return rows


def _value(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> Any:
    rows = _rows(cursor, query)
    return rows[0][0] if rows else None


def _dicts(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> list[dict[str, Any]]:
    relation = cursor.sql(query.sql("duckdb"))
    names = list(relation.columns)
    return [
        {name: json_safe(value) for name, value in zip(names, row, strict=True)}
        for row in relation.fetchall()
    ]


def json_safe(value: Any) -> Any:
    """A value JSON can carry: dates as ISO text, decimals as numbers, long text cut short."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        number = float(value)
        return number if Decimal(repr(number)) == value else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    return json_safe(str(value))


def _transaction_aborted(cursor: duckdb.DuckDBPyConnection) -> bool:
    """Whether an error left the cursor's transaction unusable (DuckDB aborts it)."""
    try:
        cursor.execute("SELECT 1").fetchall()
    except duckdb.Error:
        return True
    return False


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 0:
        return "0s (in the future)"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return " ".join(parts[:2]) or "0s"
