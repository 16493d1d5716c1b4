"""A pushed source that declares its columns exists, empty, before the first push: the
pipeline can read it from the start, and the first push lands in it."""

from __future__ import annotations

import io
from contextlib import nullcontext
from pathlib import Path

import pyarrow.csv as pacsv

from dataproduct.settings import DataproductSettings
from pipelines.runtime import ProductRuntime

DESCRIPTOR = """
name: shop
domain: sales
version: 1.0.0
owner: {name: Test, email: test@example.com}
sources:
  new_orders:
    type: push
    format: csv
    mode: append
    columns:
      order_id: {type: VARCHAR, required: true}
      amount: {type: "DECIMAL(12,2)", required: true}
  notes: {type: push, format: csv}
pipeline:
  - name: totals
    sql: SELECT count(*) AS orders, sum(amount) AS revenue FROM input.new_orders
"""


def open_runtime(tmp_path: Path, settings: DataproductSettings) -> ProductRuntime:
    product = tmp_path / "shop"
    product.mkdir(exist_ok=True)
    (product / "dataproduct.yaml").write_text(DESCRIPTOR)
    return ProductRuntime.open(product, settings)


def test_the_pipeline_reads_a_declared_pushed_source_before_any_push(
    tmp_path: Path, settings: DataproductSettings
) -> None:
    runtime = open_runtime(tmp_path, settings)
    try:
        with runtime.storage.reader() as cursor:
            columns = cursor.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'input' AND table_name = 'new_orders' "
                "ORDER BY ordinal_position"
            ).fetchall()
            undeclared = cursor.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'input' AND table_name = 'notes'"
            ).fetchone()
        assert columns == [("order_id", "VARCHAR"), ("amount", "DECIMAL(12,2)")]
        assert undeclared == (0,)  # nothing declared: nothing to create
        run = runtime.start_run("test")
        assert runtime.runs.wait(run.id, timeout_s=60)["status"] == "succeeded"
    finally:
        runtime.close()


def test_the_first_push_lands_in_the_declared_table_and_a_reopen_keeps_it(
    tmp_path: Path, settings: DataproductSettings
) -> None:
    runtime = open_runtime(tmp_path, settings)
    try:
        table = pacsv.read_csv(io.BytesIO(b"order_id,amount\nA1,10.50\nA2,4.50\n"))
        runtime.load("new_orders", lambda: nullcontext(table.to_reader()), principal="test")
    finally:
        runtime.close()
    reopened = open_runtime(tmp_path, settings)  # the table exists: it is left alone
    try:
        with reopened.storage.reader() as cursor:
            total = cursor.execute("SELECT sum(amount) FROM input.new_orders").fetchone()
        assert total is not None and float(total[0]) == 15.0
    finally:
        reopened.close()
