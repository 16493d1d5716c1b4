"""The quality rules of a dataset as ODCS (v3.0.2) quality checks and SLA properties.

A rule ODCS names a metric for becomes a `library` check; the others become a `sql` check
whose query counts the failing rows (or measures the age) in `output.<dataset>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from dataproduct.marketplace.exports.addresses import Document
from dataproduct.marketplace.exports.odps import custom_properties
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
    parse_rule,
)

Check = dict[str, Any]


def quality_parts(dataset: Document) -> tuple[list[Any], list[Document]]:
    """The rules and latest results, whether `quality` is the rule list or a mapping."""
    quality = dataset.get("quality")
    if isinstance(quality, Mapping):
        return list(quality.get("rules") or []), list(quality.get("results") or [])
    return list(quality or []), list(dataset.get("quality_results") or [])


def parse_known(raw: Any) -> QualityRule | Any:
    """A typed rule, or the raw value when this marketplace does not know the rule."""
    try:
        return parse_rule(raw)
    except RuleError:
        return raw


def grouped_checks(
    rules: Sequence[Any], results: Sequence[Document], table: exp.Table
) -> tuple[dict[str, list[Check]], list[Check]]:
    """The checks of the rules by the column they check, and the table-level ones.

    A check carries its rule's latest result as custom properties when there is one.
    """
    by_rule = {r.get("rule"): r for r in results}
    column_checks: dict[str, list[Check]] = {}
    table_checks: list[Check] = []
    for rule in rules:
        entry = _quality_entry(rule, table)
        if isinstance(rule, QualityRule) and rule.rule_name in by_rule:
            entry["customProperties"] = _result_properties(by_rule[rule.rule_name])
        column = _single_column(rule)
        if column is None:
            table_checks.append(entry)
        else:
            column_checks.setdefault(column, []).append(entry)
    return column_checks, table_checks


def unique_columns(rules: Sequence[Any]) -> set[str]:
    """The columns a single-column uniqueness rule declares unique."""
    return {r.key for r in rules if isinstance(r, UniqueRule) and isinstance(r.key, str)}


def freshness_slas(dataset: str, rules: Sequence[Any]) -> list[dict[str, Any]]:
    """One ODCS `latency` SLA property per freshness rule."""
    return [_freshness_sla(dataset, r) for r in rules if isinstance(r, FreshnessRule)]


def _single_column(rule: Any) -> str | None:
    """The column a column-level rule checks; None for table-level rules."""
    if isinstance(rule, NotNullRule | AcceptedValuesRule | RangeRule):
        return rule.column
    if isinstance(rule, UniqueRule) and isinstance(rule.key, str):
        return rule.key
    return None


def _quality_entry(rule: Any, table: exp.Table) -> Check:
    """One ODCS quality check (library where ODCS names the metric, else SQL)."""
    if not isinstance(rule, QualityRule):
        return {"type": "text", "description": f"Rule not known to the marketplace: {rule}"}
    entry: Check = {
        "name": rule.rule_name,
        "severity": "error" if rule.severity == "error" else "warning",
        **_check(rule, table),
    }
    return entry


def _check(rule: QualityRule, table: exp.Table) -> Check:
    if isinstance(rule, NotNullRule):
        return _library("nullValues", "completeness", mustBe=0)
    if isinstance(rule, UniqueRule) and isinstance(rule.key, str):
        return _library("duplicateCount", "uniqueness", mustBe=0)
    if isinstance(rule, AcceptedValuesRule):
        return {**_library("validValues", "conformity"), "validValues": list(rule.values)}
    if isinstance(rule, RowCountRule):
        return _library("rowCount", "completeness", **_bounds(rule.min, rule.max))
    if isinstance(rule, UniqueRule):
        return _sql(_duplicate_keys(table, list(rule.columns())), "uniqueness", mustBe=0)
    if isinstance(rule, RangeRule):
        return _sql(_out_of_range(table, rule), "accuracy", mustBe=0)
    if isinstance(rule, FreshnessRule):
        limit = {"mustBeLessOrEqualTo": rule.max_age_seconds}
        return {**_sql(_age_seconds(table, rule.column), "timeliness", **limit), "unit": "seconds"}
    assert isinstance(rule, SqlRule)
    failing = exp.select(exp.Count(this=exp.Star())).from_(
        exp.maybe_parse(rule.sql, dialect="duckdb").subquery("failing")
    )
    return _sql(failing, "accuracy", mustBe=0)


def _library(metric: str, dimension: str, **bounds: Any) -> Check:
    return {"type": "library", "rule": metric, "dimension": dimension, **bounds}


def _sql(query: exp.Expression, dimension: str, **bounds: Any) -> Check:
    return {"type": "sql", "query": query.sql("duckdb"), "dimension": dimension, **bounds}


def _bounds(low: int | None, high: int | None) -> dict[str, Any]:
    if low is not None and high is not None:
        return {"mustBe": low} if low == high else {"mustBeBetween": [low, high]}
    if low is not None:
        return {"mustBeGreaterOrEqualTo": low}
    return {"mustBeLessOrEqualTo": high}


def _count_where(table: exp.Table, condition: exp.Expr) -> exp.Select:
    return exp.select(exp.Count(this=exp.Star())).from_(table.copy()).where(condition)


def _out_of_range(table: exp.Table, rule: RangeRule) -> exp.Select:
    column = exp.column(rule.column, quoted=True)
    outside: list[exp.Expression] = []
    if rule.min is not None:
        outside.append(exp.LT(this=column.copy(), expression=exp.convert(rule.min)))
    if rule.max is not None:
        outside.append(exp.GT(this=column.copy(), expression=exp.convert(rule.max)))
    return _count_where(table, exp.or_(*outside))


def _duplicate_keys(table: exp.Table, columns: list[str]) -> exp.Select:
    keys = [exp.column(c, quoted=True) for c in columns]
    present = exp.and_(*[exp.Not(this=exp.Is(this=k.copy(), expression=exp.Null())) for k in keys])
    duplicated = (
        exp.select(*[k.copy() for k in keys])
        .from_(table.copy())
        .where(present)
        .group_by(*[k.copy() for k in keys])
        .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.convert(1)))
    )
    return exp.select(exp.Count(this=exp.Star())).from_(duplicated.subquery("duplicates"))


def _age_seconds(table: exp.Table, column: str) -> exp.Select:
    newest = exp.cast(exp.Max(this=exp.column(column, quoted=True)), exp.DataType.Type.TIMESTAMPTZ)
    age = exp.Anonymous(
        this="date_diff",
        expressions=[exp.Literal.string("second"), newest, exp.CurrentTimestamp()],
    )
    return exp.select(age).from_(table.copy())


def _result_properties(result: Document) -> list[dict[str, Any]]:
    return custom_properties(
        {
            "lastStatus": result.get("status"),
            "lastFailingRows": result.get("failing_rows"),
            "lastCheckedAt": result.get("checked_at"),
        }
    )


def _freshness_sla(dataset: str, rule: FreshnessRule) -> dict[str, Any]:
    amount, unit = int(rule.max_age.strip()[:-1]), rule.max_age.strip()[-1]
    return {
        "property": "latency",
        "value": amount,
        "unit": unit,
        "element": f"{dataset}.{rule.column}",
        "driver": "operational" if rule.severity == "error" else "analytics",
    }
