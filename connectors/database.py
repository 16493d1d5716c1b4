"""Relational databases: a table or a SELECT, fully or incrementally, as Arrow batches.

PostgreSQL is read through ADBC (binary COPY straight into Arrow) and MySQL/MariaDB through
connectorx (Rust, Arrow batches); any other SQLAlchemy URL, or `fast: false`, goes through
SQLAlchemy Core with a server-side cursor, one batch of rows at a time. Every path yields
the same Arrow types (see `connectors.database_fast` for the type mapping).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import ConfigDict, Field, model_validator

from connectors.errors import FailureBox, looks_unreachable, message_lines
from dataproduct.connector import Connector, IncrementalSpec, LoadState, SourceSpec
from dataproduct.errors import SourceError, SourceUnavailableError
from dataproduct.ingest import BATCH_ROWS
from dataproduct.secrets import HIDDEN, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
CONNECT_TIMEOUT_S = 10.0
QUERY_ALIAS = "dataproduct_query"
_SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


class DatabaseSpec(SourceSpec):
    """`{type: database, url: ..., table: orders}` or `{..., query: "SELECT ..."}`.

    `url` is any SQLAlchemy URL; its password may be a `${env:..}`/`${file:..}` reference.
    `incremental.cursor` reads only rows past the last high-water mark, in cursor order.
    `fast: false` forces the generic SQLAlchemy path.
    """

    model_config = ConfigDict(populate_by_name=True)

    type: Literal["database"] = "database"
    url: str = Field(min_length=1)
    table: str | None = Field(default=None, min_length=1)
    db_schema: str | None = Field(default=None, alias="schema", min_length=1)
    query: str | None = Field(default=None, min_length=1)
    incremental: IncrementalSpec | None = None
    batch_rows: int = Field(default=BATCH_ROWS, ge=1, le=10_000_000)
    fast: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> DatabaseSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("set exactly one of 'table' or 'query'")
        if self.db_schema is not None and self.table is None:
            raise ValueError("'schema' goes with 'table', not with 'query'")
        if self.query is not None:
            _check_select(self.query, self.url)
        return self


def _check_select(query: str, url: str) -> None:
    """Refuse anything but one SELECT (when sqlglot can read it; the database judges the rest).

    The query is always run wrapped as a subquery, which no database accepts for DML either.
    """
    import sqlglot
    from sqlglot import exp

    backend = url.split(":", 1)[0].split("+", 1)[0].lower()
    try:
        statements = sqlglot.parse(query, read=_SQLGLOT_DIALECTS.get(backend))
    except sqlglot.errors.SqlglotError:
        return
    found = [s for s in statements if s is not None]
    if len(found) != 1 or not isinstance(found[0], exp.Query):
        raise ValueError("'query' must be a single SELECT statement")


@dataclass
class ReadTarget:
    """Everything one load needs: the resolved URL, the statement and how to report errors."""

    url: URL
    source: str
    what: str  # "table x.y" or "the query"
    where: str
    secrets: list[str] = field(default_factory=list)
    failure: FailureBox = field(default_factory=FailureBox)

    @property
    def url_where(self) -> str:
        """Where the source's URL is in the descriptor (connection errors point there)."""
        return f"sources.{self.source}.url"

    @property
    def backend(self) -> str:
        """postgresql, mysql, mariadb, sqlite, ..."""
        return str(self.url.get_backend_name())

    def clean(self, text: str) -> str:
        """A driver message without the URL's password."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, HIDDEN)
        return text

    def error(self, action: str, error: BaseException, *, connecting: bool = False) -> SourceError:
        """Translate a driver error: transient faults become SourceUnavailableError."""
        detail = self.clean(_driver_message(error))
        transient = looks_unreachable(detail)
        if connecting and not transient:
            return SourceError(f"{action}: {detail}", where=self.url_where)
        kind = SourceUnavailableError if transient else SourceError
        return kind(f"{action}: {detail}", where=self.where)

    def watched(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """The batches; a driver error met while the core drains them is translated and kept
        in `failure` (DuckDB raises its own error over it)."""
        return self.failure.guard(batches, self._read_failed)

    def _read_failed(self, error: BaseException) -> SourceError:
        return self.error(f"reading {self.what} failed", error)


def _driver_message(error: BaseException) -> str:
    orig = getattr(error, "orig", None)  # SQLAlchemy wraps the DBAPI error
    lines = message_lines(orig if orig is not None else error)
    if not lines:
        return type(error).__name__
    first = lines[0]
    return first if len(first) > 20 or len(lines) == 1 else " ".join(lines[:2])


def build_statement(spec: DatabaseSpec, watermark: Any) -> sa.Select[Any]:
    """SELECT * from the table (or the wrapped query), past the watermark, in cursor order.

    Identifiers are always quoted by the dialect; the watermark is a bound parameter named
    `watermark` (the fast paths replace it, see `database_fast`).
    """
    import sqlalchemy as sa
    from sqlalchemy.sql import quoted_name

    source: sa.FromClause
    if spec.table is not None:
        schema = quoted_name(spec.db_schema, True) if spec.db_schema else None
        source = sa.table(quoted_name(spec.table, True), schema=schema)
    else:
        assert spec.query is not None
        text = spec.query.strip().rstrip(";").replace(":", "\\:")
        source = sa.text(text).columns().subquery(QUERY_ALIAS)
    statement: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(source)
    if spec.incremental is not None:
        cursor: sa.ColumnClause[Any] = sa.column(quoted_name(spec.incremental.cursor, True))
        if watermark is not None:
            mark: sa.BindParameter[Any] = sa.bindparam("watermark", watermark)
            # with a unique key, rows at the mark are read again (the merge keeps one of
            # each): a row committed later with the same cursor value is not missed
            past = cursor >= mark if spec.incremental.unique_key else cursor > mark
            statement = statement.where(past)
        statement = statement.order_by(cursor)
    return statement


def check_watermark(watermark: Any, where: str) -> None:
    """Only plain scalars may be compared with the cursor column."""
    if watermark is None or isinstance(watermark, int | float | Decimal | str | date):
        return
    raise SourceError(
        f"cannot compare the cursor with a watermark of type {type(watermark).__name__}",
        where=where,
    )


def probe_server(target: ReadTarget) -> None:
    """Fail fast (and as transient) when nothing listens at the server's address."""
    host = target.url.host
    port = target.url.port or DEFAULT_PORTS.get(target.backend)
    if not host or port is None or host.startswith("/"):
        return
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SourceUnavailableError(
            f"cannot reach the database at {host}:{port}: {reason}", where=target.url_where
        ) from None


