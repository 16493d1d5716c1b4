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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
from sqlglot import exp

from dataproduct.catalog import (
    PublishedDataset,
    forget_dataset,
    published_dataset,
    published_datasets,
    record_dataset,
    table_columns,
)
from dataproduct.descriptor import DatasetSpec, normalize_type
from dataproduct.errors import DataproductError, ValidationError
from dataproduct.quality import (
    CheckResult,
    raise_for_blocking,
    record_results,
    rules_for,
    run_checks,
)
from dataproduct.storage import Storage, fetch_one, fetch_value
from pipelines.materialize import drop, materialize, publish, row_count, table
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
class RunOptions:
    """How to run: the data contracts to hold, and how to treat what exists."""

    contracts: dict[str, DatasetSpec] = field(default_factory=dict)
    full_refresh: bool = False
    keep_versions: int = 3


@dataclass(frozen=True)
class RunContext:
    """What a run needs besides the plan."""

    run_id: str
    pipeline_version: int
    cancelled: threading.Event
    options: RunOptions = field(default_factory=RunOptions)
    on_step: Callable[[int, StepResult], None] = lambda index, result: None
    on_checks: Callable[[list[CheckResult]], None] = lambda checks: None
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
        if plan.complete:
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
    model = step.model

    def execute(sql: str) -> None:
        _execute_cancellable(cursor, sql, context.cancelled)

    current = published_dataset(cursor, model.name, model.layer)
    try:
        built = materialize(cursor, step, execute, full_refresh=context.options.full_refresh)
    except duckdb.InterruptException:
        raise RunCancelledError(f"the run was cancelled while building {step.target}") from None
    except duckdb.Error as error:
        message = str(error).strip().splitlines()[0]
        raise ValidationError(
            f"model {model.name} failed: {message}", where=f"model {model.name}"
        ) from None
    columns = table_columns(cursor, model.layer, built.name)
    spec = context.options.contracts.get(model.name)
    if spec is not None and model.layer == "output":
        _check_contract(cursor, step, built, columns, spec)
    version = 1
    if model.layer == "output":
        version = publish(cursor, step, built, current, context.options.keep_versions)
        _check_quality(cursor, step, context)
    rows = row_count(cursor, table(model.layer, model.name))
    record_dataset(
        cursor,
        PublishedDataset(
            name=model.name,
            layer=model.layer,
            sql=step.sql,
            row_count=rows,
            columns=columns,
            updated_at=datetime.now(UTC),
            run_id=context.run_id,
            pipeline_version=context.pipeline_version,
            version=version,
        ),
    )
    return StepResult(model.name, step.target, rows, time.perf_counter() - started)


def _check_quality(cursor: duckdb.DuckDBPyConnection, step: Step, context: RunContext) -> None:
    """The dataset's quality rules, on the rows about to be published: a failed `error`
    rule stops the run (nothing is published); results are kept either way."""
    spec = context.options.contracts.get(step.model.name)
    rules = rules_for(cursor, step.model.name, spec.quality if spec else ())
    if not rules:
        return
    try:
        checks = run_checks(cursor, "output", step.model.name, rules, run_id=context.run_id)
    except duckdb.InterruptException:
        raise RunCancelledError(f"the run was cancelled while checking {step.target}") from None
    context.on_checks(checks)
    raise_for_blocking(step.model.name, checks)
    record_results(cursor, checks)


def _check_contract(
    cursor: duckdb.DuckDBPyConnection,
    step: Step,
    built: exp.Table,
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
            query = (
                exp.select("count(*)")
                .from_(built)
                .where(exp.column(name, quoted=True).is_(exp.null()))
            )
            found = fetch_one(cursor, query.sql("duckdb"))
            if found and found[0]:
                raise ValidationError(
                    f"required column '{name}' of {step.model.name} has {found[0]} null values",
                    where=f"{where}.columns.{name}.required",
                )


def _drop_orphans(cursor: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Tables (and views) of models no longer in the pipeline disappear with this run."""
    built = {(step.model.layer, step.model.name) for step in plan.steps}
    for dataset in published_datasets(cursor, layer=None):
        if (dataset.layer, dataset.name) not in built:
            kind = "VIEW" if _is_view(cursor, dataset) else "TABLE"
            target = table(dataset.layer, dataset.name)
            cursor.execute(drop(target, kind))
            forget_dataset(cursor, dataset.name)


def _is_view(cursor: duckdb.DuckDBPyConnection, dataset: PublishedDataset) -> bool:
    found = fetch_value(
        cursor,
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = ? AND table_name = ? AND table_type = 'VIEW'",
        [dataset.layer, dataset.name],
    )
    return bool(found)
