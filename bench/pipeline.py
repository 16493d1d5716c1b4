"""dataproduct benchmark: the pipeline engine against the same SQL run directly in DuckDB.

    .venv/bin/python bench/pipeline.py --rows 10000000 [--dbt bench/.dbt/bin/dbt]

Six models (two staging, four output: filters, casts, a window, aggregates, a join) over
the same generated rows, run by the engine (guard, plan, one publishing transaction,
catalog, contracts) and by raw DuckDB (the same CREATE TABLE statements in one transaction
on a database opened with the same locked-down settings). Also: guard plus plan for a
50-model pipeline, and, when a dbt executable with dbt-duckdb is given, `dbt run` of the
same models on a copy of the same data.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from dataproduct.ingest import load_stream  # noqa: E402
from dataproduct.settings import DataproductSettings  # noqa: E402
from dataproduct.storage import locked_config  # noqa: E402
from pipelines.model import Model, Pipeline  # noqa: E402
from pipelines.planner import plan_pipeline  # noqa: E402
from pipelines.runtime import DATABASE_FILE, ProductRuntime  # noqa: E402

WORK = BENCH_DIR / ".data" / "pipeline"
DESCRIPTOR = """name: bench-pipeline
domain: bench
version: 1.0.0
owner: {name: Bench, email: bench@example.com}
sources:
  sales: {type: push}
"""
MODELS = (
    Model("sales_clean", """
        SELECT id, customer, CAST(amount AS DECIMAL(12, 2)) AS amount, day, region
        FROM input.sales WHERE amount > 0 AND customer IS NOT NULL""", "staging"),
    Model("sales_ranked", """
        SELECT *, row_number() OVER (PARTITION BY customer ORDER BY day DESC, id) AS recency
        FROM staging.sales_clean""", "staging"),
    Model("daily_region", """
        SELECT day, region, count(*) AS orders, sum(amount) AS revenue
        FROM staging.sales_clean GROUP BY ALL"""),
    Model("customer_value", """
        SELECT customer, count(*) AS orders, sum(amount) AS revenue, max(day) AS last_day
        FROM staging.sales_clean GROUP BY ALL"""),
    Model("latest_orders", """
        SELECT customer, id, day, amount FROM staging.sales_ranked WHERE recency <= 3"""),
    Model("top_customers", """
        SELECT c.customer, c.revenue, l.orders_last_3
        FROM output.customer_value AS c
        JOIN (SELECT customer, count(*) AS orders_last_3 FROM output.latest_orders
              GROUP BY ALL) AS l USING (customer)
        ORDER BY c.revenue DESC LIMIT 1000"""),
)  # fmt: skip
GENERATE = """
    SELECT i AS id, 'c' || (i % 200000) AS customer, ((i % 997) - 10) * 1.5 AS amount,
           DATE '2024-01-01' + CAST(i % 730 AS INTEGER) AS day,
           ['EU', 'US', 'APAC', 'LATAM'][1 + i % 4] AS region
    FROM range(?) AS t(i)"""


def generate(rows: int) -> duckdb.DuckDBPyRelation:
    source = duckdb.connect()
    return source.sql(GENERATE.replace("?", str(rows)))


def engine_product(rows: int) -> ProductRuntime:
    folder = WORK / "product"
    shutil.rmtree(WORK, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)
    settings = DataproductSettings(data_dir=WORK / "data", ingest_on_start=False)
    runtime = ProductRuntime.open(folder, settings)
    source = duckdb.connect()

    class Stream:
        def __enter__(self) -> object:
            return source.sql(GENERATE.replace("?", str(rows))).to_arrow_reader()

        def __exit__(self, *exc: object) -> None:
            return None

    load_stream(runtime.storage, "sales", Stream, mode="replace", principal="bench")
    runtime.replace_pipeline(Pipeline(MODELS), "bench")
    return runtime


def raw_database(runtime: ProductRuntime) -> Path:
    """A copy of the product database's input: the raw engine starts from the same rows."""
    path = WORK / "raw.duckdb"
    path.unlink(missing_ok=True)
    runtime.storage.close()
    shutil.copy(WORK / "data" / "bench-pipeline" / DATABASE_FILE, path)
    return path


def time_engine(folder: Path, settings: DataproductSettings) -> float:
    runtime = ProductRuntime.open(folder, settings)
    try:
        started = time.perf_counter()
        state = runtime.runs.wait(runtime.start_run("bench").id, 3600)
        elapsed = time.perf_counter() - started
        assert state["status"] == "succeeded", state["error"]
        return elapsed
    finally:
        runtime.close()


