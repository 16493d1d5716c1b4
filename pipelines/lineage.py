"""Table- and column-level lineage of a plan, derived from its SQL by sqlglot. Pure: no I/O.

Each step's SQL is qualified against the columns known so far (the schemas given for the
input tables, then the columns each earlier step produces), so `SELECT *` expands and every
column names its table. sqlglot's lineage then gives, for each output column, the columns of
the tables the step reads; those are followed through the steps that build staging tables
back to the input sources.

A column that cannot be traced is reported as unknown with the reason; it never fails the
lineage of the other columns or of the other steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp, parse_one
from sqlglot.errors import SqlglotError
from sqlglot.lineage import Node, lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from pipelines.planner import Plan, Step

log = logging.getLogger("dataproduct.lineage")

DIALECT = "duckdb"
KINDS = ("identity", "expression", "window", "aggregation")
"""Transformation hints, weakest first: a chain of them is as strong as its strongest."""

_FAST: dict[str, Any] = {"copy": False, "trim_selects": False}  # nodes keep whole selects

Schemas = dict[str, dict[str, str]]
Ref = tuple[str, str]  # (layer.table, column)


@dataclass
class ColumnTrace:
    """Where one output column comes from."""

    sources: dict[Ref, str] = field(default_factory=dict)  # read table column -> kind
    origins: dict[Ref, str] = field(default_factory=dict)  # input source column -> kind
    unknown: list[str] = field(default_factory=list)  # why part of it could not be traced

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `status` is ok, partial (some sources unknown) or unknown."""
        status = "ok"
        if self.unknown:
            status = "partial" if self.sources else "unknown"
        return {
            "sources": _refs(self.sources),
            "origins": _refs(self.origins),
            "status": status,
            "unknown": list(dict.fromkeys(self.unknown)),
        }


@dataclass
class StepTrace:
    """The lineage of every column one step builds, or why its columns are unknown."""

    model: str
    columns: dict[str, ColumnTrace] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "model": self.model,
            "columns": {name: trace.to_dict() for name, trace in self.columns.items()},
            "error": self.error,
        }


def table_lineage(plan: Plan) -> list[dict[str, str]]:
    """Every table each step reads, as edges `{from, to}` in plan order."""
    return [{"from": source, "to": step.target} for step in plan.steps for source in step.reads]


def column_lineage(plan: Plan, schemas: Schemas | None = None) -> dict[str, dict[str, Any]]:
    """For every step's target, each output column's sources and input origins.

    `sources` are columns of the tables the step reads; `origins` follow them through the
    tables this plan builds to tables it does not build: the input sources for a complete
    plan (a plan of selected models stops at the staging tables it does not rebuild).
    `schemas` maps `layer.table` to `{column: type}` (columns in table order) for the input
    tables, and optionally for any other table; without it, `SELECT *` over a table and
    unqualified columns in joins cannot be resolved and are reported as unknown.
    """
    return {target: trace.to_dict() for target, trace in trace_plan(plan, schemas).items()}


def trace_plan(plan: Plan, schemas: Schemas | None = None) -> dict[str, StepTrace]:
    """The lineage of each step, by target, with origins followed through earlier steps."""
    tracer = _Tracer(plan, schemas or {})
    return {step.target: tracer.trace(step) for step in plan.steps}


def lineage_document(plan: Plan, schemas: Schemas | None = None) -> dict[str, Any]:
    """The lineage graph for discovery: dataset nodes, table edges and column edges."""
    schemas = schemas or {}
    traces = trace_plan(plan, schemas)
    nodes: dict[str, dict[str, Any]] = {}
    for step in plan.steps:
        for source in step.reads:
            if source not in traces and source not in nodes:
                nodes[source] = _node(source, None, list(schemas.get(source, {})), schemas)
    for step in plan.steps:
        columns = list(traces[step.target].columns) or list(schemas.get(step.target, {}))
        nodes[step.target] = _node(step.target, step, columns, schemas)
    column_edges: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    for target, trace in traces.items():
        if trace.error:
            unknown.append({"table": target, "column": None, "reason": trace.error})
        for name, column in trace.columns.items():
            column_edges += [
                {
                    "from": {"table": table, "column": source},
                    "to": {"table": target, "column": name},
                    "transformation": kind,
                }
                for (table, source), kind in sorted(column.sources.items())
            ]
            unknown += [
                {"table": target, "column": name, "reason": reason}
                for reason in dict.fromkeys(column.unknown)
            ]
    return {
        "nodes": list(nodes.values()),
        "edges": table_lineage(plan),
        "column_edges": column_edges,
        "unknown": unknown,
    }


