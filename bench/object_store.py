"""dataproduct benchmark: ingesting Parquet objects from S3 against pyarrow reading them.

    .venv/bin/python bench/object_store.py --rows 5000000

An S3-compatible server (moto) starts in this process on a free loopback port; N rows of
generated sales data are written as several Parquet objects into a bucket. Then, in the
same run, the fastest of `--repeat` runs of each:

- peer: pyarrow scans the same objects from S3 (`pyarrow.dataset` over `S3FileSystem`,
  default options) and counts the rows of every record batch;
- raw engine: the same pyarrow scan streamed straight into a table of a fresh DuckDB file
  (`CREATE TABLE AS` over the reader, then close): what loading costs without dataproduct;
- dataproduct: `ProductRuntime.ingest` of an `s3` source over the same objects into a fresh
  product database (the s3 connector streaming into `input.sales_raw` in one transaction),
  including closing the database (its checkpoint), as `bench/run.py` times ingestion.

The target (1.3x) is checked against the raw engine, which does the same work (read and
store); the ratio to the bare read is reported too: it shows what storing costs. The report
goes to stdout, progress to stderr. Exit status 0 when the checked ratio is within the
target, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for entry in (str(ROOT), str(BENCH_DIR)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import duckdb  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from run import Check, Measurement, Run, cpu_seconds, log, machine_lines, ratio_check  # noqa: E402

from dataproduct.ingest import BATCH_ROWS  # noqa: E402
from dataproduct.settings import DataproductSettings  # noqa: E402
from pipelines.runtime import ProductRuntime  # noqa: E402
from tests.server.conftest import free_port  # noqa: E402

SECRET = "bench-secret-0123456789-abcdefghij"
TARGET = 1.3  # dataproduct ingest / pyarrow read
BUCKET = "bench-sales"
PREFIX = "sales/"
SOURCE = "sales_raw"
ACCESS_KEY = "bench-key"
SECRET_KEY = "bench-secret-key"
MB = 1_000_000

_ROWS_SQL = """
SELECT
    i AS id,
    'c' || lpad(CAST(hash(i) % 100000 AS VARCHAR), 5, '0') AS customer,
    round((hash(i * 7 + 1) % 100000) / 100.0, 2) AS amount,
    DATE '2020-01-01' + CAST(hash(i * 13 + 5) % 1826 AS INTEGER) AS day,
    TIMESTAMP '2020-01-01' + to_seconds(CAST(hash(i * 17 + 2) % 157680000 AS BIGINT)) AS ordered_at,
    ['eu', 'us', 'apac', 'latam', 'mea'][CAST(hash(i * 31 + 3) % 5 AS INTEGER) + 1] AS region,
    ['paid', 'shipped', 'cancelled'][CAST(hash(i * 37 + 1) % 3 AS INTEGER) + 1] AS status
FROM range({start}, {stop}) AS r(i)
"""


@dataclass
class Store:
    """The moto server and pyarrow's view of it."""

    endpoint: str
    filesystem: pafs.S3FileSystem


