"""Quality rules and results in the meta layer, and the views the ports and discovery show.

`meta.quality_results` is append-only: one row per rule checked, with the run that checked
it. `meta.quality_rules` keeps every rule set put through the control port; the latest one
of a dataset replaces the descriptor's rules for that dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb

from dataproduct.catalog import published_datasets
from dataproduct.errors import NotFoundError, SqlRejectedError, ValidationError
from dataproduct.quality_rules import QualityRule, RuleError, parse_rules, rules_to_raw
from dataproduct.storage import Storage

Status = Literal["pass", "fail", "error"]
QualityStatus = Literal["pass", "warn", "fail", "unknown"]

_RESULT_COLUMNS = (
    "run_id, dataset, rule, kind, severity, status, failing_rows, samples, sql, message, "
    "seconds, checked_at"
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one rule on one table."""

    run_id: str
    dataset: str
    rule: str
    kind: str
    severity: str
    status: Status
    failing_rows: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    sql: str = ""
    message: str | None = None
    seconds: float = 0.0
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    transaction_aborted: bool = False

    @property
    def blocks_publish(self) -> bool:
        """True when the run must not publish: a failed `error` check, or an aborted transaction."""
        return (self.severity == "error" and self.status != "pass") or self.transaction_aborted

    def to_dict(self, *, details: bool = True) -> dict[str, Any]:
        """JSON-ready form; without `details`, no samples, SQL or message (for the public)."""
        body: dict[str, Any] = {
            "rule": self.rule,
            "kind": self.kind,
            "severity": self.severity,
            "status": self.status,
            "failing_rows": self.failing_rows,
            "checked_at": self.checked_at.isoformat(),
            "run_id": self.run_id,
            "dataset": self.dataset,
        }
        if details:
            body |= {
                "samples": self.samples,
                "sql": self.sql,
                "message": self.message,
                "seconds": round(self.seconds, 4),
            }
        return body


class QualityGateError(ValidationError):
    """Checks of `error` severity failed: the run publishes nothing. `results` has them all."""

    code = "quality_failed"

    def __init__(self, dataset: str, results: Sequence[CheckResult]) -> None:
        failed = [r for r in results if r.blocks_publish]
        listed = ", ".join(f"{r.rule} ({_why(r)})" for r in failed)
        super().__init__(
            f"quality checks of {dataset} failed: {listed}",
            where=f"datasets.{dataset}.quality",
            checks=[r.to_dict() for r in failed],
        )
        self.results = list(results)


def _why(result: CheckResult) -> str:
    if result.status == "fail":
        return f"{result.failing_rows} failing rows" if result.failing_rows else "failed"
    return result.message or result.status


def blocking(results: Sequence[CheckResult]) -> list[CheckResult]:
    """The results that forbid publishing."""
    return [r for r in results if r.blocks_publish]


def raise_for_blocking(dataset: str, results: Sequence[CheckResult]) -> None:
    """QualityGateError when any result forbids publishing `dataset`."""
    if blocking(results):
        raise QualityGateError(dataset, results)


def overall_status(results: Sequence[CheckResult]) -> QualityStatus:
    """`fail` if an `error` check did not pass, `warn` if a `warn` one did not, else `pass`."""
    if not results:
        return "unknown"
    if any(r.severity == "error" and r.status != "pass" for r in results):
        return "fail"
    if any(r.status != "pass" for r in results):
        return "warn"
    return "pass"


# results -------------------------------------------------------------------------------


def record_results(cursor: duckdb.DuckDBPyConnection, results: Sequence[CheckResult]) -> None:
    """Append results to `meta.quality_results` (inside the caller's transaction)."""
    if not results:
        return
    cursor.executemany(
        f"INSERT INTO meta.quality_results ({_RESULT_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                r.run_id,
                r.dataset,
                r.rule,
                r.kind,
                r.severity,
                r.status,
                r.failing_rows,
                json.dumps(r.samples),
                r.sql,
                r.message,
                r.seconds,
                r.checked_at,
            ]
            for r in results
        ],
    )


