"""Quality rules: parsing with precise messages, checks on a real DuckDB table, stored results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataproduct.catalog import create_meta_tables
from dataproduct.descriptor import DESCRIPTOR_FILE, load_descriptor
from dataproduct.errors import DescriptorError, NotFoundError, SqlRejectedError, ValidationError
from dataproduct.quality import (
    SAMPLE_ROWS,
    CheckResult,
    QualityGateError,
    RuleError,
    blocking,
    json_safe,
    latest_results,
    parse_rule,
    parse_rules,
    raise_for_blocking,
    record_results,
    results_for_run,
    rules_for,
    run_checks,
    save_rules,
)
from dataproduct.quality_rules import SqlRule
from dataproduct.quality_store import (
    overall_status,
    published_quality,
    quality_overview,
    replace_rules,
)
from dataproduct.storage import Storage, memory_connection

# 12 orders: C1 twice (a duplicate key), one null customer, one unknown status, two negative
# amounts and one above 1000; `updated_at` is at most 3 hours old.
ORDERS = """
CREATE TABLE output.orders AS
SELECT
    i AS id,
    CASE WHEN i = 3 THEN NULL WHEN i IN (1, 2) THEN 'C1' ELSE 'C' || i END AS customer_id,
    CASE WHEN i = 4 THEN 'lost' WHEN i % 2 = 0 THEN 'paid' ELSE 'shipped' END AS status,
    CAST(CASE WHEN i IN (5, 6) THEN -1 WHEN i = 7 THEN 5000 ELSE i * 10 END
         AS DECIMAL(12, 2)) AS amount,
    now() - to_hours(i % 4) AS updated_at,
    DATE '2020-01-01' + CAST(i AS INTEGER) AS day
