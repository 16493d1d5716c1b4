"""The runner: the only code that executes a plan.

A whole run is one transaction on the product database: every model is built, every
contract is checked, the catalog is updated, and only then is everything committed
together. Readers see the old output or the new one, never a mix; a failed or cancelled
run leaves output exactly as it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
from sqlglot import exp

from dataproduct.catalog import (
    PublishedDataset,
    forget_dataset,
    published_datasets,
    record_dataset,
    table_columns,
)
from dataproduct.descriptor import DatasetSpec, normalize_type
from dataproduct.errors import DataproductError, ValidationError
from dataproduct.storage import Storage, fetch_one
from pipelines.planner import Plan, Step


class RunCancelledError(DataproductError):
    """The run was cancelled; nothing it built was published."""

    status = 409
    code = "run_cancelled"


@dataclass
class StepResult:
    """What one step did."""

    model: str
    target: str
    rows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "model": self.model,
            "target": self.target,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class RunContext:
    """What a run needs besides the plan."""

    run_id: str
    pipeline_version: int
    contracts: dict[str, DatasetSpec]
    cancelled: threading.Event
    on_step: Callable[[int, StepResult], None] = lambda index, result: None
    on_commit: Callable[[duckdb.DuckDBPyConnection, list[StepResult]], None] = (
        lambda cursor, results: None
    )


def execute_plan(storage: Storage, plan: Plan, context: RunContext) -> list[StepResult]:
    """Build every step and publish them together, or nothing at all."""
    results: list[StepResult] = []
    with storage.transaction() as cursor:
        for index, step in enumerate(plan.steps):
            if context.cancelled.is_set():
                raise RunCancelledError("the run was cancelled")
            result = _build(cursor, step, context)
            results.append(result)
            context.on_step(index, result)
        _drop_orphans(cursor, plan)
        if context.cancelled.is_set():  # a cancel no statement saw still publishes nothing
            raise RunCancelledError("the run was cancelled")
        context.on_commit(cursor, results)
    return results


def _execute_cancellable(
    cursor: duckdb.DuckDBPyConnection, sql: str, cancelled: threading.Event
) -> None:
    """Run one statement; a cancel interrupts it whenever it comes while the statement runs.

    DuckDB drops an interrupt that arrives between statements, so a single interrupt sent
    by the canceller can be lost; this watcher keeps interrupting until the statement ends.
    """
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if cancelled.is_set():
                cursor.interrupt()
                finished.wait(0.05)
            else:
                cancelled.wait(0.05)

    watcher = threading.Thread(target=watch, name="run-cancel-watcher", daemon=True)
    watcher.start()
    try:
        cursor.execute(sql)
    finally:
        finished.set()
        watcher.join()


def _build(cursor: duckdb.DuckDBPyConnection, step: Step, context: RunContext) -> StepResult:
    started = time.perf_counter()
    target = exp.table_(step.model.name, db=step.model.layer, quoted=True)
    query: exp.Expr = exp.maybe_parse(step.sql, dialect="duckdb")
    create = exp.Create(this=target, kind="TABLE", replace=True, expression=query)
    try:
        _execute_cancellable(cursor, create.sql("duckdb"), context.cancelled)
    except duckdb.InterruptException:
        raise RunCancelledError(f"the run was cancelled while building {step.target}") from None
    except duckdb.Error as error:
        message = str(error).strip().splitlines()[0]
        raise ValidationError(
            f"model {step.model.name} failed: {message}", where=f"model {step.model.name}"
        ) from None
    found = fetch_one(cursor, exp.select("count(*)").from_(target).sql("duckdb"))
    rows = int(found[0]) if found else 0
    columns = table_columns(cursor, step.model.layer, step.model.name)
    spec = context.contracts.get(step.model.name)
    if spec is not None and step.model.layer == "output":
        _check_contract(cursor, step, columns, spec)
    record_dataset(
        cursor,
        PublishedDataset(
            name=step.model.name,
            layer=step.model.layer,
            sql=step.sql,
            row_count=rows,
            columns=columns,
            updated_at=datetime.now(UTC),
            run_id=context.run_id,
            pipeline_version=context.pipeline_version,
        ),
    )
    return StepResult(step.model.name, step.target, rows, time.perf_counter() - started)


def _check_contract(
    cursor: duckdb.DuckDBPyConnection,
    step: Step,
    columns: list[dict[str, Any]],
    spec: DatasetSpec,
) -> None:
    """The built table honours the documented columns: present, typed, required."""
    actual = {c["name"]: c["type"] for c in columns}
    where = f"datasets.{step.model.name}"
    for name, column in spec.columns.items():
        if name not in actual:
            raise ValidationError(
                f"model {step.model.name} does not produce documented column '{name}'",
                where=f"{where}.columns.{name}",
            )
        if normalize_type(actual[name]) != column.type:
            raise ValidationError(
                f"column '{name}' of {step.model.name} is {actual[name]}, "
                f"documented as {column.type}",
                where=f"{where}.columns.{name}.type",
            )
        if column.required:
            table = exp.table_(step.model.name, db=step.model.layer, quoted=True)
            query = (
                exp.select("count(*)")
                .from_(table)
                .where(exp.column(name, quoted=True).is_(exp.null()))
            )
            found = fetch_one(cursor, query.sql("duckdb"))
            if found and found[0]:
                raise ValidationError(
                    f"required column '{name}' of {step.model.name} has {found[0]} null values",
                    where=f"{where}.columns.{name}.required",
                )


def _drop_orphans(cursor: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Tables of models no longer in the pipeline disappear with this run."""
    built = {(step.model.layer, step.model.name) for step in plan.steps}
    for dataset in published_datasets(cursor, layer=None):
        if (dataset.layer, dataset.name) not in built:
            table = exp.table_(dataset.name, db=dataset.layer, quoted=True)
            cursor.execute(exp.Drop(this=table, kind="TABLE", exists=True).sql("duckdb"))
            forget_dataset(cursor, dataset.name)
