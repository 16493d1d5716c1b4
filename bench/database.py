"""Database connector benchmark: PostgreSQL table -> DuckDB, three ways, same run.

    .venv/bin/python bench/database.py --rows 10000000

Creates (once, reused) `bench_orders_<rows>` in PostgreSQL db `test` (bigint id,
timestamptz, numeric(12,2), text, int, boolean) and measures, each in its own child process
(so its peak RSS is its own):
  (a) adbc     baseline: ADBC `fetch_record_batch()` straight into a fresh DuckDB file;
  (b) product  dataproduct: `ProductRuntime.ingest` of a `type: database` source;
  (c) dlt      dlt `sql_database` (pyarrow backend) into the duckdb destination
               (`--dlt-default` also times dlt's default `sqlalchemy` backend).
Every timing ends with the data in a closed database file. Progress on stderr, the report
on stdout; exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
MiB = 1024 * 1024
TARGETS = {"product_vs_adbc": 1.3, "product_rss_mib": 1024.0}


def log(message: str) -> None:
    """Progress on stderr, so stdout is the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table_name(rows: int) -> str:
    return f"bench_orders_{rows}"


def ensure_table(rows: int) -> str:
    """The benchmark table, created and analysed once per row count."""
    import psycopg

    name = table_name(rows)
    with psycopg.connect(PG_URL, autocommit=True) as connection:
        found = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = %s",
            [name],
        ).fetchone()
        if found and found[0]:
            return name
        log(f"creating {name} ({rows:,} rows)")
        connection.execute(f"DROP TABLE IF EXISTS {name}_new")
        connection.execute(
            f"CREATE TABLE {name}_new (id bigint PRIMARY KEY, created_at timestamptz NOT NULL,"
            " amount numeric(12,2), customer text, quantity int, paid boolean)"
        )
        connection.execute(
            f"INSERT INTO {name}_new SELECT g,"
            " timestamptz '2024-01-01 00:00:00+00' + g * interval '3 seconds',"
            " round((random() * 10000)::numeric, 2),"
            " 'customer-' || (g %% 50000)::text || CASE WHEN g %% 7 = 0 THEN ' VIP' ELSE '' END,"
            " (g %% 20) + 1, g %% 3 <> 0"
            " FROM generate_series(1, %s) AS g",
            [rows],
        )
        connection.execute(f"ALTER TABLE {name}_new RENAME TO {name}")
        connection.execute(f"ANALYZE {name}")
    return name


# children: one measurement each ---------------------------------------------------------


def child_adbc(table: str, work: Path) -> int:
    import adbc_driver_postgresql.dbapi as adbc
    import duckdb

    con = duckdb.connect(str(work / "adbc.duckdb"))
    try:
        with adbc.connect(PG_URL) as source, source.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {table}")
            con.register("stream", cursor.fetch_record_batch())
            con.execute("CREATE TABLE t AS SELECT * FROM stream")
        found = con.execute("SELECT count(*) FROM t").fetchone()
    finally:
        con.close()
    return int(found[0]) if found else 0


def child_product(table: str, work: Path) -> int:
    from dataproduct.settings import DataproductSettings
    from pipelines.runtime import ProductRuntime

    product = work / "product"
    product.mkdir()
    descriptor = {
        "name": "bench-db",
        "domain": "bench",
        "version": "1.0.0",
        "owner": {"name": "Bench", "email": "bench@example.com"},
        "sources": {"orders": {"type": "database", "url": PG_URL, "table": table}},
    }
    (product / "dataproduct.yaml").write_text(json.dumps(descriptor), encoding="utf-8")
    settings = DataproductSettings(
        data_dir=work / "state", jwt_secret="bench-secret-0123456789-abcdefghij",
        ingest_on_start=False,
    )  # fmt: skip
    runtime = ProductRuntime.open(product, settings)
    try:
        [ingestion] = runtime.ingest("orders", principal="bench")
    finally:
        runtime.close()
    return ingestion.rows


