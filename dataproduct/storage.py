"""The one owner of a product's DuckDB file.

One writer at a time (a lock around a dedicated cursor, every write in a transaction),
any number of readers on their own cursors, each seeing a consistent snapshot. The
database is opened locked down: SQL that runs on it cannot read files, reach the network,
load extensions, see Python variables or change the configuration. Only connectors touch
the outside world, through a separate engine (`ingest_engine`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from dataproduct.errors import DataproductError, SqlRejectedError, ValidationError

LAYERS = ("input", "staging", "output", "meta")

Connect = Callable[[], duckdb.DuckDBPyConnection]
T = TypeVar("T")


def locked_config(
    temp_dir: Path | None, memory_limit: str | None, threads: int | None
) -> dict[str, Any]:
    """DuckDB settings that forbid external access for everything run on the database."""
    config: dict[str, Any] = {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "python_enable_replacements": False,
    }
    if temp_dir is not None:
        config["temp_directory"] = str(temp_dir)
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = threads
    return config


def file_connection(
    path: Path, memory_limit: str | None = None, threads: int | None = None
) -> Connect:
    """A connection factory for a product's DuckDB file, opened locked down."""

    def connect() -> duckdb.DuckDBPyConnection:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_dir = path.parent / "tmp"
        temp_dir.mkdir(exist_ok=True)
        return duckdb.connect(str(path), config=locked_config(temp_dir, memory_limit, threads))

    return connect


def memory_connection() -> Connect:
    """A connection factory for an in-memory database, locked down the same way (tests)."""
    return lambda: duckdb.connect(":memory:", config=locked_config(None, None, None))


class WriterBusy(Exception):
    """The single writer is in use (a non-waiting transaction was asked for)."""


class Storage:
    """Owns the product database: serialized writes, snapshot readers, errors translated."""

    def __init__(self, connect: Connect) -> None:
        try:
            self._root = connect()
        except duckdb.Error as error:
            raise translate(error) from None
        self._root.execute("SET enable_progress_bar = false")
        self._root.execute("SET lock_configuration = true")
        self._write_lock = threading.Lock()
        self._writer = self._root.cursor()
        self.generation = 0  # bumped by every commit that changes data
        self._memo: dict[Hashable, tuple[int, Any]] = {}
        self._closed = False
        with self.transaction() as cursor:
            for layer in LAYERS:
                cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A fresh cursor for reading; it sees a consistent snapshot of committed data."""
        cursor = self._root.cursor()
        try:
            yield cursor
        except duckdb.Error as error:
            raise translate(error) from None
        finally:
            cursor.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor the caller closes: for results streamed after the call returns."""
        return self._root.cursor()

    @contextmanager
    def transaction(
        self, *, wait: bool = True, changes_data: bool = True
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """The single writer, inside one transaction: committed whole or rolled back.

        With `wait=False`, WriterBusy is raised at once when another transaction is open.
        A commit bumps `generation` (what `memo` keys on) unless `changes_data` is False.
        """
        if not self._write_lock.acquire(blocking=wait):
            raise WriterBusy
        try:
            cursor = self._writer
            cursor.execute("BEGIN TRANSACTION")
            try:
                yield cursor
            except BaseException as error:
                cursor.execute("ROLLBACK")
                if isinstance(error, duckdb.Error):
                    raise translate(error) from None
                raise
            else:
                try:
                    cursor.execute("COMMIT")
                except duckdb.Error as error:
                    raise translate(error) from None
                if changes_data:
                    self.generation += 1
        finally:
            self._write_lock.release()

    def memo(self, key: Hashable, load: Callable[[], T]) -> T:
        """`load()`, kept until the next commit that changes data."""
        generation = self.generation  # read first: a commit during load forces a reload
        cached = self._memo.get(key)
        if cached is not None and cached[0] == generation:
            value: T = cached[1]
            return value
        loaded = load()
        self._memo[key] = (generation, loaded)
        return loaded

    def interrupt(self) -> None:
        """Stop the statement the writer is running (used to cancel a run)."""
        self._writer.interrupt()

    def close(self) -> None:
        """Checkpoint and close the database file."""
        if self._closed:
            return
        self._closed = True
        with self._write_lock:
            # a failed checkpoint is replayed from the WAL on the next open
            with suppress(duckdb.Error):
                self._writer.execute("CHECKPOINT")
            self._writer.close()
            self._root.close()


def translate(error: duckdb.Error) -> DataproductError:
    """One place where DuckDB's errors become ours."""
    message = str(error).strip()
    first_line = message.splitlines()[0] if message else type(error).__name__
    if isinstance(error, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
        return SqlRejectedError(first_line, engine_message=message)
    if isinstance(error, duckdb.PermissionException):
        return SqlRejectedError(f"not allowed: {first_line}")
    if isinstance(
        error,
        duckdb.ConversionException
        | duckdb.InvalidInputException
        | duckdb.ConstraintException
        | duckdb.OutOfRangeException,
    ):
        return ValidationError(first_line)
    if isinstance(error, duckdb.InterruptException):
        return DataproductError("the statement was interrupted")
    return DataproductError(first_line)


def fetch_one(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> tuple[Any, ...] | None:
    """The first row of a small result, read to its end (DuckDB 2 keeps unread results open)."""
    rows = cursor.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def fetch_value(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None
) -> Any:
    """The first column of the first row of a small result, or None."""
    row = fetch_one(cursor, sql, params)
    return row[0] if row else None