FROM range(1, 13) AS t(i)
"""


@pytest.fixture
def storage() -> Iterator[Storage]:
    """An in-memory product database with its meta tables and `output.orders`."""
    opened = Storage(memory_connection())
    with opened.transaction() as cursor:
        create_meta_tables(cursor)
        cursor.execute(ORDERS)
    yield opened
    opened.close()


def check(storage: Storage, *raw: dict[str, Any], run_id: str = "run-1") -> list[CheckResult]:
    """Run the rules on output.orders inside a transaction, as a run does."""
    with storage.transaction() as cursor:
        return run_checks(cursor, "output", "orders", parse_rules(list(raw)), run_id=run_id)


def only(results: list[CheckResult]) -> CheckResult:
    assert len(results) == 1, results
    return results[0]


# parsing ----------------------------------------------------------------------------------

GOOD = [
    ({"not_null": "customer_id"}, "not_null", "not_null_customer_id"),
    ({"unique": "customer_id"}, "unique", "unique_customer_id"),
    ({"unique": ["id", "day"], "severity": "warn"}, "unique", "unique_id_day"),
    (
        {"accepted_values": {"column": "status", "values": ["paid", "shipped"]}},
        "accepted_values",
        "accepted_values_status",
    ),
    ({"range": {"column": "amount", "min": 0, "max": 100000}}, "range", "range_amount"),
    ({"range": {"column": "amount", "max": 1.5}, "name": "small"}, "range", "small"),
    ({"row_count": {"min": 1, "max": 1000000}}, "row_count", "row_count"),
    (
        {"freshness": {"column": "updated_at", "max_age": "24h"}},
        "freshness",
        "freshness_updated_at",
    ),
    (
        {"sql": "SELECT * FROM output.x WHERE amount < 0", "name": "no_negative"},
        "sql",
        "no_negative",
    ),
]


@pytest.mark.parametrize(("raw", "kind", "name"), GOOD)
def test_good_rules_parse_and_dump_back_to_their_compact_form(
    raw: dict[str, Any], kind: str, name: str
) -> None:
    rule = parse_rule(raw)
    assert (rule.kind, rule.rule_name) == (kind, name)
    assert rule.to_raw() == raw
    assert parse_rule(rule.to_raw()) == rule


def test_severity_defaults_to_error_and_a_sql_rule_gets_a_stable_name() -> None:
    assert parse_rule({"not_null": "a"}).severity == "error"
    first = parse_rule({"sql": "SELECT * FROM output.x WHERE a < 0"})
    again = parse_rule({"sql": "SELECT * FROM output.x WHERE a < 0"})
    other = parse_rule({"sql": "SELECT * FROM output.x WHERE a > 0"})
    assert first.rule_name == again.rule_name != other.rule_name
    assert first.rule_name.startswith("sql_")


def test_yaml_dates_become_iso_text() -> None:
    rule = parse_rule({"range": {"column": "day", "min": date(2020, 1, 1)}})
    assert rule.to_raw() == {"range": {"column": "day", "min": "2020-01-01"}}


BAD = [
    (["not_null", "a"], "a rule is a mapping like {not_null: column}, not a list"),
    (
        {"not_nul": "a"},
        "unknown field 'not_nul'; a rule is one of: not_null, unique, "
        "accepted_values, range, row_count, freshness, sql",
    ),
    (
        {"name": "x"},
        "a rule has exactly one kind (not_null, unique, accepted_values, range, "
        "row_count, freshness, sql); found none",
    ),
    (
        {"not_null": "a", "unique": "a"},
        "a rule has exactly one kind (not_null, unique, "
        "accepted_values, range, row_count, freshness, sql); found not_null and unique",
    ),
    ({"not_null": 5}, "not_null: must be a column name, not a number"),
    ({"not_null": ""}, "not_null: must be a column name of 1 to 255 characters"),
    ({"unique": []}, "unique: list at least one column"),
    ({"unique": ["a", "a"]}, "unique: a column is listed twice"),
    ({"unique": {"a": 1}}, "unique: must be a column or a list of columns, not a mapping"),
    ({"accepted_values": {"column": "s"}}, "accepted_values.values: is required"),
    (
        {"accepted_values": {"column": "s", "values": [None]}},
        "accepted_values.values.0: must be a number, a string or a date, not null",
    ),
    ({"accepted_values": "s"}, "accepted_values: must be a mapping like {...}, not a string"),
    ({"range": {"column": "a"}}, "range: give min, max or both"),
    ({"range": {"column": "a", "min": 5, "max": 1}}, "range: min 5 is above max 1"),
    (
        {"range": {"column": "a", "min": True}},
        "range.min: must be a number, a string or a date, not a boolean",
    ),
    (
        {"range": {"column": "a", "min": 1, "severity": "warn"}},
        "range.severity: put 'severity' beside the rule, not inside it",
    ),
    ({"range": {"column": "a", "min": 1, "step": 2}}, "range.step: unknown field"),
    ({"row_count": {"min": -1}}, "row_count.min: Input should be greater than or equal to 0"),
    ({"row_count": {"min": 9, "max": 2}}, "row_count: min 9 is above max 2"),
    (
        {"freshness": {"column": "u", "max_age": "1w"}},
        "freshness.max_age: '1w' is not an age like 30m, 24h or 7d (units s, m, h, d)",
    ),
    (
        {"freshness": {"column": "u", "max_age": "0h"}},
        "freshness.max_age: '0h' is not an age like 30m, 24h or 7d (units s, m, h, d)",
    ),
    ({"not_null": "a", "severity": "fatal"}, "severity: Input should be 'error' or 'warn'"),
    (
        {"not_null": "a", "name": "two words"},
        "name: use up to 100 letters, digits, '_', '.' or '-'",
    ),
    (
        {"sql": "SELECT * FROM meta.runs"},
        "sql: refused by the guard: only_layer_tables: layer 'meta' is not readable here "
        "(allowed: input, staging, output) at line 1, column 15",
    ),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_bad_rules_are_refused_with_a_precise_message(raw: Any, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(raw)
    assert str(caught.value) == message


def test_a_refused_sql_rule_names_guard_rule_line_and_column() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule({"sql": "SELECT *\nFROM output.x\nWHERE read_text('/etc/passwd') <> ''"})
    [violation] = caught.value.violations
    assert (violation.rule, violation.line, violation.column) == ("no_outside_functions", 3, 7)
    with pytest.raises(RuleError, match="only_queries"):
        parse_rule({"sql": "DELETE FROM output.x"})
    with pytest.raises(RuleError, match="single_statement"):
        parse_rule({"sql": "SELECT 1 FROM output.x; SELECT 2 FROM output.x"})


def test_a_list_reports_the_index_of_the_first_bad_rule() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules([{"not_null": "a"}, {"unique": "a"}, {"range": {"column": "a"}}])
    assert (caught.value.index, str(caught.value)) == (2, "2: range: give min, max or both")
    with pytest.raises(RuleError) as caught:
        parse_rules([{"not_null": "a"}, {"not_null": "a", "severity": "warn"}])
    assert str(caught.value) == "1: another rule is named 'not_null_a'; give this one a name"
    with pytest.raises(RuleError, match="rules are a list, not a mapping"):
        parse_rules({"not_null": "a"})
    assert len(parse_rules([{"not_null": "a"}, {"not_null": "a", "name": "again"}])) == 2


def _edit(product: Path, quality: list[Any]) -> None:
    path = product / DESCRIPTOR_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["datasets"]["customer_revenue"]["quality"] = quality
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def test_descriptor_refuses_a_bad_rule_at_its_path(example_product: Path) -> None:
    _edit(example_product, [{"not_null": "customer_id"}, {"sql": "SELECT * FROM meta.runs"}])
    with pytest.raises(DescriptorError) as caught:
        load_descriptor(example_product)
    [problem] = caught.value.details["problems"]
    assert problem["path"] == "datasets.customer_revenue.quality.1"
    assert problem["message"].startswith("sql: refused by the guard: only_layer_tables")
    assert caught.value.where is not None
    assert caught.value.where.endswith("dataproduct.yaml: datasets.customer_revenue.quality.1")


def test_descriptor_refuses_two_rules_with_one_name(example_product: Path) -> None:
    _edit(example_product, [{"unique": "customer_id"}, {"unique": "customer_id"}])
    with pytest.raises(DescriptorError) as caught:
        load_descriptor(example_product)
    [problem] = caught.value.details["problems"]
    assert problem == {
        "path": "datasets.customer_revenue.quality.1",
        "message": "another rule is named 'unique_customer_id'; give this one a name",
    }


def test_descriptor_rules_are_objects_that_dump_back_to_the_yaml(example_product: Path) -> None:
    written = [
        {"not_null": "customer_id"},
        {"range": {"column": "revenue", "min": 0}, "severity": "warn", "name": "positive"},
    ]
    _edit(example_product, written)
    descriptor = load_descriptor(example_product)
    rules = descriptor.datasets["customer_revenue"].quality
    assert [rule.rule_name for rule in rules] == ["not_null_customer_id", "positive"]
    assert descriptor.model_dump()["datasets"]["customer_revenue"]["quality"] == written
    assert descriptor.model_dump(mode="json")["datasets"]["customer_revenue"]["quality"] == written
    assert type(descriptor).model_validate(descriptor.model_dump()) == descriptor


# checks on a real table -------------------------------------------------------------------


def test_not_null_counts_and_samples_the_null_rows(storage: Storage) -> None:
    result = only(check(storage, {"not_null": "customer_id"}))
    assert (result.status, result.failing_rows) == ("fail", 1)
    assert [row["id"] for row in result.samples] == [3]
    assert result.samples[0]["customer_id"] is None
    assert result.sql == 'SELECT * FROM "output"."orders" WHERE "customer_id" IS NULL'
    assert only(check(storage, {"not_null": "id"})).status == "pass"


def test_unique_counts_the_rows_sharing_a_key(storage: Storage) -> None:
    result = only(check(storage, {"unique": "customer_id"}))
    assert (result.status, result.failing_rows) == ("fail", 2)
    assert result.samples == [{"customer_id": "C1", "duplicate_rows": 2}]
    assert only(check(storage, {"unique": ["customer_id", "id"]})).status == "pass"
    assert only(check(storage, {"unique": "id"})).failing_rows == 0


def test_unique_does_not_compare_rows_with_a_null_key(storage: Storage) -> None:
    with storage.transaction() as cursor:
        cursor.execute("INSERT INTO output.orders (id, customer_id) VALUES (13, NULL), (13, 'C1')")
    assert only(check(storage, {"unique": "customer_id"})).failing_rows == 3  # C1 three times
    pair = only(check(storage, {"unique": ["id", "customer_id"]}))
    assert (pair.failing_rows, pair.samples) == (0, [])  # (13, NULL) matches nothing


def test_accepted_values_ignores_nulls_and_reports_the_others(storage: Storage) -> None:
    result = only(
        check(storage, {"accepted_values": {"column": "status", "values": ["paid", "shipped"]}})
    )
    assert (result.status, result.failing_rows) == ("fail", 1)
    assert result.samples[0]["status"] == "lost"
    every = ["paid", "shipped", "lost"]
    assert (
        only(check(storage, {"accepted_values": {"column": "status", "values": every}})).status
        == "pass"
    )
    ids = list(range(1, 12))  # 12 is missing
    numbers = only(check(storage, {"accepted_values": {"column": "id", "values": ids}}))
    assert (numbers.failing_rows, numbers.samples[0]["id"]) == (1, 12)


def test_range_checks_either_bound(storage: Storage) -> None:
    both = only(check(storage, {"range": {"column": "amount", "min": 0, "max": 1000}}))
    assert (both.status, both.failing_rows) == ("fail", 3)
    assert sorted(row["amount"] for row in both.samples) == [-1.0, -1.0, 5000.0]
    assert only(check(storage, {"range": {"column": "amount", "min": 0}})).failing_rows == 2
    assert only(check(storage, {"range": {"column": "amount", "max": 1000}})).failing_rows == 1
    wide = {"range": {"column": "amount", "min": -1, "max": 5000}}
    assert only(check(storage, wide)).status == "pass"
    days = only(check(storage, {"range": {"column": "day", "min": "2020-01-05"}}))
    assert (days.failing_rows, days.samples[0]["day"]) == (3, "2020-01-02")


def test_row_count_bounds(storage: Storage) -> None:
    assert only(check(storage, {"row_count": {"min": 12, "max": 12}})).status == "pass"
    too_few = only(check(storage, {"row_count": {"min": 13}}))
    assert (too_few.status, too_few.message) == ("fail", "12 rows, expected at least 13")
    too_many = only(check(storage, {"row_count": {"max": 11}}))
    assert (too_many.status, too_many.message) == ("fail", "12 rows, expected at most 11")


def test_freshness_of_timestamps_and_dates(storage: Storage) -> None:
    fresh = only(check(storage, {"freshness": {"column": "updated_at", "max_age": "1h"}}))
    assert fresh.status == "pass", fresh.message
    assert "allowed: 1h" in (fresh.message or "")
    stale = only(check(storage, {"freshness": {"column": "day", "max_age": "30d"}}))
    assert stale.status == "fail"
    assert (stale.message or "").startswith("newest day is 2020-01-13T00:00:00+00:00")
    with storage.transaction() as cursor:
        cursor.execute("DELETE FROM output.orders")
    empty = only(check(storage, {"freshness": {"column": "updated_at", "max_age": "1h"}}))
    assert (empty.status, empty.message) == ("fail", "column 'updated_at' has no value")


def test_custom_sql_selects_the_failing_rows(storage: Storage) -> None:
    rule = {"sql": "SELECT id, amount FROM output.orders WHERE amount < 0", "name": "no_neg"}
    result = only(check(storage, rule))
    assert (result.rule, result.kind, result.status, result.failing_rows) == (
        "no_neg",
        "sql",
        "fail",
        2,
    )
    assert sorted(row["id"] for row in result.samples) == [5, 6]
    assert set(result.samples[0]) == {"id", "amount"}
    passing = {
        "sql": "WITH big AS (SELECT * FROM output.orders WHERE amount > 1e6) SELECT * FROM big"
    }
    assert only(check(storage, passing)).status == "pass"


def test_samples_are_bounded_and_json_safe(storage: Storage) -> None:
    with storage.transaction() as cursor:
        cursor.execute(
            "CREATE TABLE output.odd AS SELECT i, NULL::INT AS n, 'nan'::DOUBLE AS f, "
            "'ab'::BLOB AS b, [i, 2] AS l, {'k': i} AS s, 1.25::DECIMAL(30, 2) AS d, "
            "INTERVAL 90 MINUTE AS iv, repeat('x', 5000) AS long FROM range(20) t(i)"
        )
        [result] = run_checks(cursor, "output", "odd", parse_rules([{"not_null": "n"}]), run_id="r")
    assert (result.failing_rows, len(result.samples)) == (20, SAMPLE_ROWS)
    sample = result.samples[0]
    json.dumps(result.samples, allow_nan=False)
    assert (sample["f"], sample["b"], sample["l"], sample["s"]) == (None, "6162", [0, 2], {"k": 0})
    assert (sample["d"], sample["iv"], len(sample["long"])) == (1.25, 5400.0, 1001)
    assert json_safe(datetime(2024, 1, 2, tzinfo=UTC)) == "2024-01-02T00:00:00+00:00"


def test_a_missing_column_or_table_is_an_error_result_not_an_exception(storage: Storage) -> None:
    result = only(check(storage, {"not_null": "nope"}))
    assert result.status == "error"
    assert result.message == (
        "column 'nope' does not exist in output.orders "
        "(it has: id, customer_id, status, amount, updated_at, day)"
    )
    with storage.transaction() as cursor:
        rules = parse_rules([{"row_count": {"min": 1}}])
        [missing] = run_checks(cursor, "output", "gone", rules, run_id="r")
    assert (missing.status, missing.message) == ("error", "table output.gone does not exist")


def test_columns_match_whatever_their_case(storage: Storage) -> None:
    assert only(check(storage, {"not_null": "CUSTOMER_ID"})).failing_rows == 1


def test_values_not_of_the_column_type_are_errors_that_keep_the_transaction(
    storage: Storage,
) -> None:
    results = check(
        storage,
        {"range": {"column": "amount", "min": "abc"}},
        {"accepted_values": {"column": "id", "values": ["x"]}},
        {"freshness": {"column": "status", "max_age": "1h"}},
        {"sql": "SELECT * FROM output.missing"},
        {"not_null": "customer_id"},
    )
    assert [r.status for r in results] == ["error", "error", "error", "error", "fail"]
    assert results[0].message == "'abc' is not a valid DECIMAL(12,2) for column 'amount'"
    assert results[1].message == "'x' is not a valid BIGINT for column 'id'"
    assert results[2].message == "column 'status' is VARCHAR, not a DATE or TIMESTAMP"
    assert (results[3].message or "").startswith("Catalog Error: Table with name missing")
    assert not any(r.transaction_aborted for r in results)


def test_a_runtime_error_in_custom_sql_marks_the_transaction_aborted(storage: Storage) -> None:
    with storage.transaction() as cursor:
        rules = parse_rules(
            [
                {"sql": "SELECT CAST(status AS INT) AS n FROM output.orders", "severity": "warn"},
                {"not_null": "id", "severity": "warn"},
            ]
        )
        first, second = run_checks(cursor, "output", "orders", rules, run_id="r")
        assert (first.status, first.transaction_aborted, first.blocks_publish) == (
            "error",
            True,
            True,
        )
        assert "Conversion Error" in (first.message or "")
        assert (second.status, second.transaction_aborted) == ("error", True)
        assert "aborted the transaction" in (second.message or "")
        cursor.execute("ROLLBACK")
        cursor.execute("BEGIN TRANSACTION")  # the transaction context expects one to end
    outside = storage.cursor()
    try:
        [result] = run_checks(outside, "output", "orders", rules[:1], run_id="r")
        assert (result.status, result.transaction_aborted) == ("error", False)
    finally:
        outside.close()


def test_sql_is_guarded_again_when_checked(storage: Storage) -> None:
    """A rule built without the parser (so without the guard) is still refused at check time."""
    sneaky = SqlRule(sql="SELECT * FROM meta.quality_rules")
    with storage.transaction() as cursor:
        [result] = run_checks(cursor, "output", "orders", [sneaky], run_id="r")
    assert result.status == "error"
    assert (result.message or "").startswith("sql: refused by the guard: only_layer_tables")


def test_warnings_publish_and_errors_block(storage: Storage) -> None:
    results = check(
        storage,
        {"not_null": "customer_id", "severity": "warn"},
        {"unique": "id"},
        {"range": {"column": "amount", "min": 0}},
    )
    assert [r.status for r in results] == ["fail", "pass", "fail"]
    assert [r.rule for r in blocking(results)] == ["range_amount"]
    with pytest.raises(QualityGateError) as caught:
        raise_for_blocking("orders", results)
    error = caught.value
    assert (error.status, error.code) == (422, "quality_failed")
    assert error.message == "quality checks of orders failed: range_amount (2 failing rows)"
    assert [c["rule"] for c in error.details["checks"]] == ["range_amount"]
    assert error.results == results
    raise_for_blocking("orders", results[:2])  # a failed warning does not block


def test_overall_status() -> None:
    def result(severity: str, status: Any) -> CheckResult:
        return CheckResult("r", "d", f"{severity}-{status}", "not_null", severity, status)

    assert overall_status([]) == "unknown"
    assert overall_status([result("error", "pass"), result("warn", "pass")]) == "pass"
    assert overall_status([result("error", "pass"), result("warn", "fail")]) == "warn"
    assert overall_status([result("warn", "error"), result("error", "pass")]) == "warn"
    assert overall_status([result("warn", "fail"), result("error", "error")]) == "fail"


# stored results and rules -----------------------------------------------------------------


def test_results_are_stored_and_the_latest_per_dataset_and_rule_wins(storage: Storage) -> None:
    first = check(storage, {"not_null": "customer_id"}, {"unique": "id"}, run_id="run-1")
    second = check(storage, {"not_null": "customer_id", "severity": "warn"}, run_id="run-2")
    other = [CheckResult("run-2", "other", "row_count", "row_count", "error", "pass")]
    with storage.transaction() as cursor:
        record_results(cursor, first)
        record_results(cursor, second + other)
    with storage.reader() as cursor:
        run_one = results_for_run(cursor, "run-1")
        latest = latest_results(cursor)
        latest_orders = latest_results(cursor, "orders")
    assert [(r.rule, r.status) for r in run_one] == [
        ("not_null_customer_id", "fail"),
        ("unique_id", "pass"),
    ]
    stored = run_one[0]
    assert stored.samples == first[0].samples and stored.sql == first[0].sql
    assert stored.checked_at == first[0].checked_at
    assert stored.failing_rows == 1 and stored.severity == "error"
    assert {(r.dataset, r.rule, r.run_id, r.severity) for r in latest} == {
        ("orders", "unique_id", "run-1", "error"),
        ("orders", "not_null_customer_id", "run-2", "warn"),
        ("other", "row_count", "run-2", "error"),
    }
    assert {r.dataset for r in latest_orders} == {"orders"} and len(latest_orders) == 2


def test_a_failed_run_recorded_apart_stays_visible(storage: Storage) -> None:
    """As the runner does: checks inside the run's transaction, which fails; then recorded."""
    rules = parse_rules([{"range": {"column": "amount", "min": 0}}])
    kept: list[CheckResult] = []
    with pytest.raises(QualityGateError), storage.transaction() as cursor:
        kept = run_checks(cursor, "output", "orders", rules, run_id="failed-run")
        record_results(cursor, kept)
        raise_for_blocking("orders", kept)
    with storage.reader() as cursor:
        assert results_for_run(cursor, "failed-run") == []  # rolled back with the run
    with storage.transaction() as cursor:
        record_results(cursor, kept)
    with storage.reader() as cursor:
        assert [r.status for r in results_for_run(cursor, "failed-run")] == ["fail"]


