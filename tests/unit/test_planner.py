"""The planner is pure: SQL in, an ordered plan with lineage out, or every problem at once."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.model import Model, Pipeline
from pipelines.planner import PipelineRejectedError, Plan, plan_pipeline

SOURCES = {"orders", "customers"}


def pipeline(*models: tuple[str, str, str]) -> Pipeline:
    """A pipeline of (name, layer, sql) triples, in the order given."""
    return Pipeline(tuple(Model(name, sql, layer) for name, layer, sql in models))


def rejection(candidate: Pipeline, sources: set[str] = SOURCES) -> PipelineRejectedError:
    """The error planning `candidate` raises."""
    with pytest.raises(PipelineRejectedError) as caught:
        plan_pipeline(candidate, sources)
    assert caught.value.status == 422
    assert caught.value.code == "pipeline_rejected"
    return caught.value


def problems(error: PipelineRejectedError) -> list[dict[str, Any]]:
    """Every problem the error lists."""
    found: list[dict[str, Any]] = error.details["problems"]
    return found


# Written in reverse order of what they need: the planner must sort them.
CHAIN = pipeline(
    (
        "report",
        "output",
        "SELECT c.name, t.total FROM staging.totals AS t "
        "JOIN input.customers AS c USING (customer_id)",
    ),
    ("totals", "staging", "SELECT customer_id, sum(amount) AS t FROM staging.clean GROUP BY 1"),
    ("clean", "staging", "SELECT * FROM input.orders WHERE amount > 0"),
)


def test_models_are_ordered_by_what_they_read() -> None:
    plan = plan_pipeline(CHAIN, SOURCES)
    assert [step.model.name for step in plan.steps] == ["clean", "totals", "report"]
    report = plan.steps[2]
    assert report.target == "output.report"
    assert report.reads == ("staging.totals", "input.customers")
    assert report.depends_on == ("totals",)
    assert plan.steps[0].depends_on == ()


def test_plan_lists_table_lineage() -> None:
    assert plan_pipeline(CHAIN, SOURCES).to_dict()["lineage"] == [
        {"from": "input.orders", "to": "staging.clean"},
        {"from": "staging.clean", "to": "staging.totals"},
        {"from": "staging.totals", "to": "output.report"},
        {"from": "input.customers", "to": "output.report"},
    ]


def test_diamond_builds_shared_model_first_and_join_last() -> None:
    plan = plan_pipeline(
        pipeline(
            ("both", "output", "SELECT * FROM staging.left_side, staging.right_side"),
            ("left_side", "staging", "SELECT * FROM staging.base"),
            ("right_side", "staging", "SELECT * FROM staging.base"),
            ("base", "staging", "SELECT * FROM input.orders"),
        ),
        SOURCES,
    )
    order = [step.model.name for step in plan.steps]
    assert order[0] == "base"
    assert order[-1] == "both"
    assert set(order[1:3]) == {"left_side", "right_side"}


def test_ctes_and_generators_are_not_lineage() -> None:
    plan = plan_pipeline(
        pipeline(
            (
                "calendar",
                "output",
                "WITH days AS (SELECT * FROM range(7) AS r(d)) "
                "SELECT d, o.amount FROM days LEFT JOIN input.orders AS o ON o.order_id = d",
            )
        ),
        SOURCES,
    )
    assert plan.steps[0].reads == ("input.orders",)
    assert plan.to_dict()["lineage"] == [{"from": "input.orders", "to": "output.calendar"}]


def test_step_sql_is_the_parsed_statement_not_the_raw_text() -> None:
    plan = plan_pipeline(pipeline(("m", "output", "select  *  from input.orders;")), SOURCES)
    assert plan.steps[0].sql == "SELECT\n  *\nFROM input.orders"
    assert plan.to_dict()["steps"][0] == {
        "model": "m",
        "layer": "output",
        "target": "output.m",
        "sql": "SELECT\n  *\nFROM input.orders",
        "reads": ["input.orders"],
        "depends_on": [],
    }


def test_empty_pipeline_gives_an_empty_plan() -> None:
    assert plan_pipeline(Pipeline(()), SOURCES) == Plan(())


def test_unknown_table_is_refused_with_model_line_and_column() -> None:
    error = rejection(pipeline(("m", "staging", "SELECT *\nFROM   staging.nowhere AS n")))
    assert problems(error) == [
        {
            "model": "m",
            "rule": "unknown_table",
            "message": "staging.nowhere is not built by any model",
            "line": 2,
            "column": 8,
        }
    ]
    assert error.where == "model m, line 2, column 8"


def test_output_table_of_no_model_is_refused() -> None:
    error = rejection(pipeline(("m", "output", "SELECT * FROM output.m2")))
    assert problems(error)[0]["message"] == "output.m2 is not built by any model"


def test_same_name_in_another_layer_is_not_a_dependency() -> None:
    error = rejection(
        pipeline(("a", "staging", "SELECT 1 AS x"), ("b", "output", "SELECT * FROM output.a"))
    )
    assert [(p["model"], p["rule"]) for p in problems(error)] == [("b", "unknown_table")]


def test_unknown_input_source_is_refused() -> None:
    error = rejection(pipeline(("m", "staging", "SELECT * FROM input.orders, input.ghosts")))
    assert problems(error) == [
        {
            "model": "m",
            "rule": "unknown_table",
            "message": "input.ghosts is not a declared source",
            "line": 1,
            "column": 29,
        }
    ]
    assert plan_pipeline(
        pipeline(("m", "staging", "SELECT * FROM input.ghosts")), {"ghosts"}
    ).steps[0].reads == ("input.ghosts",)


def test_cycle_of_two_models_is_refused_naming_the_cycle() -> None:
    error = rejection(
        pipeline(
            ("a", "staging", "SELECT * FROM staging.b"),
            ("b", "staging", "SELECT * FROM staging.a"),
        )
    )
    (problem,) = problems(error)
    assert problem["rule"] == "cycle"
    assert problem["message"] in (
        "models depend on each other: a -> b -> a",
        "models depend on each other: b -> a -> b",
    )
    assert problem["model"] in ("a", "b")


def test_longer_cycle_names_every_model_in_it() -> None:
    error = rejection(
        pipeline(
            ("a", "staging", "SELECT * FROM staging.c"),
            ("b", "staging", "SELECT * FROM staging.a"),
            ("c", "staging", "SELECT * FROM staging.b"),
            ("free", "output", "SELECT * FROM input.orders"),
        )
    )
    (problem,) = problems(error)
    cycle = problem["message"].removeprefix("models depend on each other: ").split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]


def test_self_reference_is_refused() -> None:
    error = rejection(pipeline(("a", "output", "SELECT * FROM output.a")))
    assert [(p["model"], p["rule"], p["message"]) for p in problems(error)] == [
        ("a", "cycle", "a model cannot read its own table")
    ]


def test_duplicate_model_names_are_refused() -> None:
    """Two models of one name (even in two layers) would share one catalog entry."""
    error = rejection(pipeline(("a", "staging", "SELECT 1 AS x"), ("a", "output", "SELECT 2 AS x")))
    assert [(p["model"], p["rule"]) for p in problems(error)] == [("a", "duplicate_model")]


def test_guard_violations_are_attributed_to_their_model() -> None:
    error = rejection(
        pipeline(("ok", "staging", "SELECT 1 AS x"), ("bad", "output", "SELECT getenv('HOME')"))
    )
    assert problems(error) == [
        {
            "model": "bad",
            "rule": "no_outside_functions",
            "message": "function getenv() is not allowed",
            "line": 1,
            "column": 8,
        }
    ]
    assert error.where == "model bad, line 1, column 8"


def test_every_problem_is_reported_not_just_the_first() -> None:
    error = rejection(
        pipeline(
            ("a", "staging", "SELECT * FROM staging.b"),
            ("b", "staging", "SELECT * FROM staging.a"),
            ("ghost_reader", "staging", "SELECT * FROM input.ghosts"),
            ("file_reader", "staging", "SELECT * FROM read_csv('/etc/passwd')"),
            ("broken", "output", "SELECT FROM WHERE"),
            ("writer", "output", "DELETE FROM input.orders"),
            ("twice", "output", "SELECT 1 AS x"),
            ("twice", "staging", "SELECT 2 AS x"),
            ("selfish", "output", "SELECT * FROM output.selfish"),
        )
    )
    found = {(p["model"], p["rule"]) for p in problems(error)}
    cycles = [p for p in problems(error) if p["rule"] == "cycle" and p["model"] in ("a", "b")]
    assert len(cycles) == 1
    assert found - {("a", "cycle"), ("b", "cycle")} == {
        ("ghost_reader", "unknown_table"),
        ("file_reader", "no_outside_functions"),
        ("file_reader", "only_layer_tables"),
        ("broken", "parse"),
        ("writer", "only_queries"),
        ("twice", "duplicate_model"),
        ("selfish", "cycle"),
    }
    assert error.message.endswith(f"(and {len(problems(error)) - 1} more)")
