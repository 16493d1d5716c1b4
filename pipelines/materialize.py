"""How a model's rows land: a table, a view, an incremental table, a versioned dataset.

Each function runs inside the run's transaction. An output table is first built under a
candidate name, checked, and only then put in place: if its schema breaks consumers
(a column removed or retyped), the previous table stays readable as an older major
version of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

from dataproduct.catalog import PublishedDataset, retire_version, table_columns, table_exists
from dataproduct.descriptor import normalize_type
from dataproduct.errors import ValidationError
from dataproduct.storage import fetch_value
from pipelines.planner import Step

Execute = Callable[[str], None]
CANDIDATE_PREFIX = "__dp_next_"
_NEW_ROWS = "__dp_new_rows"


def table(layer: str, name: str) -> exp.Table:
    """A quoted `layer.name` table reference."""
    return exp.table_(name, db=layer, quoted=True)


def materialize(
    cursor: duckdb.DuckDBPyConnection, step: Step, execute: Execute, *, full_refresh: bool
) -> exp.Table:
    """Build the model's rows; return the table (or view) that holds them now."""
    model = step.model
    query = sqlglot.parse_one(step.sql, dialect="duckdb")
    assert isinstance(query, exp.Query), "the planner admits only queries"
    target = table(model.layer, model.name)
    exists = table_exists(cursor, model.layer, model.name)
    if model.materialized == "view":
        execute(exp.Create(this=target, kind="VIEW", replace=True, expression=query).sql("duckdb"))
        return target
    if model.incremental and exists and not full_refresh:
        _add_increment(cursor, step, query, target, execute)
        return target
    if model.layer == "output" and exists:
        target = table("output", CANDIDATE_PREFIX + model.name)
    execute(exp.Create(this=target, kind="TABLE", replace=True, expression=query).sql("duckdb"))
    return target


def _add_increment(
    cursor: duckdb.DuckDBPyConnection,
    step: Step,
    query: exp.Query,
    target: exp.Table,
    execute: Execute,
) -> None:
    """Append the rows past the high-water mark, or merge them on the unique key."""
    model = step.model
    new_rows = exp.select("*").from_(query.subquery("model"))
    if model.cursor:
        mark = exp.select(exp.func("max", exp.column(model.cursor, quoted=True))).from_(target)
        new_rows = new_rows.where(
            exp.or_(
                exp.column(model.cursor, "model", quoted=True) > mark.subquery(),
                exp.Is(this=mark.subquery(), expression=exp.null()),
            )
        )
    staged = exp.to_identifier(_NEW_ROWS)
    temporary = exp.Properties(expressions=[exp.TemporaryProperty()])
    create = exp.Create(
        this=staged, kind="TABLE", replace=True, expression=new_rows, properties=temporary
    )
    execute(create.sql("duckdb"))
    try:
        if model.unique_key:
            keys = [exp.column(k, quoted=True) for k in model.unique_key]
            matching = exp.select(*keys).from_(staged)
            condition = exp.In(this=exp.Tuple(expressions=keys), query=matching.subquery())
            execute(exp.delete(target, where=condition).sql("duckdb"))
        insert = exp.Insert(this=target, expression=exp.select("*").from_(staged), by_name=True)
        try:
            execute(insert.sql("duckdb"))
        except duckdb.BinderException as error:
            raise ValidationError(
                f"model {model.name}: new rows do not fit {step.target} "
                f"({str(error).splitlines()[0]}); run with full_refresh to rebuild it",
                where=f"model {model.name}",
            ) from None
    finally:
        cursor.execute(drop(exp.to_table(_NEW_ROWS)))


def publish(
    cursor: duckdb.DuckDBPyConnection,
    step: Step,
    built: exp.Table,
    current: PublishedDataset | None,
    keep_versions: int,
) -> int:
    """Put a built output table in place; return the dataset's major version.

    A breaking schema change keeps the previous table readable as the older version and
    drops versions beyond `keep_versions`.
    """
    model = step.model
    version = current.version if current else 1
    if built.name == model.name:
        return version
    final = table("output", model.name)
    if current is not None and breaks_consumers(
        current.columns, table_columns(cursor, "output", built.name)
    ):
        retired = f"{model.name}__v{current.version}"
        _rename(cursor, final, retired)
        for expired in retire_version(cursor, current, retired, keep_versions):
            cursor.execute(drop(table("output", expired)))
        version = current.version + 1
    else:
        cursor.execute(drop(final))
    _rename(cursor, built, model.name)
    return version


def breaks_consumers(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> bool:
    """A column removed (or renamed) or retyped breaks consumers; a new column does not."""
    types = {c["name"]: normalize_type(c["type"]) for c in after}
    return any(
        c["name"] not in types or types[c["name"]] != normalize_type(c["type"]) for c in before
    )


def _rename(cursor: duckdb.DuckDBPyConnection, source: exp.Table, name: str) -> None:
    rename = exp.Alter(
        this=source,
        kind="TABLE",
        actions=[exp.AlterRename(this=exp.to_table(name, quoted=True))],
    )
    cursor.execute(rename.sql("duckdb"))


def drop(target: exp.Table, kind: str = "TABLE") -> str:
    """`DROP <kind> IF EXISTS target`, as SQL."""
    return exp.Drop(tables=[target], kind=kind, exists=True).sql("duckdb")


def row_count(cursor: duckdb.DuckDBPyConnection, built: exp.Table) -> int:
    """How many rows a built table or view holds."""
    return int(fetch_value(cursor, exp.select("count(*)").from_(built).sql("duckdb")) or 0)
