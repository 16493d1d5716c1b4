"""Column lineage from the SQL: through CTEs, joins, aggregates, windows and unions, back to the
input sources, with star expansion when columns are known and unknowns reported, not raised."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from dataproduct.cli import example_dir
from dataproduct.descriptor import load_descriptor
from pipelines import lineage as lineage_module
from pipelines.lineage import column_lineage, lineage_document, table_lineage
from pipelines.model import Model, Pipeline
from pipelines.planner import Plan, plan_pipeline
from tests.unit.runtime_helpers import EXAMPLE_INPUT_SCHEMAS

SOURCES = {"orders", "customers"}
SCHEMAS = EXAMPLE_INPUT_SCHEMAS
Edges = dict[str, set[tuple[str, str, str]]]


def plan_of(*models: tuple[str, str, str]) -> Plan:
    """The plan of a pipeline of (name, layer, sql) triples."""
    return plan_pipeline(Pipeline(tuple(Model(n, sql, layer) for n, layer, sql in models)), SOURCES)


def edges(lineage: dict[str, Any], target: str, key: str = "sources") -> Edges:
    """Per output column of `target`: {(table, column, transformation)}."""
    return {
        name: {(r["table"], r["column"], r["transformation"]) for r in column[key]}
        for name, column in lineage[target]["columns"].items()
    }


def one(sql: str, schemas: dict[str, dict[str, str]] | None = SCHEMAS) -> Edges:
    """The direct column lineage of a single output model."""
    return edges(column_lineage(plan_of(("m", "output", sql)), schemas), "output.m")


@pytest.fixture(scope="module")
def example_plan() -> Plan:
    """The embedded example product's pipeline, planned."""
    descriptor = load_descriptor(example_dir())
    return plan_pipeline(Pipeline.from_specs(descriptor.pipeline), set(descriptor.sources))


ORDERS_CLEAN = {
    "order_id": {("input.orders", "order_id", "identity")},
    "customer_id": {("input.orders", "customer_id", "identity")},
    "order_date": {("input.orders", "order_date", "identity")},
    "amount": {("input.orders", "amount", "expression")},
    "status": {("input.orders", "status", "identity")},
}


def test_example_product_column_edges(example_plan: Plan) -> None:
    found = column_lineage(example_plan, SCHEMAS)
    assert list(found) == ["staging.orders_clean", "output.customer_revenue", "output.daily_sales"]
    assert edges(found, "staging.orders_clean") == ORDERS_CLEAN
    assert edges(found, "output.customer_revenue") == {
        "customer_id": {("staging.orders_clean", "customer_id", "identity")},
        "name": {("input.customers", "name", "identity")},
        "country": {("input.customers", "country", "identity")},
        "orders": set(),
        "revenue": {("staging.orders_clean", "amount", "aggregation")},
    }
    assert edges(found, "output.daily_sales") == {
        "order_date": {("staging.orders_clean", "order_date", "identity")},
        "country": {("input.customers", "country", "expression")},
        "orders": set(),
        "revenue": {("staging.orders_clean", "amount", "aggregation")},
    }


def test_example_product_origins_go_through_staging_to_inputs(example_plan: Plan) -> None:
    found = column_lineage(example_plan, SCHEMAS)
    assert edges(found, "output.customer_revenue", "origins") == {
        "customer_id": {("input.orders", "customer_id", "identity")},
        "name": {("input.customers", "name", "identity")},
        "country": {("input.customers", "country", "identity")},
        "orders": set(),
        "revenue": {("input.orders", "amount", "aggregation")},
    }
    revenue = found["output.customer_revenue"]["columns"]["revenue"]
    assert revenue["status"] == "ok"
    assert revenue["unknown"] == []
    assert found["output.customer_revenue"]["model"] == "customer_revenue"
    assert found["output.customer_revenue"]["error"] is None


def test_example_product_needs_no_schemas_since_every_column_is_qualified(
    example_plan: Plan,
) -> None:
    assert column_lineage(example_plan) == column_lineage(example_plan, SCHEMAS)


def test_table_lineage_lists_what_each_step_reads(example_plan: Plan) -> None:
    assert table_lineage(example_plan) == [
        {"from": "input.orders", "to": "staging.orders_clean"},
        {"from": "staging.orders_clean", "to": "output.customer_revenue"},
        {"from": "input.customers", "to": "output.customer_revenue"},
        {"from": "staging.orders_clean", "to": "output.daily_sales"},
        {"from": "input.customers", "to": "output.daily_sales"},
    ]


