"""The SQL guard: admits only what injected SQL may do, and fails closed.

Injected SQL (pipeline models, output-port queries) is parsed with sqlglot and checked by
a list of small rules. Each rule looks at the syntax tree and reports violations with
its name, a message and the line and column. Anything sqlglot cannot parse, or parses
as an opaque command, is refused. Behind the guard, DuckDB itself is locked down (see
`storage.locked_config`), so a bypass still cannot touch files, network or extensions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

READABLE_LAYERS = ("input", "staging", "output")

_DENIED_PREFIXES = (
    "read_", "duckdb_", "pragma_", "sniff_", "parquet_", "iceberg_", "delta_", "sqlite_",
    "postgres_", "mysql_", "json_execute", "icu_", "test_", "enable_", "disable_",
)  # fmt: skip
_DENIED_NAMES = frozenset(
    {
        "getenv", "current_setting", "glob", "query", "query_table", "checkpoint",
        "force_checkpoint", "which_secret", "load_extension", "install_extension",
        "read_text", "read_blob", "file", "current_database", "current_catalog",
        "current_schema", "current_schemas", "set_config", "pg_read_file", "system",
        "summary", "seq_scan", "index_scan", "repeat_row",
    }
)  # fmt: skip
_ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

_FORBIDDEN_NODES: tuple[type[exp.Expr], ...] = (
    exp.Create, exp.Drop, exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Alter,
    exp.Command, exp.Pragma, exp.Set, exp.Copy, exp.Attach, exp.Detach, exp.Use,
    exp.Transaction, exp.Commit, exp.Rollback, exp.Export, exp.Install, exp.LoadData,
)  # fmt: skip


@dataclass(frozen=True)
class Violation:
    """One reason a statement is refused, and where."""

    rule: str
    message: str
    line: int | None = None
    column: int | None = None
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        body = {
            "rule": self.rule,
            "message": self.message,
            "line": self.line,
            "column": self.column,
        }
        return {"model": self.model, **body} if self.model else body

    def in_model(self, model: str) -> Violation:
        """The same violation, attributed to a pipeline model."""
        return replace(self, model=model)

    def __str__(self) -> str:
        where = f" at line {self.line}, column {self.column}" if self.line else ""
        return f"{self.rule}: {self.message}{where}"


@dataclass(frozen=True)
class GuardContext:
    """What the SQL being checked may read."""

    readable_layers: tuple[str, ...] = READABLE_LAYERS
    dialect: str = "duckdb"


class Rule(Protocol):
    """A named check over a parsed statement."""

    name: str

    def check(self, tree: exp.Expr, context: GuardContext) -> Iterator[Violation]:
        """Yield every violation found in the tree."""
        ...


def position(node: exp.Expr) -> tuple[int | None, int | None]:
    """Line and column where a node starts: the earliest token of the node or its children."""
    found: list[tuple[int, int]] = []
    for candidate in node.walk():
        meta = candidate.meta if isinstance(candidate, exp.Expr) else {}
        line, col = meta.get("line"), meta.get("col")
        if isinstance(line, int) and isinstance(col, int):
            end, start = meta.get("end"), meta.get("start")
            if isinstance(end, int) and isinstance(start, int):
                col = col - (end - start)  # sqlglot marks the token's last column
            found.append((line, col))
    if found:
        return min(found)
    return None, None


def _violation(rule: str, message: str, node: exp.Expr) -> Violation:
    line, column = position(node)
    return Violation(rule, message, line, column)


class OnlyQueries:
    """The statement is a query: SELECT, set operations, VALUES; no DDL, DML or commands."""

    name = "only_queries"

    def check(self, tree: exp.Expr, context: GuardContext) -> Iterator[Violation]:
        if not isinstance(tree, exp.Query):
            kind = type(tree).__name__.upper()
            yield Violation(self.name, f"only a query is allowed here, not {kind}", 1, 1)
            return
        for node in tree.find_all(*_FORBIDDEN_NODES):
            kind = type(node).__name__.upper()
            yield _violation(self.name, f"{kind} is not allowed inside a query", node)


class NoOutsideFunctions:
    """No function that reads files, environment, settings or system state."""

    name = "no_outside_functions"

    def check(self, tree: exp.Expr, context: GuardContext) -> Iterator[Violation]:
        for node in tree.find_all(exp.Func):
            name = function_name(node)
            if name in _DENIED_NAMES or name.startswith(_DENIED_PREFIXES):
                yield _violation(self.name, f"function {name}() is not allowed", node)


class OnlyLayerTables:
    """Tables are the product's own: a readable layer, a CTE, or an allowed generator."""

    name = "only_layer_tables"

    def check(self, tree: exp.Expr, context: GuardContext) -> Iterator[Violation]:
        for table in tree.find_all(exp.Table):
            yield from self._check_table(table, ctes_in_scope(table), context)

    def _check_table(
        self, table: exp.Table, cte_names: set[str], context: GuardContext
    ) -> Iterator[Violation]:
        source = table.this
        if not isinstance(source, exp.Identifier):
            name = function_name(source) if isinstance(source, exp.Func) else type(source).__name__
            if name not in _ALLOWED_TABLE_FUNCTIONS:
                yield _violation(self.name, f"table function {name}() is not allowed", table)
            return
        name = source.this
        if any(mark in name for mark in ("/", "\\", ":", "*", ".")):
            yield _violation(self.name, f"'{name}' looks like a path or URL, not a table", table)
            return
        if table.catalog:
            yield _violation(self.name, f"catalog '{table.catalog}' is not allowed", table)
            return
        layer = table.db.lower()
        if not layer:
            if name.lower() not in cte_names:
                layers = ", ".join(f"{lay}.{name}" for lay in context.readable_layers)
                yield _violation(self.name, f"table '{name}' must name its layer ({layers})", table)
            return
        if layer not in context.readable_layers:
            allowed = ", ".join(context.readable_layers)
            yield _violation(
                self.name, f"layer '{layer}' is not readable here (allowed: {allowed})", table
            )


