"""dataproduct benchmark: ingestion and output-port streaming against raw DuckDB.

    .venv/bin/python bench/run.py --rows 10000000

Same generated data, same run: a CSV is ingested through the file connector path and by a
raw DuckDB `CREATE TABLE AS SELECT * FROM read_csv(...)`; the published dataset is then
streamed over HTTP on loopback from a real `dataproduct serve` process (Arrow IPC and CSV)
and compared with DuckDB's own Arrow reader and `COPY ... TO` CSV over the same table,
while the server's RSS is sampled. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for entry in (str(ROOT), str(BENCH_DIR)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import duckdb  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
from datagen import DATASET, PRODUCT_NAME, SOURCE, ensure_csv, write_product  # noqa: E402
from server import ProductServer, RssSampler  # noqa: E402

from dataproduct.security import issue_token  # noqa: E402
from dataproduct.settings import DataproductSettings  # noqa: E402
from pipelines.runtime import DATABASE_FILE, ProductRuntime  # noqa: E402

SECRET = "bench-secret-0123456789-abcdefghij"
MB = 1_000_000
MiB = 1024 * 1024

TARGETS = {
    "ingest": 1.2,  # dataproduct ingest time / raw DuckDB CTAS time
    "arrow": 2.5,  # HTTP Arrow download / DuckDB Arrow reader
    "csv": 1.5,  # HTTP CSV download / DuckDB COPY TO csv
    "memory": 500.0,  # MiB of server RSS growth while streaming
}
FORMATS = ("arrow", "csv", "parquet", "ndjson")
EXPECTED_COLUMNS = ["id", "customer", "amount", "day", "region"]

_ME = psutil.Process()


def cpu_seconds(process: psutil.Process = _ME) -> float:
    """User + system CPU time of a process so far."""
    times = process.cpu_times()
    return float(times.user + times.system)


@dataclass
class Run:
    """One timed run: wall seconds and CPU seconds spent (by every process involved)."""

    seconds: float
    cpu: float
    detail: str = ""


@dataclass
class Measurement:
    """One timed thing, repeated; the fastest run counts."""

    label: str
    rows: int
    bytes: int = 0
    runs: list[Run] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.seconds)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "label": self.label,
            "rows": self.rows,
            "bytes": self.bytes,
            "best_s": round(best.seconds, 4),
            "best_cpu_s": round(best.cpu, 3),
            "runs_s": [round(r.seconds, 4) for r in self.runs],
            "rows_per_s": round(self.rows / best.seconds),
            "mb_per_s": round(self.bytes / MB / best.seconds, 2),
            "detail": best.detail,
        }


@dataclass
class Check:
    """A measured value against its target (lower is better)."""

    label: str
    value: float
    target: float
    unit: str
    cpu_ratio: float | None = None

    @property
    def passed(self) -> bool:
        return self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "value": round(self.value, 3),
            "target": self.target,
            "unit": self.unit,
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 3),
            "passed": self.passed,
        }


def ratio_check(label: str, mine: Measurement, peer: Measurement, target: float) -> Check:
    return Check(
        label, mine.best.seconds / peer.best.seconds, target, "x", mine.best.cpu / peer.best.cpu
    )


def log(message: str) -> None:
    """Progress on stderr, so stdout is the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ingestion ---------------------------------------------------------------------------------


def settings_for(state_dir: Path) -> DataproductSettings:
    return DataproductSettings(data_dir=state_dir, jwt_secret=SECRET, ingest_on_start=False)


def product_db(state_dir: Path) -> Path:
    return state_dir / PRODUCT_NAME / DATABASE_FILE


def ingest_raw(csv_file: Path, work_dir: Path) -> Run:
    """Raw DuckDB: CTAS from read_csv into a fresh file database, closed (checkpointed)."""
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    database = work_dir / "raw.duckdb"
    cpu = cpu_seconds()
    started = time.perf_counter()
    con = duckdb.connect(str(database))
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{csv_file}')")
    finally:
        con.close()
    return Run(time.perf_counter() - started, cpu_seconds() - cpu)


def ingest_product(product_dir: Path, state_dir: Path, rows: int) -> Run:
    """ProductRuntime.ingest of the file source into a fresh product database, then close."""
    shutil.rmtree(state_dir / PRODUCT_NAME, ignore_errors=True)
    runtime = ProductRuntime.open(product_dir, settings_for(state_dir))
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
    return Run(finished - started, cpu_seconds() - cpu, f"close {finished - loaded:.2f}s")


