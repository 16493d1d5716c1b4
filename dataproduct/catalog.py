"""The meta layer: what the product holds and what happened to it.

Tables in the `meta` schema: published datasets (schema, row count, freshness, the SQL
that made them), pipeline versions, runs and ingestions. Injected SQL never reads `meta`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from dataproduct.storage import fetch_one

META_DDL = (
    """CREATE TABLE IF NOT EXISTS meta.datasets (
        name VARCHAR, layer VARCHAR, sql VARCHAR, row_count BIGINT, columns JSON,
        updated_at TIMESTAMPTZ, run_id VARCHAR, pipeline_version INTEGER)""",
    """CREATE TABLE IF NOT EXISTS meta.pipeline_versions (
        version INTEGER, origin VARCHAR, submitted_by VARCHAR, submitted_at TIMESTAMPTZ,
        digest VARCHAR, models JSON)""",
    """CREATE TABLE IF NOT EXISTS meta.runs (
        id VARCHAR, status VARCHAR, trigger VARCHAR, principal VARCHAR,
        pipeline_version INTEGER, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
        steps JSON, error JSON, total_steps INTEGER)""",
    """CREATE TABLE IF NOT EXISTS meta.ingestions (
        id VARCHAR, source VARCHAR, mode VARCHAR, status VARCHAR, principal VARCHAR,
        rows BIGINT, bytes BIGINT, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ,
        error JSON)""",
)


def create_meta_tables(cursor: duckdb.DuckDBPyConnection) -> None:
    """Create the meta tables if they are missing."""
    for ddl in META_DDL:
        cursor.execute(ddl)


@dataclass(frozen=True)
class PublishedDataset:
    """A dataset as the catalog knows it after a run."""

    name: str
    layer: str
    sql: str
    row_count: int
    columns: list[dict[str, Any]]
    updated_at: datetime
    run_id: str
    pipeline_version: int


def table_columns(cursor: duckdb.DuckDBPyConnection, layer: str, name: str) -> list[dict[str, Any]]:
    """Column names, types and nullability of a table, in order."""
    rows = cursor.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [layer, name],
    ).fetchall()
    return [{"name": r[0], "type": r[1], "nullable": r[2] == "YES"} for r in rows]


def table_exists(cursor: duckdb.DuckDBPyConnection, layer: str, name: str) -> bool:
    """Whether `layer.name` is a table or view."""
    found = fetch_one(
        cursor,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [layer, name],
    )
    return bool(found and found[0])


def record_dataset(cursor: duckdb.DuckDBPyConnection, dataset: PublishedDataset) -> None:
    """Replace the catalog entry of one dataset (inside the run's transaction)."""
    cursor.execute("DELETE FROM meta.datasets WHERE name = ?", [dataset.name])
    cursor.execute(
        "INSERT INTO meta.datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            dataset.name,
            dataset.layer,
            dataset.sql,
            dataset.row_count,
            json.dumps(dataset.columns),
            dataset.updated_at,
            dataset.run_id,
            dataset.pipeline_version,
        ],
    )


def forget_dataset(cursor: duckdb.DuckDBPyConnection, name: str) -> None:
    """Remove a dataset from the catalog."""
    cursor.execute("DELETE FROM meta.datasets WHERE name = ?", [name])


def published_datasets(
    cursor: duckdb.DuckDBPyConnection, layer: str | None = "output"
) -> list[PublishedDataset]:
    """Every published dataset of a layer (all layers with None), by name."""
    query = "SELECT * FROM meta.datasets"
    params: list[Any] = []
    if layer is not None:
        query += " WHERE layer = ?"
        params.append(layer)
    rows = cursor.execute(query + " ORDER BY name", params).fetchall()
    return [_dataset_from_row(row) for row in rows]


def published_dataset(
    cursor: duckdb.DuckDBPyConnection, name: str, layer: str = "output"
) -> PublishedDataset | None:
    """One published dataset, or None."""
    row = fetch_one(
        cursor, "SELECT * FROM meta.datasets WHERE name = ? AND layer = ?", [name, layer]
    )
    return _dataset_from_row(row) if row else None


def _dataset_from_row(row: tuple[Any, ...]) -> PublishedDataset:
    return PublishedDataset(
        name=row[0],
        layer=row[1],
        sql=row[2],
        row_count=row[3],
        columns=json.loads(row[4]),
        updated_at=row[5],
        run_id=row[6],
        pipeline_version=row[7],
    )


def rows_as_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The (small) result of the last statement as dictionaries, JSON columns decoded."""
    names = [column[0] for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