def time_raw(path: Path) -> float:
    connection = duckdb.connect(str(path), config=locked_config(path.parent / "tmp", None, None))
    try:
        started = time.perf_counter()
        connection.execute("BEGIN")
        for model in MODELS:
            connection.execute(f"CREATE OR REPLACE TABLE {model.layer}.{model.name} AS {model.sql}")
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


def time_plan(models: int = 50, repeat: int = 20) -> float:
    chain = [Model("m0", "SELECT id, customer, amount FROM input.sales", "staging")]
    for index in range(1, models):
        upstream = f"staging.m{index - 1}" if index % 5 else "input.sales"
        chain.append(
            Model(
                f"m{index}",
                f"WITH base AS (SELECT id, customer, amount FROM {upstream}) "
                "SELECT customer, sum(amount) OVER (PARTITION BY customer) AS total, id, "
                "amount FROM base WHERE amount > 0 UNION ALL "
                f"SELECT customer, 0 AS total, id, amount FROM {upstream} WHERE amount <= 0",
                "staging" if index < models - 1 else "output",
            )
        )
    pipeline = Pipeline(tuple(chain))
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        plan_pipeline(pipeline, {"sales"})
        best = min(best, time.perf_counter() - started)
    return best


def time_dbt(dbt: str, raw: Path) -> float:
    project = WORK / "dbt"
    shutil.rmtree(project, ignore_errors=True)
    (project / "models").mkdir(parents=True)
    database = WORK / "dbt.duckdb"
    shutil.copy(raw, database)
    (project / "dbt_project.yml").write_text(
        "name: bench\nversion: '1.0'\nprofile: bench\nmodel-paths: [models]\n"
        "models:\n  bench:\n    +materialized: table\n"
    )
    (project / "profiles.yml").write_text(
        f"bench:\n  target: dev\n  outputs:\n    dev:\n      type: duckdb\n"
        f"      path: {database}\n      threads: 1\n"
    )
    (project / "models" / "sources.yml").write_text(
        "version: 2\nsources:\n  - name: input\n    schema: input\n    tables: [{name: sales}]\n"
    )
    for model in MODELS:
        sql = model.sql.replace("input.sales", "{{ source('input', 'sales') }}")
        for other in MODELS:
            sql = sql.replace(f"{other.layer}.{other.name}", f"{{{{ ref('{other.name}') }}}}")
        (project / "models" / f"{model.name}.sql").write_text(sql)
    started = time.perf_counter()
    subprocess.run(
        [dbt, "run", "--project-dir", str(project), "--profiles-dir", str(project), "--quiet"],
        check=True,
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dbt", help="a dbt executable with dbt-duckdb installed")
    args = parser.parse_args()
    print(f"pipeline benchmark: {args.rows:,} rows, {len(MODELS)} models, best of {args.repeat}")
    print(f"duckdb {duckdb.__version__}, python {platform.python_version()}")
    runtime = engine_product(args.rows)
    folder, settings = runtime.product_dir, runtime.settings
    raw = raw_database(runtime)
    engine, direct = [], []
    for _ in range(args.repeat):
        direct.append(time_raw(raw))
        engine.append(time_engine(folder, settings))
    ratio = min(engine) / min(direct)
    plan_ms = time_plan() * 1000
    print(f"raw DuckDB, same SQL in one transaction  {min(direct):7.2f} s  runs {direct}")
    print(f"dataproduct run (guard, plan, publish)   {min(engine):7.2f} s  runs {engine}")
    print(f"engine / raw DuckDB                       {ratio:7.2f}x  target <= 1.1x  "
          f"{'PASS' if ratio <= 1.1 else 'FAIL'}")  # fmt: skip
    print(f"guard + plan, 50 models                   {plan_ms:7.1f} ms target < 100 ms "
          f"{'PASS' if plan_ms < 100 else 'FAIL'}")  # fmt: skip
    if args.dbt:
        dbt = time_dbt(args.dbt, raw)
        print(f"dbt-duckdb `dbt run`, same models        {dbt:7.2f} s  engine is "
              f"{dbt / min(engine):.2f}x faster")  # fmt: skip
    return 0 if ratio <= 1.1 and plan_ms < 100 else 1


if __name__ == "__main__":
    sys.exit(main())