def test_star_expands_with_known_columns_in_table_order() -> None:
    plan = plan_of(
        ("a", "staging", "SELECT * FROM input.orders"),
        ("b", "output", "SELECT * EXCLUDE (currency, status) FROM staging.a"),
    )
    found = column_lineage(plan, SCHEMAS)
    assert list(found["staging.a"]["columns"]) == list(SCHEMAS["input.orders"])
    assert edges(found, "output.b") == {
        c: {("staging.a", c, "identity")}
        for c in ("order_id", "customer_id", "order_date", "amount")
    }
    assert edges(found, "output.b", "origins")["amount"] == {("input.orders", "amount", "identity")}


def test_star_over_unknown_columns_is_unknown_and_does_not_stop_the_rest() -> None:
    plan = plan_of(
        ("a", "staging", "SELECT * FROM input.orders"),
        (
            "b",
            "output",
            "SELECT a.amount, c.name FROM staging.a JOIN input.customers AS c USING (customer_id)",
        ),
    )
    found = column_lineage(plan, {"input.orders": {}})  # no columns: not known
    assert found["staging.a"]["columns"] == {}
    assert "not known" in found["staging.a"]["error"]
    amount = found["output.b"]["columns"]["amount"]
    assert amount["sources"] == [
        {"table": "staging.a", "column": "amount", "transformation": "identity"}
    ]
    assert amount["origins"] == []
    assert amount["status"] == "partial"
    assert "lineage of staging.a unknown" in amount["unknown"][0]
    assert found["output.b"]["columns"]["name"]["status"] == "ok"


def test_ctes_are_traced_through_to_the_tables() -> None:
    assert one(
        "WITH paid AS (SELECT customer_id, amount * 1.2 AS gross FROM input.orders "
        "WHERE status = 'paid'), "
        "totals AS (SELECT customer_id, sum(gross) AS total FROM paid GROUP BY customer_id) "
        "SELECT customer_id AS id, total FROM totals"
    ) == {
        "id": {("input.orders", "customer_id", "identity")},
        "total": {("input.orders", "amount", "aggregation")},
    }


def test_joins_with_aliases_and_using() -> None:
    assert one(
        "SELECT o.order_id, c.name, customer_id, o.amount * 2 AS double_amount "
        "FROM input.orders AS o JOIN input.customers AS c USING (customer_id)"
    ) == {
        "order_id": {("input.orders", "order_id", "identity")},
        "name": {("input.customers", "name", "identity")},
        "customer_id": {
            ("input.orders", "customer_id", "expression"),
            ("input.customers", "customer_id", "expression"),
        },
        "double_amount": {("input.orders", "amount", "expression")},
    }


def test_unqualified_join_columns_without_schemas_are_unknown_per_column() -> None:
    found = column_lineage(
        plan_of(
            (
                "m",
                "output",
                "SELECT o.order_id, name FROM input.orders AS o "
                "JOIN input.customers AS c ON o.customer_id = c.customer_id",
            )
        )
    )
    columns = found["output.m"]["columns"]
    assert columns["order_id"]["status"] == "ok"
    assert columns["name"]["status"] == "unknown"
    assert columns["name"]["unknown"] == ["cannot tell which table column name comes from"]


def test_aggregates() -> None:
    assert one(
        "SELECT customer_id, count(*) AS n, count(DISTINCT order_id) AS orders, "
        "sum(amount) FILTER (WHERE status = 'paid') AS paid, max(order_date) + 1 AS after_last "
        "FROM input.orders GROUP BY ALL"
    ) == {
        "customer_id": {("input.orders", "customer_id", "identity")},
        "n": set(),
        "orders": {("input.orders", "order_id", "aggregation")},
        "paid": {
            ("input.orders", "amount", "aggregation"),
            ("input.orders", "status", "aggregation"),
        },
        "after_last": {("input.orders", "order_date", "aggregation")},
    }


def test_window_functions() -> None:
    assert one(
        "SELECT order_id, sum(amount) OVER (PARTITION BY customer_id ORDER BY order_date) AS run, "
        "row_number() OVER () AS rn FROM input.orders"
    ) == {
        "order_id": {("input.orders", "order_id", "identity")},
        "run": {
            ("input.orders", "amount", "window"),
            ("input.orders", "customer_id", "window"),
            ("input.orders", "order_date", "window"),
        },
        "rn": set(),
    }


