"""The meta layer: what the product holds and what happened to it.

Tables in the `meta` schema: published datasets (schema, row count, freshness, the SQL
that made them), pipeline versions, runs, ingestions, quality rules and results. Injected
SQL never reads `meta`.
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
        updated_at TIMESTAMPTZ, run_id VARCHAR, pipeline_version INTEGER,
        version INTEGER DEFAULT 1)""",
    """CREATE TABLE IF NOT EXISTS meta.dataset_versions (
        name VARCHAR, version INTEGER, table_name VARCHAR, sql VARCHAR, row_count BIGINT,
        columns JSON, updated_at TIMESTAMPTZ, run_id VARCHAR, pipeline_version INTEGER,
        retired_at TIMESTAMPTZ)""",
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
    """CREATE TABLE IF NOT EXISTS meta.quality_results (
        run_id VARCHAR, dataset VARCHAR, rule VARCHAR, kind VARCHAR, severity VARCHAR,
        status VARCHAR, failing_rows BIGINT, samples JSON, sql VARCHAR, message VARCHAR,
        seconds DOUBLE, checked_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS meta.quality_rules (
        dataset VARCHAR, rules JSON, submitted_by VARCHAR, submitted_at TIMESTAMPTZ)""",
)


def create_meta_tables(cursor: duckdb.DuckDBPyConnection) -> None:
    """Create the meta tables if they are missing (and add columns newer releases use)."""
    for ddl in META_DDL:
        cursor.execute(ddl)
    cursor.execute("ALTER TABLE meta.datasets ADD COLUMN IF NOT EXISTS version INTEGER DEFAULT 1")
    for column, kind in (
        ("watermark", "JSON"),
        ("idempotency_key", "VARCHAR"),
        ("attempts", "INTEGER"),
    ):
        cursor.execute(f"ALTER TABLE meta.ingestions ADD COLUMN IF NOT EXISTS {column} {kind}")


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
    version: int = 1
    table: str = ""
    current: bool = True

    @property
    def table_name(self) -> str:
        """The table holding this version's rows (the name itself for the current one)."""
        return self.table or self.name


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
        "INSERT INTO meta.datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            dataset.name,
            dataset.layer,
            dataset.sql,
            dataset.row_count,
            json.dumps(dataset.columns),
            dataset.updated_at,
            dataset.run_id,
            dataset.pipeline_version,
            dataset.version,
        ],
    )


def retire_version(
    cursor: duckdb.DuckDBPyConnection, dataset: PublishedDataset, table_name: str, keep: int
) -> list[str]:
    """Keep the current version of a dataset readable as `table_name`; return the tables of
    versions beyond the `keep` most recent (the caller drops them)."""
    cursor.execute(
        "INSERT INTO meta.dataset_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [
            dataset.name, dataset.version, table_name, dataset.sql, dataset.row_count,
            json.dumps(dataset.columns), dataset.updated_at, dataset.run_id,
            dataset.pipeline_version,
        ],
    )  # fmt: skip
    expired = cursor.execute(
        "SELECT version, table_name FROM meta.dataset_versions WHERE name = ? "
        "ORDER BY version DESC OFFSET ?",
        [dataset.name, max(keep - 1, 0)],
    ).fetchall()
    for version, _ in expired:
        cursor.execute(
            "DELETE FROM meta.dataset_versions WHERE name = ? AND version = ?",
            [dataset.name, version],
        )
    return [table for _, table in expired]


def older_versions(cursor: duckdb.DuckDBPyConnection, name: str | None) -> list[PublishedDataset]:
    """The retired versions of a dataset (of every dataset with None) still readable,
    newest first."""
    rows = cursor.execute(
        "SELECT name, 'output', sql, row_count, columns, updated_at, run_id, pipeline_version, "
        "version, table_name FROM meta.dataset_versions WHERE ? IS NULL OR name = ? "
        "ORDER BY name, version DESC",
        [name, name],
    ).fetchall()
    return [
        PublishedDataset(
            name=r[0], layer=r[1], sql=r[2], row_count=r[3], columns=json.loads(r[4]),
            updated_at=r[5], run_id=r[6], pipeline_version=r[7], version=r[8], table=r[9],
            current=False,
        )
        for r in rows
    ]  # fmt: skip


def output_tables(cursor: duckdb.DuckDBPyConnection) -> dict[str, PublishedDataset]:
    """Every readable table of the output layer and the dataset version it holds."""
    datasets = published_datasets(cursor) + older_versions(cursor, None)
    return {d.table_name: d for d in datasets}


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
        version=row[8],
    )


def rows_as_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The (small) result of the last statement as dictionaries, JSON columns decoded."""
    names = [column[0] for column in cursor.description or []]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