def ctes_in_scope(table: exp.Table) -> set[str]:
    """Names of the CTEs a table reference can mean where it stands, as the engine scopes them.

    A CTE is visible in the body of its query and in the CTEs defined after it; in its own
    body only in the recursive term (right of UNION) of a WITH RECURSIVE. Anywhere else the
    name means a real table: `WITH duckdb_tables AS (SELECT * FROM duckdb_tables)` reads
    the system view.
    """
    names: set[str] = set()
    below: exp.Expr | None = None
    child: exp.Expr = table
    parent = table.parent
    in_recursive_term = False
    while parent is not None:
        if isinstance(parent, exp.CTE):
            in_recursive_term = isinstance(child, exp.Union) and below is child.expression
        elif isinstance(parent, exp.With) and isinstance(child, exp.CTE):
            siblings = parent.expressions
            index = next(i for i, cte in enumerate(siblings) if cte is child)
            names.update(cte.alias_or_name.lower() for cte in siblings[:index])
            if parent.args.get("recursive") and in_recursive_term:
                names.add(child.alias_or_name.lower())
        elif isinstance(parent, exp.Query) and not isinstance(child, exp.With):
            names.update(cte.alias_or_name.lower() for cte in parent.ctes)
        below, child, parent = child, parent, parent.parent
    return names


def function_name(node: exp.Expr) -> str:
    """The lower-case SQL name of a function node."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return type(node).__name__.lower()


DEFAULT_RULES: tuple[Rule, ...] = (OnlyQueries(), NoOutsideFunctions(), OnlyLayerTables())


@dataclass(frozen=True)
class GuardResult:
    """The parsed statement (when there is one) and every violation found."""

    sql: str
    tree: exp.Expr | None
    violations: tuple[Violation, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when the statement may run."""
        return self.tree is not None and not self.violations


class SqlGuard:
    """Checks one statement against a list of rules."""

    def __init__(self, rules: Sequence[Rule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)

    def check(self, sql: str, context: GuardContext | None = None) -> GuardResult:
        """Parse `sql` and report every violation; never raises for bad SQL."""
        context = context or GuardContext()
        try:
            parsed = sqlglot.parse(sql, read=context.dialect)
            # a comment after the last `;` parses as a bare Semicolon: not a statement
            statements = [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]
        except ParseError as error:
            first = error.errors[0] if error.errors else {}
            message = str(first.get("description") or error).splitlines()[0]
            line, col, token = first.get("line"), first.get("col"), first.get("highlight")
            if isinstance(col, int) and token and "\n" not in token:
                col = col - len(token) + 1  # sqlglot marks the token's last column
            violation = Violation("parse", message, line, col)
            return GuardResult(sql, None, (violation,))
        except TokenError as error:
            return GuardResult(sql, None, (Violation("parse", str(error)),))
        if len(statements) != 1:
            message = f"exactly one statement is allowed, found {len(statements)}"
            return GuardResult(sql, None, (Violation("single_statement", message),))
        tree = statements[0]
        violations = tuple(v for rule in self.rules for v in rule.check(tree, context))
        return GuardResult(sql, tree, violations)