def start_store() -> tuple[Any, Store]:
    """moto's S3 on 127.0.0.1 in this process."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    filesystem = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1",
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, allow_bucket_creation=True,
    )  # fmt: skip
    return server, Store(endpoint, filesystem)


def write_objects(store: Store, rows: int, objects: int, scratch: Path) -> tuple[list[str], int]:
    """`rows` generated rows as `objects` Parquet objects (pyarrow's writer defaults)."""
    store.filesystem.create_dir(BUCKET)
    paths: list[str] = []
    size = 0
    step = -(-rows // objects)
    con = duckdb.connect(":memory:")
    try:
        for number, start in enumerate(range(0, rows, step)):
            table = con.sql(_ROWS_SQL.format(start=start, stop=min(rows, start + step)))
            local = scratch / f"part-{number:03d}.parquet"
            pq.write_table(table.to_arrow_table(), local)
            path = f"{BUCKET}/{PREFIX}part-{number:03d}.parquet"
            pafs.copy_files(
                str(local), path, source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=store.filesystem,
            )  # fmt: skip
            size += local.stat().st_size
            local.unlink()
            paths.append(path)
    finally:
        con.close()
    return paths, size


def read_pyarrow(store: Store, paths: list[str], rows: int) -> Run:
    """pyarrow: scan the objects from S3 and count the rows of every batch."""
    cpu = cpu_seconds()
    started = time.perf_counter()
    dataset = ds.dataset(paths, filesystem=store.filesystem, format="parquet")
    got = sum(batch.num_rows for batch in dataset.to_batches())
    run = Run(time.perf_counter() - started, cpu_seconds() - cpu)
    if got != rows:
        raise RuntimeError(f"pyarrow read {got} rows, expected {rows}")
    return run


def load_duckdb(store: Store, paths: list[str], rows: int, database: Path) -> Run:
    """Raw engine: pyarrow's scan streamed into a table of a fresh DuckDB file, then close."""
    database.unlink(missing_ok=True)
    cpu = cpu_seconds()
    started = time.perf_counter()
    con = duckdb.connect(str(database))
    try:
        dataset = ds.dataset(paths, filesystem=store.filesystem, format="parquet")
        # whole row groups per batch, as the connector reads: the fair (faster) setting
        reader = dataset.scanner(batch_size=BATCH_ROWS).to_reader()
        con.register("stream", reader)
        con.execute("CREATE TABLE sales_raw AS SELECT * FROM stream")
        got = con.execute("SELECT count(*) FROM sales_raw").fetchone()
    finally:
        con.close()
    run = Run(time.perf_counter() - started, cpu_seconds() - cpu)
    if got is None or got[0] != rows:
        raise RuntimeError(f"DuckDB loaded {got} rows, expected {rows}")
    return run


def write_product(product_dir: Path, store: Store) -> Path:
    """A product folder with one s3 source over the objects."""
    product_dir.mkdir(parents=True, exist_ok=True)
    source = {
        "type": "s3", "bucket": BUCKET, "prefix": PREFIX, "endpoint": store.endpoint,
        "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY,
    }  # fmt: skip
    descriptor = {
        "name": "bench-s3",
        "domain": "bench/s3",
        "version": "1.0.0",
        "owner": {"name": "Bench", "email": "bench@example.com"},
        "sources": {SOURCE: source},
    }
    (product_dir / "dataproduct.yaml").write_text(yaml.safe_dump(descriptor), encoding="utf-8")
    return product_dir


def ingest_product(product_dir: Path, state_dir: Path, rows: int) -> Run:
    """ProductRuntime.ingest of the s3 source into a fresh product database, then close."""
    shutil.rmtree(state_dir, ignore_errors=True)
    settings = DataproductSettings(data_dir=state_dir, jwt_secret=SECRET, ingest_on_start=False)
    runtime = ProductRuntime.open(product_dir, settings)
    try:
        cpu = cpu_seconds()
        started = time.perf_counter()
        [ingestion] = runtime.ingest(SOURCE, principal="bench")
        loaded = time.perf_counter()
    finally:
        runtime.close()
    finished = time.perf_counter()
    if ingestion.rows != rows:
        raise RuntimeError(f"ingested {ingestion.rows} rows, expected {rows}")
    return Run(
        finished - started,
        cpu_seconds() - cpu,
        f"load {loaded - started:.2f}s + close {finished - loaded:.2f}s",
    )


def print_report(
    rows: int, objects: int, measurements: list[Measurement], check: Check, read_only: Check
) -> None:
    """The figures, as a table."""
    print(f"object store bench: {rows:,} rows in {objects} Parquet objects on moto (loopback)")
    for line in machine_lines():
        print(line)
    print()
    print(f"{'measure':<34} {'best s':>8} {'cpu s':>7} {'Mrows/s':>8} {'MB/s':>7}  runs / detail")
    for item in measurements:
        best = item.best
        runs = ", ".join(f"{r.seconds:.2f}" for r in item.runs)
        print(
            f"{item.label:<34} {best.seconds:>8.2f} {best.cpu:>7.2f} "
            f"{item.rows / best.seconds / 1e6:>8.2f} {item.bytes / MB / best.seconds:>7.1f}  "
            f"[{runs}] {best.detail}"
        )
    verdict = "PASS" if check.passed else "FAIL"
    print()
    print(f"{read_only.label}: {read_only.value:.2f}x (cpu {read_only.cpu_ratio or 0:.2f}x)")
    print(
        f"{check.label}: {check.value:.2f}x (target <= {check.target}x, "
        f"cpu {check.cpu_ratio or 0:.2f}x) {verdict}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--objects", type=int, default=8, help="Parquet objects to write")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.objects < 1 or args.repeat < 1:
        parser.error("--rows, --objects and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the objects, time both readers alternately, print the report."""
    args = parse_args(argv)
    server, store = start_store()
    work = Path(tempfile.mkdtemp(prefix="dataproduct-bench-s3-"))
    try:
        log(f"writing {args.rows:,} rows as {args.objects} Parquet objects to {store.endpoint}")
        paths, size = write_objects(store, args.rows, args.objects, work)
        log(f"{size / MB:.1f} MB of Parquet written")
        product = write_product(work / "product", store)
        peer = Measurement("pyarrow dataset read from S3", args.rows, size)
        raw = Measurement("pyarrow read into DuckDB (raw)", args.rows, size)
        mine = Measurement("dataproduct ingest (s3 connector)", args.rows, size)
        for number in range(args.repeat):
            peer.runs.append(read_pyarrow(store, paths, args.rows))
            raw.runs.append(load_duckdb(store, paths, args.rows, work / "raw.duckdb"))
            mine.runs.append(ingest_product(product, work / "state", args.rows))
            log(f"run {number + 1}: pyarrow {peer.runs[-1].seconds:.2f}s, "
                f"raw {raw.runs[-1].seconds:.2f}s, "
                f"ingest {mine.runs[-1].seconds:.2f}s ({mine.runs[-1].detail})")  # fmt: skip
        read_only = ratio_check("ingest / pyarrow read (no storing)", mine, peer, TARGET)
        check = ratio_check("ingest / pyarrow read into DuckDB", mine, raw, TARGET)
        print_report(args.rows, len(paths), [peer, raw, mine], check, read_only)
        if args.json:
            figures = {
                "measurements": [peer.to_dict(), raw.to_dict(), mine.to_dict()],
                "check": check.to_dict(),
                "read_only": read_only.to_dict(),
            }
            args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        return 0 if check.passed else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