class _Tracer:
    """Traces steps in plan order, remembering the columns and lineage of each target."""

    def __init__(self, plan: Plan, schemas: Schemas) -> None:
        self.schema = MappingSchema(dialect=DIALECT)
        self.columns: dict[str, list[str]] = {}  # table -> its columns, as spelled
        for table, columns in schemas.items():
            if columns:  # no columns means not known, never an empty table
                self._remember(table, list(columns))
        self.tables = {t.casefold(): t for s in plan.steps for t in (s.target, *s.reads)}
        self.done: dict[str, StepTrace] = {}

    def _remember(self, table: str, columns: list[str]) -> None:
        layer, _, name = table.partition(".")
        self.columns[table] = columns
        self.schema.add_table(exp.table_(name, db=layer, quoted=True), columns, DIALECT)

    def trace(self, step: Step) -> StepTrace:
        """The lineage of one step; later steps follow their origins through it."""
        result = StepTrace(step.model.name)
        try:
            result.columns = self._direct(step)
        except Exception as error:  # one step's lineage never fails the others
            log.debug("lineage of %s failed", step.target, exc_info=True)
            result.error = _short(f"lineage of {step.target} unknown: {error}")
        for column in result.columns.values():
            self._follow(column)
        if result.columns:
            self._remember(step.target, list(result.columns))
        self.done[step.target] = result
        return result

    def _direct(self, step: Step) -> dict[str, ColumnTrace]:
        """Each output column and the columns of the read tables it derives from."""
        tree = parse_one(step.sql, dialect=DIALECT)
        if not isinstance(tree, exp.Query):
            raise ValueError("the step is not a query")
        written = [(s.alias_or_name, _is_star(s)) for s in tree.selects]
        query = self._qualify(tree, step.sql)
        selects = query.selects
        if any(_is_star(s) for s in selects):
            raise ValueError("a * or COLUMNS(...) over columns that are not known")
        read = {c.casefold(): c for t in step.reads for c in self.columns.get(t, [])}
        names = _output_names(written, selects, read, self.columns.get(step.target))
        scope = build_scope(query)
        if scope is None:
            raise ValueError("the step is not a query")
        try:
            nodes = lineage(None, query, self.schema, dialect=DIALECT, scope=scope, **_FAST)
            roots: list[Node | str] = [nodes[s.alias_or_name] for s in selects]
        except (SqlglotError, ValueError, KeyError):  # trace column by column
            roots = [self._one(query, scope, s.alias_or_name) for s in selects]
        return {name: self._collect(root) for name, root in zip(names, roots, strict=True)}

    def _qualify(self, tree: exp.Query, sql: str) -> exp.Query:
        """Columns qualified with their tables and stars expanded, as far as columns are known.

        Without a table's columns, sqlglot cannot tell a column from a select alias of the
        same name used in WHERE or GROUP BY; those references do not change what the
        projections derive from, so the second attempt leaves them alone.
        """
        options: dict[str, Any] = {"validate_qualify_columns": False, "identify": False}
        try:
            return qualify(tree, dialect=DIALECT, schema=self.schema, **options)
        except SqlglotError:
            again = parse_one(sql, dialect=DIALECT)
            assert isinstance(again, exp.Query)
            return qualify(again, DIALECT, schema=self.schema, expand_alias_refs=False, **options)

    def _one(self, query: exp.Query, scope: Scope, name: str) -> Node | str:
        """One column's lineage graph, or why sqlglot could not give it."""
        try:
            return lineage(name, query, self.schema, dialect=DIALECT, scope=scope, **_FAST)
        except (SqlglotError, ValueError, KeyError) as error:
            return _short(str(error))

    def _collect(self, root: Node | str) -> ColumnTrace:
        """Walk a column's lineage graph down to the columns of the tables read."""
        trace = ColumnTrace()
        if isinstance(root, str):
            trace.unknown.append(root)
            return trace
        stack = [(root, "identity")]
        seen: set[tuple[int, str]] = set()
        while stack:
            node, kind = stack.pop()
            if (id(node), kind) in seen:
                continue
            seen.add((id(node), kind))
            expression = node.expression
            if node.name == "*":
                trace.unknown.append("comes through a SELECT * whose columns are not known")
            elif isinstance(expression, exp.Table):
                if expression.db:  # not a generator such as range(7): no table, no source
                    self._leaf(trace, node, expression, kind)
            elif isinstance(expression, exp.Placeholder):
                trace.unknown.append(f"cannot tell which table column {node.name} comes from")
            else:
                if not isinstance(node.source, exp.SetOperation):
                    kind = _stronger(kind, _kind(expression))
                stack += [(child, kind) for child in node.downstream]
        return trace

    def _leaf(self, trace: ColumnTrace, node: Node, table: exp.Table, kind: str) -> None:
        name = f"{table.db}.{table.name}"
        name = self.tables.get(name.casefold(), name)
        column = node.name.rpartition(".")[2]
        if '"' in node.name:  # a quoted name may hold dots
            column = exp.to_column(node.name, dialect=DIALECT).name
        spelled = {c.casefold(): c for c in self.columns.get(name, [])}
        _merge(trace.sources, (name, spelled.get(column.casefold(), column)), kind)

    def _follow(self, column: ColumnTrace) -> None:
        """Origins: sources that are inputs, or the origins of a built table's column."""
        for (table, name), kind in column.sources.items():
            upstream = self.done.get(table)
            if upstream is None:
                _merge(column.origins, (table, name), kind)
                continue
            found = {c.casefold(): c for c in upstream.columns}.get(name.casefold())
            if found is None:
                column.unknown.append(upstream.error or f"{table} has no known column {name}")
                continue
            for origin, deeper in upstream.columns[found].origins.items():
                _merge(column.origins, origin, _stronger(kind, deeper))
            column.unknown += [
                f"via {table}.{found}: {why}" for why in upstream.columns[found].unknown
            ]