def test_rules_put_through_the_control_port_replace_the_descriptors(storage: Storage) -> None:
    descriptor_rules = parse_rules([{"not_null": "id"}])
    with storage.reader() as cursor:
        assert rules_for(cursor, "orders", descriptor_rules) == descriptor_rules
    with storage.transaction() as cursor:
        save_rules(cursor, "orders", parse_rules([{"unique": "id"}]), submitted_by="ana")
        save_rules(cursor, "orders", parse_rules([{"row_count": {"min": 1}}]), submitted_by="bo")
        save_rules(cursor, "customers", [], submitted_by="ana")
    with storage.reader() as cursor:
        assert [r.to_raw() for r in rules_for(cursor, "orders", descriptor_rules)] == [
            {"row_count": {"min": 1}}
        ]
        assert rules_for(cursor, "customers", descriptor_rules) == []  # an empty set wins too
        assert rules_for(cursor, "daily", descriptor_rules) == descriptor_rules


def test_replace_rules_validates_first_and_changes_nothing_on_refusal(storage: Storage) -> None:
    known = {"orders"}
    with pytest.raises(SqlRejectedError) as caught:
        replace_rules(
            storage,
            "orders",
            [{"not_null": "id"}, {"sql": "SELECT * FROM meta.runs", "name": "peek"}],
            submitted_by="ana",
            known_datasets=known,
        )
    error = caught.value
    assert (error.where, error.details["quality_rule"]) == ("rules.1", "peek")
    assert error.details["violations"] == [
        {
            "rule": "only_layer_tables",
            "message": "layer 'meta' is not readable here (allowed: input, staging, output)",
            "line": 1,
            "column": 15,
        }
    ]
    with pytest.raises(ValidationError, match=r"^rules\.0: range: give min, max or both$"):
        replace_rules(
            storage, "orders", [{"range": {"column": "a"}}], submitted_by="a", known_datasets=known
        )
    with pytest.raises(NotFoundError, match="no dataset 'nope'; known: orders"):
        replace_rules(storage, "nope", [], submitted_by="a", known_datasets=known)
    with storage.reader() as cursor:
        assert cursor.execute("SELECT count(*) FROM meta.quality_rules").fetchall() == [(0,)]
    entry = replace_rules(
        storage, "orders", [{"unique": "id"}], submitted_by="ana", known_datasets=known
    )
    assert (entry["origin"], entry["submitted_by"], entry["rules"]) == (
        "control",
        "ana",
        [{"unique": "id"}],
    )


