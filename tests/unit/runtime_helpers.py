"""Helpers for tests that run the example product's pipeline (not a test module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataproduct.catalog import published_datasets
from pipelines.model import Model, Pipeline
from pipelines.runtime import ProductRuntime

Rows = list[tuple[Any, ...]]

# The example product's input tables as its CSV files load them.
EXAMPLE_INPUT_SCHEMAS: dict[str, dict[str, str]] = {
    "input.orders": {
        "order_id": "BIGINT",
        "customer_id": "VARCHAR",
        "order_date": "DATE",
        "amount": "DOUBLE",
        "currency": "VARCHAR",
        "status": "VARCHAR",
    },
    "input.customers": {
        "customer_id": "VARCHAR",
        "name": "VARCHAR",
        "country": "VARCHAR",
        "segment": "VARCHAR",
    },
}


def run_to_end(runtime: ProductRuntime, timeout_s: float = 60.0) -> dict[str, Any]:
    """Start a run and wait for it to end."""
    run = runtime.start_run("tester")
    return runtime.runs.wait(run.id, timeout_s)


def publish(runtime: ProductRuntime) -> ProductRuntime:
    """Ingest every pulled source and run the pipeline once, successfully."""
    runtime.ingest(None, principal="tester")
    state = run_to_end(runtime)
    assert state["status"] == "succeeded", state["error"]
    return runtime


def output_state(runtime: ProductRuntime) -> dict[str, tuple[str, Rows]]:
    """Each published output dataset: the run that made it and all its rows."""
    with runtime.storage.reader() as cursor:
        datasets = published_datasets(cursor)
        return {
            d.name: (
                d.run_id,
                cursor.execute(f'SELECT * FROM output."{d.name}" ORDER BY ALL').fetchall(),
            )
            for d in datasets
        }


def with_models(runtime: ProductRuntime, *extra: Model, **sql: Callable[[str], str]) -> None:
    """Replace the pipeline: the current models (some SQL rewritten) plus `extra`."""
    current = runtime.pipeline()
    assert current is not None
    models = tuple(
        Model(m.name, sql[m.name](m.sql), m.layer) if m.name in sql else m
        for m in current.pipeline.models
    )
    runtime.replace_pipeline(Pipeline(models + extra), principal="tester")