def _output_names(
    written: list[tuple[str, bool]],
    selects: list[exp.Expr],
    read: dict[str, str],
    built: list[str] | None,
) -> list[str]:
    """The names of the columns a step builds, spelled as DuckDB will spell them.

    sqlglot lower-cases identifiers and names unnamed expressions `_col_N`. The names as
    written keep their case; a star keeps the case of the columns it expands to; the built
    table's own columns (when given) are exact.
    """
    names = [read.get(s.alias_or_name.casefold(), s.alias_or_name) for s in selects]
    stars = [i for i, (_, star) in enumerate(written) if star]
    # projections before the first star and after the last one keep their place
    head = stars[0] if stars else len(written)
    tail = len(written) - 1 - stars[-1] if stars else 0
    if len(names) >= head + tail:
        for i in range(head):
            names[i] = written[i][0] or names[i]
        for i in range(1, tail + 1):
            names[-i] = written[-i][0] or names[-i]
    if built and len(built) == len(names):
        names = [
            b if b.casefold() == n.casefold() or n.startswith("_col_") else n
            for b, n in zip(built, names, strict=True)
        ]
    return names


def _is_star(select: exp.Expr) -> bool:
    """A projection of columns not listed: `*`, `t.*`, DuckDB's `COLUMNS(...)`."""
    inner = select.unalias()
    return select.is_star or inner.is_star or isinstance(inner, exp.Columns)


def _kind(expression: exp.Expr) -> str:
    """The transformation one projection applies: identity, expression, window, aggregation."""
    inner = expression.unalias()
    if isinstance(inner, exp.Column):
        return "identity"
    if inner.find(exp.Window):
        return "window"
    if inner.find(exp.AggFunc):
        return "aggregation"
    return "expression"


def _stronger(first: str, second: str) -> str:
    return max(first, second, key=KINDS.index)


def _merge(refs: dict[Ref, str], ref: Ref, kind: str) -> None:
    refs[ref] = _stronger(refs.get(ref, kind), kind)


def _refs(refs: dict[Ref, str]) -> list[dict[str, str]]:
    return [
        {"table": table, "column": column, "transformation": kind}
        for (table, column), kind in sorted(refs.items())
    ]


def _node(table: str, step: Step | None, columns: list[str], schemas: Schemas) -> dict[str, Any]:
    layer, _, name = table.partition(".")
    types = {c.casefold(): t for c, t in schemas.get(table, {}).items()}
    return {
        "id": table,
        "layer": layer,
        "name": name,
        "kind": "source" if step is None else layer,
        "model": step.model.name if step else None,
        "columns": [{"name": c, "type": types.get(c.casefold())} for c in columns],
    }


def _short(message: str, limit: int = 300) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."
