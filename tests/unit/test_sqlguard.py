"""The SQL guard, driven by fixture files of allowed and refused statements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlglot import exp

from dataproduct.errors import SqlRejectedError
from dataproduct.sqlguard import GuardContext, SqlGuard, Violation
from dataproduct.storage import Storage, memory_connection

SQL_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sql"
SEPARATOR = re.compile(r"^-- next[ \t]*$", re.MULTILINE)
EXPECT = re.compile(r"^-- expect: (?P<rule>\w+)(?: at (?P<line>\d+):(?P<column>\d+))?[ \t]*$")
RULES = {"parse", "single_statement", "only_queries", "no_outside_functions", "only_layer_tables"}

# Tables the allowed statements read, so that each one also runs on the locked engine.
SCHEMA = (
    "CREATE TABLE input.orders (order_id INTEGER, customer_id VARCHAR, order_date DATE,"
    " amount DOUBLE, status VARCHAR, x VARCHAR)",
    "INSERT INTO input.orders VALUES (1, 'C1', DATE '2026-01-05', 120.0, 'paid', NULL),"
    " (2, 'C1', DATE '2026-02-01', 5.0, 'paid', NULL),"
    " (3, 'C2', DATE '2026-02-03', 30.0, 'shipped', NULL)",
    "CREATE TABLE input.customers AS SELECT * FROM (VALUES ('C1', 'Ana'), ('C2', 'Ben'),"
    " ('C3', 'Chloé')) AS c(customer_id, name)",
    "CREATE TABLE staging.orders_clean AS SELECT * FROM input.orders WHERE status = 'paid'",
    "CREATE TABLE output.customer_revenue AS SELECT customer_id, sum(amount) AS revenue"
    " FROM input.orders GROUP BY ALL",
    'CREATE TABLE input."Odd Table" ("Order Id" INTEGER, "select" VARCHAR, "Größe" DOUBLE,'
    ' "顧客" VARCHAR)',
    "INSERT INTO input.\"Odd Table\" VALUES (1, 'a', 1.5, '山田')",
)


@dataclass(frozen=True)
class Refused:
    """A statement of refused.sql and what the guard must say about it."""

    sql: str
    rule: str
    line: int | None
    column: int | None


def _chunks(name: str) -> Iterator[str]:
    text = (SQL_FIXTURES / name).read_text(encoding="utf-8")
    for chunk in SEPARATOR.split(text):
        if chunk.strip():
            yield chunk.strip("\n")


def allowed_statements() -> list[str]:
    """Every statement of allowed.sql."""
    return list(_chunks("allowed.sql"))


def refused_statements() -> list[Refused]:
    """Every statement of refused.sql with its `-- expect:` line."""
    cases = []
    for chunk in _chunks("refused.sql"):
        lines = chunk.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith("-- expect:"))
        found = EXPECT.match(lines[index])
        assert found, f"malformed expect line: {lines[index]!r}"
        line, column = found["line"], found["column"]
        cases.append(
            Refused(
                "\n".join(lines[index + 1 :]),
                found["rule"],
                int(line) if line else None,
                int(column) if column else None,
            )
        )
    return cases


ALLOWED = allowed_statements()
REFUSED = refused_statements()


@pytest.fixture(scope="module")
def engine() -> Iterator[Storage]:
    """A locked in-memory database holding the tables the allowed statements read."""
    storage = Storage(memory_connection())
    with storage.transaction() as cursor:
        for statement in SCHEMA:
            cursor.execute(statement)
    yield storage
    storage.close()


def test_fixture_files_are_large_enough() -> None:
    assert len(ALLOWED) >= 20
    assert len(REFUSED) >= 40
    assert {case.rule for case in REFUSED} == RULES


@pytest.mark.parametrize("sql", ALLOWED, ids=[f"allowed-{i:02d}" for i in range(len(ALLOWED))])
def test_allowed_statement_passes(sql: str) -> None:
    result = SqlGuard().check(sql)
    assert result.violations == ()
    assert result.ok
    assert isinstance(result.tree, exp.Query)


@pytest.mark.parametrize("sql", ALLOWED, ids=[f"allowed-{i:02d}" for i in range(len(ALLOWED))])
def test_allowed_statement_runs_on_the_locked_engine(sql: str, engine: Storage) -> None:
    """What the guard admits is real DuckDB SQL, not just something sqlglot can parse."""
    tree = SqlGuard().check(sql).tree
    assert tree is not None
    with engine.reader() as cursor:
        cursor.execute(tree.sql("duckdb")).fetchall()


@pytest.mark.parametrize(
    "case", REFUSED, ids=[f"refused-{i:02d}-{c.rule}" for i, c in enumerate(REFUSED)]
)
def test_refused_statement_names_its_rule(case: Refused) -> None:
    result = SqlGuard().check(case.sql)
    assert not result.ok
    fired = [v for v in result.violations if v.rule == case.rule]
    assert fired, f"expected {case.rule}, got {[str(v) for v in result.violations]}"
    if case.line is not None:
        positions = [(v.line, v.column) for v in fired]
        assert (case.line, case.column) in positions


def test_every_violation_is_reported_with_its_position() -> None:
    sql = "SELECT getenv('HOME') AS h\nFROM meta.runs\nJOIN read_csv('/etc/passwd') AS r ON true"
    violations = SqlGuard().check(sql).violations
    found = {(v.rule, v.line, v.column) for v in violations}
    assert ("no_outside_functions", 1, 8) in found
    assert ("only_layer_tables", 2, 6) in found
    assert ("no_outside_functions", 3, 6) in found
    assert ("only_layer_tables", 3, 6) in found


def test_output_context_refuses_input_and_staging() -> None:
    context = GuardContext(readable_layers=("output",))
    guard = SqlGuard()
    assert guard.check("SELECT * FROM output.customer_revenue", context).ok
    for layer in ("input", "staging"):
        result = guard.check(f"SELECT *\nFROM   {layer}.orders", context)
        assert [(v.rule, v.line, v.column) for v in result.violations] == [
            ("only_layer_tables", 2, 8)
        ]
        assert f"layer '{layer}' is not readable here (allowed: output)" in str(
            result.violations[0]
        )


def test_default_context_reads_every_layer_but_meta() -> None:
    guard = SqlGuard()
    for layer in ("input", "staging", "output"):
        assert guard.check(f"SELECT * FROM {layer}.t").ok
    assert not guard.check("SELECT * FROM meta.t").ok


def test_unqualified_table_message_names_the_layers() -> None:
    context = GuardContext(readable_layers=("staging", "output"))
    (violation,) = SqlGuard().check("SELECT * FROM orders", context).violations
    assert violation.message == "table 'orders' must name its layer (staging.orders, output.orders)"


def test_multiple_statements_report_how_many() -> None:
    (violation,) = SqlGuard().check("SELECT 1; -- ok\nDROP TABLE output.a").violations
    assert violation.message == "exactly one statement is allowed, found 2"


def test_unparseable_sql_has_no_tree_and_never_raises() -> None:
    for sql in ("SELECT FROM WHERE", "SELECT 'open", "SELECT (1", ")))"):
        result = SqlGuard().check(sql)
        assert result.tree is None
        assert [v.rule for v in result.violations] == ["parse"]


def test_violation_renders_its_position() -> None:
    (first, _) = SqlGuard().check("SELECT * FROM read_csv('x.csv')").violations
    expected = "no_outside_functions: function read_csv() is not allowed at line 1, column 15"
    assert str(first) == expected
    assert first.to_dict() == {
        "rule": "no_outside_functions",
        "message": "function read_csv() is not allowed",
        "line": 1,
        "column": 15,
    }
    assert first.in_model("m").to_dict()["model"] == "m"
    assert str(Violation("parse", "bad")) == "parse: bad"


def test_a_guard_with_no_rules_still_requires_one_parseable_statement() -> None:
    guard = SqlGuard(rules=())
    assert guard.check("DROP TABLE output.a").ok
    assert not guard.check("SELECT 1; SELECT 2").ok
    assert not guard.check("SELECT FROM WHERE").ok


def test_refused_cte_tricks_would_really_leak_on_the_engine(engine: Storage) -> None:
    """The CTE cases of refused.sql are no theory: unguarded, they read the system catalog."""
    sql = "WITH duckdb_tables AS (SELECT * FROM duckdb_tables) SELECT table_name FROM duckdb_tables"
    assert not SqlGuard().check(sql).ok
    with engine.reader() as cursor:
        names = {row[0] for row in cursor.execute(sql).fetchall()}
    assert "orders" in names


def test_engine_refuses_what_slips_past_a_guard_without_rules(engine: Storage) -> None:
    """Defence in depth: even an empty rule list cannot make the engine read files."""
    result = SqlGuard(rules=()).check("SELECT * FROM read_csv('/etc/hostname')")
    assert result.tree is not None
    with pytest.raises(SqlRejectedError, match="not allowed"), engine.reader() as cursor:
        cursor.execute(result.tree.sql("duckdb")).fetchall()