def publish(product_dir: Path, state_dir: Path, rows: int) -> float:
    """Run the product's pipeline (`SELECT * FROM input.<source>` into output), in-process."""
    runtime = ProductRuntime.open(product_dir, settings_for(state_dir))
    try:
        started = time.perf_counter()
        run = runtime.start_run("bench", trigger="bench")
        state = runtime.runs.wait(run.id, timeout_s=3600)
        elapsed = time.perf_counter() - started
    finally:
        runtime.close()
    if state["status"] != "succeeded":
        raise RuntimeError(f"the pipeline run failed: {state.get('error')}")
    published = published_rows(state_dir)
    if published != rows:
        raise RuntimeError(f"published {published} rows, expected {rows}")
    return elapsed


def published_rows(state_dir: Path) -> int | None:
    """Rows of the published dataset in the product database, or None."""
    database = product_db(state_dir)
    if not database.exists():
        return None
    try:
        con = duckdb.connect(str(database), read_only=True)
    except duckdb.Error:
        return None
    try:
        found = con.execute(f"SELECT count(*) FROM output.{DATASET}").fetchone()
        return int(found[0]) if found else None
    except duckdb.Error:
        return None
    finally:
        con.close()


# DuckDB peers --------------------------------------------------------------------------------


def peer_arrow(database: Path, rows: int) -> tuple[Run, int]:
    """DuckDB's own Arrow reader over the published table, read to the end."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        cpu = cpu_seconds()
        started = time.perf_counter()
        reader = con.sql(f"SELECT * FROM output.{DATASET}").to_arrow_reader()
        got = nbytes = 0
        for batch in reader:
            got += batch.num_rows
            nbytes += batch.nbytes
        run = Run(time.perf_counter() - started, cpu_seconds() - cpu)
    finally:
        con.close()
    if got != rows:
        raise RuntimeError(f"DuckDB's Arrow reader gave {got} rows, expected {rows}")
    return run, nbytes


def peer_csv(database: Path, target: Path) -> tuple[Run, int]:
    """DuckDB `COPY output.<dataset> TO 'file.csv'`."""
    target.unlink(missing_ok=True)
    con = duckdb.connect(str(database), read_only=True)
    try:
        cpu = cpu_seconds()
        started = time.perf_counter()
        con.execute(f"COPY output.{DATASET} TO '{target}' (FORMAT csv, HEADER)")
        run = Run(time.perf_counter() - started, cpu_seconds() - cpu)
    finally:
        con.close()
    size = target.stat().st_size
    target.unlink()
    return run, size


# HTTP downloads --------------------------------------------------------------------------------


def download(
    client: httpx.Client, url: str, headers: dict[str, str], count_lines: bool
) -> tuple[float, int, int, float]:
    """Stream a response, discarding bytes: (seconds, bytes, newlines, time to first byte)."""
    started = time.perf_counter()
    first = 0.0
    nbytes = lines = 0
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
        for chunk in response.iter_raw():
            if not first:
                first = time.perf_counter() - started
            nbytes += len(chunk)
            if count_lines:
                lines += chunk.count(b"\n")
    return time.perf_counter() - started, nbytes, lines, first


def validate_formats(client: httpx.Client, base: str, headers: dict[str, str]) -> None:
    """Untimed: small reads parse as the format they claim, with the expected columns."""
    url = f"{base}/output/datasets/{DATASET}"
    arrow = client.get(url, params={"format": "arrow", "limit": 5000}, headers=headers)
    arrow.raise_for_status()
    table = pa.ipc.open_stream(arrow.content).read_all()
    if table.num_rows != 5000 or table.column_names != EXPECTED_COLUMNS:
        raise RuntimeError(f"arrow check failed: {table.num_rows} rows, {table.column_names}")
    csv = client.get(url, params={"format": "csv", "limit": 5000}, headers=headers)
    csv.raise_for_status()
    lines = csv.text.splitlines()
    if len(lines) != 5001 or lines[0].replace('"', "") != ",".join(EXPECTED_COLUMNS):
        raise RuntimeError(f"csv check failed: {len(lines)} lines, header {lines[0]!r}")


def stream_formats(
    server: ProductServer,
    formats: list[str],
    rows: int,
    repeat: int,
    headers: dict[str, str],
) -> tuple[dict[str, Measurement], dict[str, int], int, int, int]:
    """Download every format `repeat` times, sampling the server's RSS.

    Returns measurements, the worst RSS growth per format (bytes over the RSS just before
    that download), the RSS before the first download, the peak RSS, and the sample count.
    """
    server_process = psutil.Process(server.pid)
    sampler = RssSampler(server.pid).start()
    measurements: dict[str, Measurement] = {}
    growth: dict[str, int] = {}
    try:
        with httpx.Client(timeout=httpx.Timeout(600.0)) as client:
            validate_formats(client, server.base_url, headers)
            idle = sampler.reset()
            peak_all = idle
            for fmt in formats:
                mine = Measurement(f"{fmt:<7} HTTP output port (dataproduct serve)", rows)
                url = f"{server.base_url}/output/datasets/{DATASET}?format={fmt}"
                growth[fmt] = 0
                for index in range(repeat):
                    log(f"download run {index + 1}/{repeat}: format={fmt}")
                    baseline = sampler.reset()
                    server_cpu, client_cpu = cpu_seconds(server_process), cpu_seconds()
                    seconds, nbytes, lines, first = download(
                        client, url, headers, count_lines=fmt in ("csv", "ndjson")
                    )
                    server_cpu = cpu_seconds(server_process) - server_cpu
                    client_cpu = cpu_seconds() - client_cpu
                    _, peak = sampler.window()
                    growth[fmt] = max(growth[fmt], peak - baseline)
                    peak_all = max(peak_all, peak)
                    expected = rows + 1 if fmt == "csv" else rows
                    if fmt in ("csv", "ndjson") and lines != expected:
                        raise RuntimeError(f"{fmt}: {lines} lines, expected {expected}")
                    mine.bytes = nbytes
                    mine.runs.append(
                        Run(
                            seconds,
                            server_cpu + client_cpu,
                            f"cpu server {server_cpu:.2f}s + client {client_cpu:.2f}s, "
                            f"first byte {first * 1000:.0f} ms",
                        )
                    )
                measurements[fmt] = mine
    finally:
        sampler.stop()
    return measurements, growth, idle, peak_all, sampler.samples


# report ----------------------------------------------------------------------------------------


def machine_lines() -> list[str]:
    memory = psutil.virtual_memory().total / 2**30
    physical = psutil.cpu_count(logical=False)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, httpx {httpx.__version__}, "
        f"python {platform.python_version()}",
        f"{os.cpu_count()} cores ({physical} physical), {memory:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"load average at the end {load}",
    ]


def print_report(
    header: list[str], measurements: list[Measurement], checks: list[Check], notes: list[str]
) -> None:
    print()
    for line in header:
        print(line)
    print()
    width = max(len(m.label) for m in measurements) if measurements else 20
    print(
        f"{'measurement':<{width}}  {'best s':>7}  {'cpu s':>6}  {'rows/s':>11}  "
        f"{'MB/s':>7}  runs (s)"
    )
    print("-" * (width + 58))
    for m in measurements:
        best = m.best
        runs = " ".join(f"{r.seconds:.2f}" for r in m.runs)
        print(
            f"{m.label:<{width}}  {best.seconds:7.2f}  {best.cpu:6.2f}  "
            f"{m.rows / best.seconds:11,.0f}  {m.bytes / MB / best.seconds:7.1f}  {runs}"
        )
    if checks:
        print()
        cwidth = max(len(c.label) for c in checks)
        print(f"{'check':<{cwidth}}  {'value':>10}  {'target':>12}  result  (cpu ratio)")
        print("-" * (cwidth + 47))
        for c in checks:
            value = f"{c.value:.2f}{c.unit}"
            target = f"<= {c.target:g}{c.unit}"
            cpu = f"  ({c.cpu_ratio:.2f}x)" if c.cpu_ratio is not None else ""
            print(
                f"{c.label:<{cwidth}}  {value:>10}  {target:>12}  "
                f"{'PASS' if c.passed else 'FAIL':<6}{cpu}"
            )
    if notes:
        print()
        for note in notes:
            print(note)


# main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dataproduct benchmark: ingestion and output streaming vs raw DuckDB"
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of generated data")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (fastest counts)")
    parser.add_argument(
        "--data-dir", type=Path, default=BENCH_DIR / ".data", help="where data and state go"
    )
    parser.add_argument(
        "--skip-ingest",
        action="store_true",
        help="reuse the published dataset of an earlier run (no ingestion timings)",
    )
    parser.add_argument(
        "--skip-stream", action="store_true", help="ingestion only: no server, no downloads"
    )
    parser.add_argument(
        "--formats",
        default="arrow,csv",
        help=f"output formats to download, of {','.join(FORMATS)} (arrow and csv have peers)",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        print(f"error: unknown format(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    clock = time.perf_counter()
    data_dir: Path = args.data_dir.resolve()
    rows: int = args.rows
    repeat = max(1, args.repeat)
    state_dir = data_dir / "state"
    measurements: list[Measurement] = []
    checks: list[Check] = []
    notes: list[str] = []

    log(f"data in {data_dir}")
    csv_file, generated_s = ensure_csv(data_dir, rows)
    csv_bytes = csv_file.stat().st_size
    if generated_s is not None:
        log(f"generated {csv_file.name} ({csv_bytes / MB:.1f} MB) in {generated_s:.1f}s")
    product_dir = write_product(data_dir / "product", csv_file)

    # 1. ingestion: raw DuckDB and dataproduct, alternating
    if not args.skip_ingest:
        raw = Measurement("ingest  raw DuckDB CTAS read_csv, fresh file db", rows, csv_bytes)
        ours = Measurement("ingest  dataproduct file source, fresh product db", rows, csv_bytes)
        for index in range(repeat):
            log(f"ingest run {index + 1}/{repeat}: raw DuckDB")
            raw.runs.append(ingest_raw(csv_file, data_dir / "raw"))
            log(f"ingest run {index + 1}/{repeat}: dataproduct")
            ours.runs.append(ingest_product(product_dir, state_dir, rows))
        shutil.rmtree(data_dir / "raw", ignore_errors=True)
        measurements += [raw, ours]
        checks.append(ratio_check("ingest: dataproduct / raw DuckDB", ours, raw, TARGETS["ingest"]))
        closes = ", ".join(r.detail.split()[-1] for r in ours.runs)
        notes.append(
            f"ingest: both timings include closing the database; dataproduct close: {closes}"
        )
        log("publishing the dataset (pipeline run)")
        publish_s = publish(product_dir, state_dir, rows)
        notes.append(
            f"publish: pipeline run SELECT * FROM input.{SOURCE} took {publish_s:.2f}s (untimed)"
        )
    elif published_rows(state_dir) != rows:
        log("no published dataset of that size yet: ingesting once (untimed)")
        ingest_product(product_dir, state_dir, rows)
        publish(product_dir, state_dir, rows)

    # 2. streaming, with 3. the server's memory
    if not args.skip_stream:
        database = product_db(state_dir)
        peers: dict[str, Measurement] = {}
        if "arrow" in formats:
            peer = Measurement("arrow   DuckDB to_arrow_reader, in-process", rows)
            for index in range(repeat):
                log(f"peer run {index + 1}/{repeat}: DuckDB Arrow reader")
                run, peer.bytes = peer_arrow(database, rows)
                peer.runs.append(run)
            peers["arrow"] = peer
        if "csv" in formats:
            peer = Measurement("csv     DuckDB COPY TO file.csv", rows)
            for index in range(repeat):
                log(f"peer run {index + 1}/{repeat}: DuckDB COPY TO csv")
                run, peer.bytes = peer_csv(database, data_dir / "peer.csv")
                peer.runs.append(run)
            peers["csv"] = peer

        token = issue_token(SECRET, "bench", ["output:read"], ttl_s=3600)
        headers = {"Authorization": f"Bearer {token}"}
        log("starting dataproduct serve")
        log_file = data_dir / "server.log"
        with ProductServer(product_dir, state_dir, SECRET, log_file, args.port) as server:
            downloads, growth, idle, peak, samples = stream_formats(
                server, formats, rows, repeat, headers
            )
        for fmt in formats:
            mine = downloads[fmt]
            if fmt in peers:
                measurements.append(peers[fmt])
            measurements.append(mine)
            if fmt in peers:
                checks.append(
                    ratio_check(f"{fmt}: HTTP / DuckDB peer", mine, peers[fmt], TARGETS[fmt])
                )
            notes.append(
                f"{fmt}: {mine.bytes / MB:.1f} MB on the wire; best run {mine.best.detail}; "
                f"server RSS growth per download up to {growth[fmt] / MiB:.0f} MiB"
            )
        checks.append(
            Check(
                "memory: server RSS growth while streaming",
                (peak - idle) / MiB,
                TARGETS["memory"],
                " MiB",
            )
        )
        notes.append(
            f"server RSS: {idle / MiB:.0f} MiB before the first download, peak {peak / MiB:.0f} "
            f"MiB over all downloads ({samples} samples, every 50 ms)"
        )

    elapsed = time.perf_counter() - clock
    header = [
        f"dataproduct benchmark: {rows:,} rows, CSV {csv_bytes / MB:.1f} MB, "
        f"fastest of {repeat} runs, total {elapsed:.0f}s",
        *machine_lines(),
    ]
    print_report(header, measurements, checks, notes)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "csv_bytes": csv_bytes,
                    "repeat": repeat,
                    "duckdb": duckdb.__version__,
                    "pyarrow": pa.__version__,
                    "cores": os.cpu_count(),
                    "measurements": [m.to_dict() for m in measurements],
                    "checks": [c.to_dict() for c in checks],
                    "notes": notes,
                    "elapsed_s": round(elapsed, 1),
                },
                indent=2,
            )
            + "\n"
        )
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
