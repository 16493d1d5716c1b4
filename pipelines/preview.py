"""What a plan would build, without building it: each step's predicted columns.

Every model is bound by DuckDB (`DESCRIBE`) with the models it reads inlined as
subqueries, so nothing is written and the prediction holds for a pipeline that never ran.
"""

from __future__ import annotations

from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from dataproduct.storage import Storage
from pipelines.planner import Plan


def predicted_schemas(storage: Storage, plan: Plan) -> dict[str, dict[str, Any]]:
    """For each step's target: `{"columns": [{name, type}]}` or `{"error": reason}`."""
    expanded: dict[str, exp.Query] = {}
    predictions: dict[str, dict[str, Any]] = {}
    with storage.reader() as cursor:
        for step in plan.steps:
            query = _inline(sqlglot.parse_one(step.sql, dialect="duckdb"), expanded)
            expanded[step.target] = query
            predictions[step.target] = _describe(cursor, query)
    return predictions


def _inline(tree: exp.Expr, expanded: dict[str, exp.Query]) -> exp.Query:
    """Replace each table built by an earlier step with that step's (inlined) query."""

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Table) and f"{node.db}.{node.name}" in expanded:
            alias = node.alias or node.name
            return expanded[f"{node.db}.{node.name}"].subquery(alias, copy=True)
        return node

    query = tree.transform(swap)
    assert isinstance(query, exp.Query), "the planner admits only queries"
    return query


def _describe(cursor: duckdb.DuckDBPyConnection, query: exp.Query) -> dict[str, Any]:
    try:
        rows = cursor.execute(f"DESCRIBE {query.sql('duckdb')}").fetchall()
    except duckdb.Error as error:
        return {"error": str(error).strip().splitlines()[0]}
    return {"columns": [{"name": row[0], "type": row[1]} for row in rows]}