def latest_results(
    cursor: duckdb.DuckDBPyConnection, dataset: str | None = None
) -> list[CheckResult]:
    """The latest result of each rule of each dataset (or of one dataset)."""
    where, params = ("WHERE dataset = ?", [dataset]) if dataset is not None else ("", [])
    rows = cursor.execute(
        f"SELECT {_RESULT_COLUMNS} FROM meta.quality_results {where} "
        "QUALIFY row_number() OVER (PARTITION BY dataset, rule "
        "ORDER BY checked_at DESC, rowid DESC) = 1 "
        "ORDER BY dataset, checked_at, rowid",
        params,
    ).fetchall()
    return [_result_from_row(row) for row in rows]


def results_for_run(cursor: duckdb.DuckDBPyConnection, run_id: str) -> list[CheckResult]:
    """Every result a run recorded, in the order it checked them."""
    rows = cursor.execute(
        f"SELECT {_RESULT_COLUMNS} FROM meta.quality_results WHERE run_id = ? "
        "ORDER BY checked_at, rowid",
        [run_id],
    ).fetchall()
    return [_result_from_row(row) for row in rows]


def _result_from_row(row: tuple[Any, ...]) -> CheckResult:
    return CheckResult(
        run_id=row[0],
        dataset=row[1],
        rule=row[2],
        kind=row[3],
        severity=row[4],
        status=row[5],
        failing_rows=row[6],
        samples=json.loads(row[7]),
        sql=row[8],
        message=row[9],
        seconds=row[10],
        checked_at=row[11],
    )


# rule sets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """The rules of one dataset and where they come from (`descriptor` or `control`)."""

    dataset: str
    rules: tuple[QualityRule, ...]
    origin: str = "descriptor"
    submitted_by: str | None = None
    submitted_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `rules` in the compact form a PUT takes back."""
        return {
            "dataset": self.dataset,
            "origin": self.origin,
            "submitted_by": self.submitted_by,
            "submitted_at": self.submitted_at.isoformat() if self.submitted_at else None,
            "rules": rules_to_raw(self.rules),
        }


def save_rules(
    cursor: duckdb.DuckDBPyConnection,
    dataset: str,
    rules: Sequence[QualityRule],
    *,
    submitted_by: str,
) -> RuleSet:
    """Store a dataset's rules (already parsed); they replace the descriptor's from now on."""
    rule_set = RuleSet(dataset, tuple(rules), "control", submitted_by, datetime.now(UTC))
    cursor.execute(
        "INSERT INTO meta.quality_rules (dataset, rules, submitted_by, submitted_at) "
        "VALUES (?, ?, ?, ?)",
        [dataset, json.dumps(rules_to_raw(rules)), submitted_by, rule_set.submitted_at],
    )
    return rule_set


def stored_rule_sets(
    cursor: duckdb.DuckDBPyConnection, dataset: str | None = None
) -> dict[str, RuleSet]:
    """The latest rule set put through the control port, per dataset."""
    where, params = ("WHERE dataset = ?", [dataset]) if dataset is not None else ("", [])
    rows = cursor.execute(
        f"SELECT dataset, rules, submitted_by, submitted_at FROM meta.quality_rules {where} "
        "QUALIFY row_number() OVER (PARTITION BY dataset "
        "ORDER BY submitted_at DESC, rowid DESC) = 1",
        params,
    ).fetchall()
    found = {}
    for name, rules, submitted_by, submitted_at in rows:
        try:
            parsed = parse_rules(json.loads(rules))
        except RuleError as error:
            raise ValidationError(
                f"the stored rules of {name} are no longer valid: {error}",
                where=f"quality.{name}",
            ) from None
        found[name] = RuleSet(name, tuple(parsed), "control", submitted_by, submitted_at)
    return found


def rules_for(
    cursor: duckdb.DuckDBPyConnection, dataset: str, descriptor_rules: Sequence[QualityRule]
) -> list[QualityRule]:
    """The rules to check on `dataset`: the latest put through the control port, if any,
    else the descriptor's."""
    return list(_effective(cursor, dataset, descriptor_rules).rules)