def test_unions_take_every_branch() -> None:
    assert one(
        "SELECT customer_id, amount FROM input.orders "
        "UNION ALL SELECT customer_id, 0 FROM input.customers "
        "UNION SELECT 'none', sum(amount) FROM input.orders"
    ) == {
        "customer_id": {
            ("input.orders", "customer_id", "identity"),
            ("input.customers", "customer_id", "identity"),
        },
        "amount": {("input.orders", "amount", "aggregation")},
    }


def test_literals_and_generators_have_no_sources() -> None:
    found = column_lineage(
        plan_of(
            (
                "m",
                "output",
                "WITH days AS (SELECT * FROM range(7) AS r(d)) "
                "SELECT d, 1 AS one, 'x' AS label, current_date AS today FROM days",
            )
        ),
        SCHEMAS,
    )
    for column in found["output.m"]["columns"].values():
        assert column == {"sources": [], "origins": [], "status": "ok", "unknown": []}
    assert list(found["output.m"]["columns"]) == ["d", "one", "label", "today"]


def test_subqueries_in_select_and_from() -> None:
    assert one(
        "SELECT x.customer_id, x.n, (SELECT max(c.name) FROM input.customers AS c "
        "WHERE c.customer_id = x.customer_id) AS name "
        "FROM (SELECT customer_id, count(*) AS n FROM input.orders GROUP BY 1) AS x"
    ) == {
        "customer_id": {("input.orders", "customer_id", "identity")},
        "n": set(),
        "name": {("input.customers", "name", "aggregation")},
    }


def test_transformations_compose_along_the_chain() -> None:
    plan = plan_of(
        ("a", "staging", "SELECT order_id, amount FROM input.orders"),
        ("b", "staging", "SELECT order_id, amount / 100 AS euros FROM staging.a"),
        ("c", "output", "SELECT order_id AS id, sum(euros) AS total FROM staging.b GROUP BY 1"),
    )
    found = column_lineage(plan, SCHEMAS)
    assert edges(found, "staging.b", "origins")["euros"] == {
        ("input.orders", "amount", "expression")
    }
    assert edges(found, "output.c", "origins") == {
        "id": {("input.orders", "order_id", "identity")},
        "total": {("input.orders", "amount", "aggregation")},
    }


def test_column_names_keep_their_case_and_built_tables_name_expressions() -> None:
    sql = (
        "SELECT order_id AS OrderId, upper(name) "
        "FROM input.orders JOIN input.customers USING (customer_id)"
    )
    assert list(column_lineage(plan_of(("m", "output", sql)), SCHEMAS)["output.m"]["columns"]) == [
        "OrderId",
        "_col_1",
    ]
    starred = (
        "SELECT order_id AS OrderId, * EXCLUDE (order_id), amount * 2 AS Twice FROM input.orders"
    )
    columns = column_lineage(plan_of(("m", "output", starred)), SCHEMAS)["output.m"]["columns"]
    assert list(columns) == ["OrderId", *list(SCHEMAS["input.orders"])[1:], "Twice"]
    built = {**SCHEMAS, "output.m": {"OrderId": "BIGINT", "upper(name)": "VARCHAR"}}
    found = column_lineage(plan_of(("m", "output", sql)), built)
    assert edges(found, "output.m") == {
        "OrderId": {("input.orders", "order_id", "identity")},
        "upper(name)": {("input.customers", "name", "expression")},
    }


def test_one_column_failing_in_sqlglot_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lineage_module.lineage

    def flaky(column: Any, *args: Any, **kwargs: Any) -> Any:
        if column is None or column == "bad":
            raise ValueError(f"cannot trace {column}")
        return real(column, *args, **kwargs)

    monkeypatch.setattr(lineage_module, "lineage", flaky)
    found = column_lineage(
        plan_of(("m", "output", "SELECT order_id, amount AS bad FROM input.orders")), SCHEMAS
    )
    columns = found["output.m"]["columns"]
    assert columns["order_id"]["sources"] == [
        {"table": "input.orders", "column": "order_id", "transformation": "identity"}
    ]
    assert columns["bad"] == {
        "sources": [],
        "origins": [],
        "status": "unknown",
        "unknown": ["cannot trace bad"],
    }