def child_dlt(table: str, work: Path, backend: str) -> int:
    import dlt
    from dlt.sources.sql_database import sql_table

    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    source = sql_table(
        credentials=PG_URL.replace("postgresql://", "postgresql+psycopg://"),
        table=table, backend=backend, chunk_size=100_000,
    )  # fmt: skip
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{backend}", pipelines_dir=str(work / "dlt"),
        destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")), dataset_name="bench",
    )  # fmt: skip
    pipeline.run(source)
    with pipeline.sql_client() as client:
        found = client.execute_sql(f"SELECT count(*) FROM {table}")
    return int(found[0][0])


def run_child(kind: str, table: str, work: Path) -> dict[str, Any]:
    """Inside the child: time one measurement, print its figures as JSON."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    if kind == "adbc":
        rows = child_adbc(table, work)
    elif kind == "product":
        rows = child_product(table, work)
    else:
        rows = child_dlt(table, work, kind.removeprefix("dlt-"))
    elapsed = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return {"kind": kind, "rows": rows, "seconds": elapsed}


def measure(kind: str, table: str, work: Path) -> dict[str, Any]:
    """Run one measurement in a child process; add its own peak RSS."""
    command = [sys.executable, __file__, "--child", kind, "--table", table, "--work", str(work)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{kind} failed with status {process.returncode}")
    figures: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss_mib"] = usage.ru_maxrss * 1024 / MiB  # ru_maxrss is in KiB on Linux
    return figures


# the report ----------------------------------------------------------------------------


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda run: run["seconds"])


def report(rows: int, results: dict[str, list[dict[str, Any]]]) -> bool:
    """Print the table and the checks; True when every target passes."""
    print(f"database connector benchmark: {rows:,} rows of {table_name(rows)}")
    print(f"{'measurement':<14}{'best s':>9}{'rows/s':>14}{'peak RSS MiB':>15}  runs s")
    for kind, runs in results.items():
        top = best(runs)
        peak = max(run["peak_rss_mib"] for run in runs)
        times = ", ".join(f"{run['seconds']:.2f}" for run in runs)
        rate = f"{rows / top['seconds']:,.0f}"
        print(f"{kind:<14}{top['seconds']:>9.2f}{rate:>14}{peak:>15.0f}  {times}")
    adbc, product = best(results["adbc"]), best(results["product"])
    ratio = product["seconds"] / adbc["seconds"]
    peak = max(run["peak_rss_mib"] for run in results["product"])
    checks = [
        ("product / adbc", ratio, TARGETS["product_vs_adbc"], "x"),
        ("product peak RSS", peak, TARGETS["product_rss_mib"], "MiB"),
    ]
    for kind in results:
        if kind.startswith("dlt"):
            ratio = best(results[kind])["seconds"] / product["seconds"]
            print(f"{kind} / product: {ratio:.2f}x (no target; dlt is expected to be slower)")
    passed = True
    for label, value, target, unit in checks:
        ok = value <= target
        passed &= ok
        print(
            f"{label:<20}{value:>9.2f} {unit:<4} target <= {target:<8} {'PASS' if ok else 'FAIL'}"
        )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / ".data" / "database")
    parser.add_argument("--skip-dlt", action="store_true", help="no dlt peer")
    parser.add_argument("--dlt-default", action="store_true", help="also dlt's default backend")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.table, args.work)))
        return 0
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be positive")
    table = ensure_table(args.rows)
    kinds = ["adbc", "product"]
    if not args.skip_dlt:
        kinds.append("dlt-pyarrow")
        if args.dlt_default:
            kinds.append("dlt-sqlalchemy")
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for attempt in range(args.repeat):
        for kind in kinds:  # alternate, run by run
            if kind.startswith("dlt") and attempt > 0:
                continue  # dlt once: it is slow and only a peer
            figures = measure(kind, table, args.data_dir / kind)
            if figures["rows"] != args.rows:
                raise RuntimeError(f"{kind} loaded {figures['rows']} rows, expected {args.rows}")
            log(f"{kind}: {figures['seconds']:.2f}s, peak RSS {figures['peak_rss_mib']:.0f} MiB")
            results[kind].append(figures)
    passed = report(args.rows, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