def _effective(
    cursor: duckdb.DuckDBPyConnection, dataset: str, descriptor_rules: Sequence[QualityRule]
) -> RuleSet:
    stored = stored_rule_sets(cursor, dataset).get(dataset)
    return stored or RuleSet(dataset, tuple(descriptor_rules))


# what the ports and discovery show -----------------------------------------------------


def quality_overview(
    storage: Storage, descriptor_rules: Mapping[str, Sequence[QualityRule]]
) -> list[dict[str, Any]]:
    """Per dataset: the effective rules, where they come from, and their latest results."""
    with storage.reader() as cursor:
        stored = stored_rule_sets(cursor)
        latest = latest_results(cursor)
        published = {d.name for d in published_datasets(cursor)}
    names = sorted(set(descriptor_rules) | set(stored) | published | {r.dataset for r in latest})
    return [
        _entry(stored.get(name) or RuleSet(name, tuple(descriptor_rules.get(name, ()))), latest)
        for name in names
    ]


def replace_rules(
    storage: Storage,
    dataset: str,
    raw_rules: Any,
    *,
    submitted_by: str,
    known_datasets: set[str],
) -> dict[str, Any]:
    """Validate and store a dataset's rules; a refused set changes nothing."""
    if dataset not in known_datasets:
        known = ", ".join(sorted(known_datasets)) or "none"
        raise NotFoundError(f"no dataset '{dataset}'; known: {known}", where=f"quality/{dataset}")
    try:
        rules = parse_rules(raw_rules)
    except RuleError as error:
        raise _refusal(error, raw_rules) from None
    with storage.transaction() as cursor:
        rule_set = save_rules(cursor, dataset, rules, submitted_by=submitted_by)
        latest = latest_results(cursor, dataset)
    return _entry(rule_set, latest)


def find_results(
    storage: Storage, dataset: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    """The results of one run (with `run_id`), or the latest per rule; optionally of one dataset."""
    with storage.reader() as cursor:
        if run_id is None:
            results = latest_results(cursor, dataset)
        else:
            results = [r for r in results_for_run(cursor, run_id) if dataset in (None, r.dataset)]
    return [r.to_dict() for r in results]


def published_quality(
    cursor: duckdb.DuckDBPyConnection,
    dataset: str,
    run_id: str,
    descriptor_rules: Sequence[QualityRule],
) -> dict[str, Any]:
    """For discovery: the effective rules, and the checks of the run that published the data.

    Only public fields: no sample rows, SQL or engine messages, which may show values.
    """
    rules = _effective(cursor, dataset, descriptor_rules).rules
    results = [r for r in results_for_run(cursor, run_id) if r.dataset == dataset]
    return {
        "rules": rules_to_raw(rules),
        "status": overall_status(results),
        "results": [r.to_dict(details=False) for r in results],
    }


def _entry(rule_set: RuleSet, latest: Sequence[CheckResult]) -> dict[str, Any]:
    """One dataset's rules with the latest result of each of them."""
    names = {rule.rule_name for rule in rule_set.rules}
    results = [r for r in latest if r.dataset == rule_set.dataset and r.rule in names]
    return {
        **rule_set.to_dict(),
        "status": overall_status(results),
        "results": [r.to_dict() for r in results],
    }


def _refusal(error: RuleError, raw_rules: Any) -> ValidationError | SqlRejectedError:
    where = "rules" if error.index is None else f"rules.{error.index}"
    message = f"{where}: {error.reason}"
    if not error.violations:
        return ValidationError(message, where=where)
    raw = raw_rules[error.index] if error.index is not None else {}
    name = raw.get("name") if isinstance(raw, dict) else None
    return SqlRejectedError(
        message,
        where=where,
        quality_rule=name,
        violations=[v.to_dict() for v in error.violations],
    )