def test_lineage_document_is_a_json_graph(example_plan: Plan) -> None:
    document = lineage_document(example_plan, SCHEMAS)
    json.dumps(document)
    nodes = {node["id"]: node for node in document["nodes"]}
    assert [(n["id"], n["kind"], n["model"]) for n in document["nodes"]] == [
        ("input.orders", "source", None),
        ("input.customers", "source", None),
        ("staging.orders_clean", "staging", "orders_clean"),
        ("output.customer_revenue", "output", "customer_revenue"),
        ("output.daily_sales", "output", "daily_sales"),
    ]
    assert nodes["input.customers"]["columns"][1] == {"name": "name", "type": "VARCHAR"}
    assert [c["name"] for c in nodes["output.daily_sales"]["columns"]] == [
        "order_date",
        "country",
        "orders",
        "revenue",
    ]
    assert document["edges"] == table_lineage(example_plan)
    chain = {
        (
            e["from"]["table"],
            e["from"]["column"],
            e["to"]["table"],
            e["to"]["column"],
            e["transformation"],
        )
        for e in document["column_edges"]
    }
    assert ("input.orders", "amount", "staging.orders_clean", "amount", "expression") in chain
    assert (
        "staging.orders_clean",
        "amount",
        "output.customer_revenue",
        "revenue",
        "aggregation",
    ) in chain
    assert len(chain) == len(document["column_edges"]) == 5 + 4 + 3
    assert document["unknown"] == []


def test_lineage_document_lists_what_is_unknown() -> None:
    plan = plan_of(
        ("a", "staging", "SELECT * FROM input.orders"),
        ("b", "output", "SELECT amount FROM staging.a"),
    )
    document = lineage_document(plan, {})
    assert [(u["table"], u["column"]) for u in document["unknown"]] == [
        ("staging.a", None),
        ("output.b", "amount"),
    ]
    assert document["column_edges"] == [
        {
            "from": {"table": "staging.a", "column": "amount"},
            "to": {"table": "output.b", "column": "amount"},
            "transformation": "identity",
        }
    ]


def fifty_models() -> Pipeline:
    """A 50-model chain mixing stars, CTEs, joins, windows, unions and aggregates."""
    shapes = (
        "SELECT * FROM {prev}",
        "WITH t AS (SELECT p.*, c.name FROM {prev} AS p "
        "JOIN input.customers AS c USING (customer_id)) "
        "SELECT order_id, customer_id, order_date, amount * 1.1 AS amount, upper(name) AS name "
        "FROM t",
        "SELECT order_id, customer_id, order_date, "
        "sum(amount) OVER (PARTITION BY customer_id ORDER BY order_date) AS amount, name "
        "FROM {prev} UNION ALL "
        "SELECT order_id, customer_id, order_date, amount, 'none' FROM input.orders",
        "SELECT order_id, customer_id, max(order_date) AS order_date, sum(amount) AS amount, "
        "any_value(name) AS name FROM {prev} GROUP BY ALL",
    )
    models = [Model("m0", "SELECT *, 'x' AS name FROM input.orders WHERE amount > 0", "staging")]
    for i in range(1, 50):
        layer = "output" if i % 10 == 9 else "staging"
        models.append(Model(f"m{i}", shapes[i % 4].format(prev=f"staging.m{i - 1}"), layer))
    # outputs are leaves: the next model reads the staging model before it
    for i in range(10, 50, 10):
        models[i] = Model(f"m{i}", shapes[i % 4].format(prev=f"staging.m{i - 2}"), "staging")
    return Pipeline(tuple(models))


def test_fifty_models_trace_in_well_under_a_second() -> None:
    plan = plan_pipeline(fifty_models(), SOURCES)
    assert len(plan.steps) == 50
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        found = column_lineage(plan, SCHEMAS)
        timings.append(time.perf_counter() - started)
    print(f"column lineage of 50 models: best {min(timings) * 1000:.0f} ms")
    assert min(timings) < 0.5
    assert all(step["error"] is None for step in found.values())
    amount = found["output.m49"]["columns"]["amount"]
    assert amount["status"] == "ok"
    assert {(o["table"], o["column"]) for o in amount["origins"]} == {
        ("input.orders", "amount"),
        ("input.orders", "customer_id"),
        ("input.orders", "order_date"),
    }