def _engine(target: ReadTarget) -> sa.Engine:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    url = target.url
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername in ("mysql", "mariadb"):
        url = url.set(drivername=f"{url.drivername}+pymysql")
    return sa.create_engine(url, poolclass=NullPool)


def _json_as_text(connection: sa.Connection) -> None:
    """psycopg parses json into Python objects; keep the server's text, as ADBC does."""
    from psycopg.types.string import TextLoader

    driver = connection.connection.driver_connection
    adapters = getattr(driver, "adapters", None)
    if adapters is not None:  # psycopg 3 (psycopg2 has no adapters map)
        for name in ("json", "jsonb"):
            adapters.register_loader(name, TextLoader)


@contextmanager
def open_connection(target: ReadTarget) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection to the target (UTC session, JSON kept as text); the
    engine is disposed of afterwards."""
    engine = _engine(target)
    try:
        try:
            connection = engine.connect()
        except Exception as error:  # noqa: BLE001 - drivers raise their own classes
            shown = target.url.render_as_string(hide_password=True)
            raise target.error(f"cannot connect to {shown}", error, connecting=True) from None
        with connection:
            if target.backend in ("mysql", "mariadb"):
                connection.exec_driver_sql("SET time_zone = '+00:00'")
            elif target.backend == "postgresql":
                _json_as_text(connection)
            yield connection
    finally:
        engine.dispose()


class DatabaseConnector(Connector):
    """Reads a table or a SELECT from PostgreSQL, MySQL/MariaDB or any SQLAlchemy URL."""

    spec_class = DatabaseSpec

    @property
    def database_spec(self) -> DatabaseSpec:
        """The spec, typed."""
        assert isinstance(self.spec, DatabaseSpec)
        return self.spec

    def open_stream(self, state: LoadState) -> AbstractContextManager[pa.RecordBatchReader]:
        """Connect, run the statement and stream its rows; see the module docstring."""
        return self._stream(state)

    @contextmanager
    def _stream(self, state: LoadState) -> Iterator[pa.RecordBatchReader]:
        import connectors.database_fast as paths

        spec = self.database_spec
        target = self._target()
        check_watermark(state.watermark, target.where)
        probe_server(target)
        statement = build_statement(spec, state.watermark)
        if spec.fast and target.backend == "postgresql":
            opened = paths.adbc_reader(target, statement, state.watermark, spec.batch_rows)
        elif spec.fast and target.backend in ("mysql", "mariadb"):
            opened = paths.connectorx_reader(target, statement, state.watermark, spec.batch_rows)
        else:
            opened = paths.sqlalchemy_reader(target, statement, spec.batch_rows)
        with target.failure.reraise_kept(), opened as reader:  # the cause, not DuckDB's wrapper
            yield reader

    def _target(self) -> ReadTarget:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        spec = self.database_spec
        resolved = self.secret(spec.url)
        where = f"sources.{self.name}"
        try:
            url = make_url(resolved)
        except ArgumentError:
            raise SourceError(
                f"not a database URL: {mask_url(spec.url)}", where=f"{where}.url"
            ) from None
        secrets = [resolved] if url.password else []
        if url.password:
            secrets.append(str(url.password))
        if spec.table is not None:
            name = f"{spec.db_schema}.{spec.table}" if spec.db_schema else spec.table
            return ReadTarget(url, self.name, f"table {name}", f"{where}.table", secrets)
        return ReadTarget(url, self.name, "the query", f"{where}.query", secrets)

    def describe(self) -> dict[str, Any]:
        """Type, mode, URL without password, and what is read."""
        spec = self.database_spec
        found = {**super().describe(), "url": mask_url(spec.url), "fast": spec.fast}
        if spec.table is not None:
            found["table"] = spec.table
            if spec.db_schema:
                found["schema"] = spec.db_schema
        else:
            found["query"] = spec.query
        return found
