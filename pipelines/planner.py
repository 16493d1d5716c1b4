"""The planner: parse, guard, order and derive lineage. Pure: no database, no I/O.

A plan is frozen: the ordered steps with the exact SQL that will run and the tables
each step reads. A pipeline with any problem gives no plan but every problem, each
naming the model, the rule, the line and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import Any

from sqlglot import exp
from sqlglot.errors import ErrorLevel, UnsupportedError

from dataproduct.errors import NotFoundError, SqlRejectedError
from dataproduct.sqlguard import GuardContext, GuardResult, SqlGuard, Violation, position
from pipelines.model import Model, Pipeline


@dataclass(frozen=True)
class Step:
    """One model to build, with the SQL that will run and what it reads."""

    model: Model
    sql: str
    reads: tuple[str, ...]
    depends_on: tuple[str, ...]

    @property
    def target(self) -> str:
        """The table it builds: `layer.name`."""
        return f"{self.model.layer}.{self.model.name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "model": self.model.name,
            "layer": self.model.layer,
            "target": self.target,
            "sql": self.sql,
            "reads": list(self.reads),
            "depends_on": list(self.depends_on),
        }


@dataclass(frozen=True)
class Plan:
    """Ordered steps of a valid pipeline; `complete` when it holds every model."""

    steps: tuple[Step, ...]
    complete: bool = True

    def select(self, models: list[str], downstream: bool = False) -> Plan:
        """Only the named models (and, with `downstream`, every model that reads them)."""
        known = {step.model.name for step in self.steps}
        unknown = [name for name in models if name not in known]
        if unknown:
            names = ", ".join(sorted(known))
            raise NotFoundError(
                f"no model {', '.join(unknown)} in the pipeline; models: {names}", where="models"
            )
        chosen = set(models)
        if downstream:
            for step in self.steps:  # in order, so a reader comes after what it reads
                if chosen & set(step.depends_on):
                    chosen.add(step.model.name)
        steps = tuple(step for step in self.steps if step.model.name in chosen)
        return Plan(steps, complete=len(steps) == len(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with table-level lineage."""
        return {
            "steps": [step.to_dict() for step in self.steps],
            "lineage": [
                {"from": source, "to": step.target} for step in self.steps for source in step.reads
            ],
        }


class PipelineRejectedError(SqlRejectedError):
    """The pipeline has problems; `details.problems` lists every one."""

    code = "pipeline_rejected"

    def __init__(self, problems: list[Violation]) -> None:
        first = problems[0]
        where = f"model {first.model}"
        if first.line:
            where += f", line {first.line}, column {first.column}"
        summary = f"{first.rule}: {first.message}"
        if len(problems) > 1:
            summary += f" (and {len(problems) - 1} more)"
        super().__init__(
            f"pipeline rejected: {summary}",
            where=where,
            problems=[p.to_dict() for p in problems],
        )


def plan_pipeline(pipeline: Pipeline, sources: set[str], guard: SqlGuard | None = None) -> Plan:
    """Check every model and order them; raise PipelineRejectedError with every problem."""
    guard = guard or SqlGuard()
    targets = {(m.layer, m.name): m for m in pipeline.models}
    problems: list[Violation] = []
    parsed: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    names = [m.name for m in pipeline.models]
    for repeated in sorted({n for n in names if names.count(n) > 1}):
        message = f"{names.count(repeated)} models are named '{repeated}'; names must be unique"
        problems.append(Violation("duplicate_model", message, model=repeated))
    for model in pipeline.models:
        result = guard.check(model.sql, GuardContext(dialect=model.dialect))
        if result.tree is not None and not result.violations and model.dialect != "duckdb":
            result = _transpiled(guard, result.tree, model.dialect)
        problems += [v.in_model(model.name) for v in result.violations]
        if result.tree is None or result.violations:
            continue
        reads, depends, unknown = _references(result.tree, targets, sources)
        problems += [Violation("unknown_table", msg, *pos, model.name) for msg, pos in unknown]
        if model.name in depends:
            problems.append(
                Violation("cycle", "a model cannot read its own table", model=model.name)
            )
        parsed[model.name] = (result.tree.sql("duckdb", pretty=True), reads, depends)
    order, cycle = _order(parsed)
    if cycle is not None:
        problems.append(cycle)
    if problems:
        raise PipelineRejectedError(problems)
    by_name = {m.name: m for m in pipeline.models}
    return Plan(tuple(Step(by_name[n], parsed[n][0], parsed[n][1], parsed[n][2]) for n in order))


def _transpiled(guard: SqlGuard, tree: exp.Expr, dialect: str) -> GuardResult:
    """The model in DuckDB's dialect, guarded again: what runs is what was checked."""
    try:
        duckdb_sql = tree.sql("duckdb", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as error:
        message = f"cannot transpile from {dialect} to duckdb: {error}"
        return GuardResult("", None, (Violation("transpile", message),))
    return guard.check(duckdb_sql, GuardContext(dialect="duckdb"))


def _references(
    tree: exp.Expr, targets: dict[tuple[str, str], Model], sources: set[str]
) -> tuple[tuple[str, ...], tuple[str, ...], list[tuple[str, tuple[int | None, int | None]]]]:
    reads: list[str] = []
    depends: list[str] = []
    unknown = []
    for table in tree.find_all(exp.Table):
        layer, name = table.db.lower(), table.name
        if not layer:
            continue  # a CTE; the guard refused every other unqualified name
        qualified = f"{layer}.{name}"
        if layer == "input":
            if name not in sources:
                unknown.append((f"input.{name} is not a declared source", position(table)))
        elif (layer, name) in targets:
            depends.append(name)
        else:
            unknown.append((f"{qualified} is not built by any model", position(table)))
        if qualified not in reads:
            reads.append(qualified)
    return tuple(reads), tuple(dict.fromkeys(depends)), unknown


def _order(
    parsed: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]],
) -> tuple[list[str], Violation | None]:
    """The build order, or the cycle that prevents one (self-reads are reported apart)."""
    graph = {name: set(info[2]) - {name} for name, info in parsed.items()}
    try:
        return list(TopologicalSorter(graph).static_order()), None
    except CycleError as error:
        cycle = " -> ".join(error.args[1])
        message = f"models depend on each other: {cycle}"
        return [], Violation("cycle", message, model=error.args[1][0])