def test_overview_shows_effective_rules_with_their_latest_results(storage: Storage) -> None:
    results = check(storage, {"not_null": "customer_id"}, {"unique": "id"})
    with storage.transaction() as cursor:
        record_results(cursor, results)
    descriptor_rules = {"orders": parse_rules([{"not_null": "customer_id"}, {"unique": "id"}])}
    [entry] = quality_overview(storage, descriptor_rules)
    assert (entry["dataset"], entry["origin"], entry["status"]) == ("orders", "descriptor", "fail")
    assert [r["rule"] for r in entry["results"]] == ["not_null_customer_id", "unique_id"]
    assert entry["results"][0]["samples"][0]["id"] == 3
    replace_rules(
        storage, "orders", [{"unique": "id"}], submitted_by="ana", known_datasets={"orders"}
    )
    [entry] = quality_overview(storage, descriptor_rules)
    assert entry["origin"] == "control"
    assert [r["rule"] for r in entry["results"]] == ["unique_id"]  # the dropped rule's result goes
    assert entry["status"] == "pass"


def test_discovery_shows_the_checks_of_the_published_run_without_values(storage: Storage) -> None:
    rules = parse_rules([{"not_null": "customer_id", "severity": "warn"}, {"unique": "id"}])
    with storage.transaction() as cursor:
        record_results(cursor, run_checks(cursor, "output", "orders", rules, run_id="published"))
        failing = parse_rules([{"range": {"column": "amount", "min": 0}}])
        record_results(cursor, run_checks(cursor, "output", "orders", failing, run_id="refused"))
    with storage.reader() as cursor:
        shown = published_quality(cursor, "orders", "published", rules)
        never = published_quality(cursor, "orders", "not-checked", rules)
    assert shown["status"] == "warn"
    assert shown["rules"] == [{"not_null": "customer_id", "severity": "warn"}, {"unique": "id"}]
    assert [(r["rule"], r["status"]) for r in shown["results"]] == [
        ("not_null_customer_id", "fail"),
        ("unique_id", "pass"),
    ]
    assert not {"samples", "sql", "message"} & set(shown["results"][0])
    assert (never["status"], never["results"]) == ("unknown", [])


def test_checked_at_and_timing_are_recorded(storage: Storage) -> None:
    before = datetime.now(UTC)
    result = only(check(storage, {"not_null": "id"}))
    assert before <= result.checked_at <= datetime.now(UTC)
    assert timedelta(0) <= timedelta(seconds=result.seconds) < timedelta(seconds=30)
