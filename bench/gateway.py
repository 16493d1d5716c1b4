"""dataproduct benchmark: small authenticated JSON queries against a bare FastAPI endpoint.

    .venv/bin/python bench/gateway.py --duration 10 --connections 32

Same run, same machine: the embedded example product (`python -m dataproduct.cli serve`)
and a bare FastAPI app (bench/bare_app.py) run as uvicorn subprocesses with one worker,
pinned to their own CPUs when `taskset` is there, and wrk (or, without it, a Python client)
loads each in turn from the other CPUs. The product answers `GET /output/datasets/
daily_sales?limit=10` and `POST /output/query` (token check, grant check, audit, a 10-row
result); the peer returns the same 10-row page without any of that.
Target: the product at least 50% of the bare endpoint's requests per second.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for entry in (str(ROOT), str(BENCH_DIR)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import httpx  # noqa: E402
from loadgen import LoadGenerator, LoadResult, PythonLoad, Request, WrkLoad, pin_prefix  # noqa: E402

from dataproduct.security import issue_token  # noqa: E402

SECRET = "bench-gateway-secret-0123456789-abcdefghij"
TARGET_RATIO = 0.5  # product requests/s over the bare endpoint's, at least
ROWS = 10
DATASET_PATH = "/output/datasets/daily_sales?limit=10"
QUERY_SQL = "SELECT * FROM output.daily_sales LIMIT 10"
BARE = "bare"
PRODUCT = "product"


def log(message: str) -> None:
    """Progress on stderr, so stdout is the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """A uvicorn server as a subprocess, ready once `GET /ready` answers 200; stopped on exit."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_file: Path):
        self.name = name
        self.port = int(env["BENCH_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._command = command
        self._env = env
        self._log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        with self._log_file.open("wb") as out:
            # from the checkout's root, so `-m dataproduct.cli` is the code next to this bench
            self.process = subprocess.Popen(
                self._command, env=self._env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready(timeout_s=120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output."""
        text = self._log_file.read_text(errors="replace") if self._log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.base_url}/ready", timeout=2)
                if response.status_code == 200:
                    problems = response.json().get("problems")
                    if problems:
                        raise RuntimeError(f"{self.name} started with problems: {problems}")
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGINT (as Ctrl-C), then kill if it does not stop."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def product_server(work: Path, cpus: list[int] | None) -> ServerProcess:
    """The embedded example product, as `python -m dataproduct.cli serve` runs it."""
    port = free_port()
    env = {
        **os.environ,
        "BENCH_PORT": str(port),
        "DATAPRODUCT_HOST": "127.0.0.1",
        "DATAPRODUCT_PORT": str(port),
        "DATAPRODUCT_DATA_DIR": str(work / "state"),
        "DATAPRODUCT_JWT_SECRET": SECRET,
        "DATAPRODUCT_LOG_LEVEL": "warning",
        "DATAPRODUCT_RATE_LIMIT_PER_S": "0",  # unlimited: the bench is one busy principal
    }
    command = [*pin_prefix(cpus), sys.executable, "-m", "dataproduct.cli", "serve"]
    return ServerProcess("dataproduct serve", command, env, work / "product.log")


def bare_server(work: Path, cpus: list[int] | None, page: bytes) -> ServerProcess:
    """bench/bare_app.py under uvicorn: one worker, the same log level, the same loop."""
    port = free_port()
    body_file = work / "page.json"
    body_file.write_bytes(page)
    env = {**os.environ, "BENCH_PORT": str(port), "BENCH_BARE_BODY": str(body_file)}
    command = [
        *pin_prefix(cpus),
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:app",
        f"--app-dir={BENCH_DIR}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--workers=1",
        "--log-level=warning",
    ]
    return ServerProcess("bare FastAPI", command, env, work / "bare.log")


@dataclass(frozen=True)
class Target:
    """One endpoint to load."""

    key: str
    label: str
    server: str  # BARE or PRODUCT
    method: str
    path: str
    body: bytes = b""


TARGETS = (
    Target("bare", "bare FastAPI  GET /rows (dict, no auth)", BARE, "GET", "/rows"),
    Target("bare_raw", "bare FastAPI  GET /rows/raw (bytes, no auth)", BARE, "GET", "/rows/raw"),
    Target("dataset", f"dataproduct   GET {DATASET_PATH}", PRODUCT, "GET", DATASET_PATH),
    Target(
        "query",
        "dataproduct   POST /output/query (SQL, LIMIT 10)",
        PRODUCT,
        "POST",
        "/output/query",
        json.dumps({"sql": QUERY_SQL}).encode(),
    ),
)
CHECKS = (("dataset", "bare"), ("query", "bare"))  # product / peer, requests per second


def http_request(target: Target, base_url: str, token: str) -> Request:
    """The request a load generator repeats (the peer gets the same header, and ignores it)."""
    headers = {"Authorization": f"Bearer {token}"}
    if target.body:
        headers["Content-Type"] = "application/json"
    return Request(target.method, base_url + target.path, headers, target.body)


def check_response(request: Request) -> bytes:
    """Untimed: the request answers 200 with a JSON page of exactly ten rows."""
    response = httpx.request(
        request.method, request.url, headers=request.headers, content=request.body, timeout=30
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"{request.method} {request.url}: {response.status_code} {response.text}"
        )
    page = response.json()
    if page.get("count") != ROWS or len(page.get("data", [])) != ROWS:
        raise RuntimeError(f"{request.method} {request.url}: not {ROWS} rows: {response.text}")
    return response.content


@dataclass
class Measured:
    """The best measured run of one target."""

    key: str
    label: str
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int  # connection errors and timeouts, over every run
    non_2xx: int  # over every run
    server_cpu_ms_per_request: float
    server_cpu_share: float  # CPU seconds per second of the run (1.0 = one core busy)
    client_cpu_share: float
    runs_per_s: list[float]


def measure(
    load: LoadGenerator,
    request: Request,
    server_pid: int,
    args: argparse.Namespace,
    client_cpus: list[int] | None,
) -> LoadResult:
    """A warm-up run (discarded), then the measured run, metering the server's CPU seconds."""
    if args.warmup:
        load.run(request, args.connections, args.warmup, client_cpus)
    return load.run(
        request, args.connections, args.duration, client_cpus, lambda: process_cpu_s(server_pid)
    )


def record(previous: Measured | None, target: Target, result: LoadResult) -> Measured:
    """Keep the run with the most requests per second; remember every run's figure."""
    runs = [*(previous.runs_per_s if previous else []), round(result.per_second, 1)]
    errors = result.errors + (previous.errors if previous else 0)
    non_2xx = result.non_2xx + (previous.non_2xx if previous else 0)
    if previous and previous.requests_per_s >= result.per_second:
        previous.runs_per_s, previous.errors, previous.non_2xx = runs, errors, non_2xx
        return previous
    return Measured(
        key=target.key,
        label=target.label,
        requests_per_s=result.per_second,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        requests=result.requests,
        errors=errors,  # of every run
        non_2xx=non_2xx,
        server_cpu_ms_per_request=result.metered * 1000 / max(1, result.requests),
        server_cpu_share=result.metered / result.seconds if result.seconds else 0.0,
        client_cpu_share=result.client_cpu_s / result.client_wall_s,
        runs_per_s=runs,
    )


def split_cpus() -> tuple[list[int] | None, list[int] | None, str]:
    """(server CPUs, client CPUs, a description): halves of this process's CPUs if possible."""
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None:
        return None, None, "no (taskset not found)"
    if len(cpus) < 2:
        return None, None, "no (one CPU)"
    half = len(cpus) // 2
    server, client = cpus[:half], cpus[half:]
    return server, client, f"yes: servers on CPU {server}, load generator on CPU {client}"


def affinity(servers: dict[str, ServerProcess]) -> str:
    """The CPUs each server may run on, as the kernel reports them."""
    return ", ".join(f"{s.name} on {sorted(os.sched_getaffinity(s.pid))}" for s in servers.values())


def choose_load(kind: str, client_cpus: list[int] | None) -> LoadGenerator:
    """wrk if wanted and found, else the Python client."""
    count = len(client_cpus) if client_cpus else os.cpu_count() or 1
    binary = WrkLoad.find()
    if kind == "wrk" and binary is None:
        raise RuntimeError("wrk not found: apt-get install wrk (or use --loadgen python)")
    if kind != "python" and binary is not None:
        return WrkLoad(binary, count)
    if kind == "auto":
        log("wrk not found (apt-get install wrk): using the slower Python client")
    return PythonLoad(count)


# report ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """Product requests/s over the peer's, against the target."""

    label: str
    ratio: float
    target: float
    valid: bool  # no errors and only 2xx responses in both runs

    @property
    def passed(self) -> bool:
        return self.valid and self.ratio >= self.target


def make_checks(results: dict[str, Measured]) -> list[Check]:
    """One check per product target, against the bare dict endpoint."""
    checks = []
    for mine, peer in CHECKS:
        a, b = results[mine], results[peer]
        valid = not (a.errors or a.non_2xx or b.errors or b.non_2xx)
        ratio = a.requests_per_s / b.requests_per_s if b.requests_per_s else 0.0
        checks.append(Check(f"{mine} / {peer} (requests/s)", ratio, TARGET_RATIO, valid))
    return checks


def versions() -> str:
    """Versions of what serves and what measures."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found) + f", python {platform.python_version()}"


def print_report(
    header: list[str], results: list[Measured], checks: list[Check], notes: list[str]
) -> None:
    print()
    print("\n".join(header))
    print()
    width = max(len(r.label) for r in results)
    print(
        f"{'target':<{width}}  {'req/s':>8}  {'p50 ms':>7}  {'p90 ms':>7}  {'p99 ms':>7}  "
        f"{'srv CPU ms/req':>14}  {'srv CPU':>7}  {'client CPU':>10}  {'errors':>6}  runs req/s"
    )
    print("-" * (width + 100))
    for r in results:
        runs = " ".join(f"{x:.0f}" for x in r.runs_per_s)
        print(
            f"{r.label:<{width}}  {r.requests_per_s:8.0f}  {r.p50_ms:7.2f}  {r.p90_ms:7.2f}  "
            f"{r.p99_ms:7.2f}  {r.server_cpu_ms_per_request:14.3f}  "
            f"{r.server_cpu_share:6.0%}  {r.client_cpu_share:9.0%}  "
            f"{r.errors + r.non_2xx:6d}  {runs}"
        )
    print()
    cwidth = max(len(c.label) for c in checks)
    print(f"{'check':<{cwidth}}  {'ratio':>6}  {'target':>8}  result")
    print("-" * (cwidth + 26))
    for c in checks:
        result = "PASS" if c.passed else "FAIL" if c.valid else "FAIL (errors or non-2xx)"
        print(f"{c.label:<{cwidth}}  {c.ratio:6.2f}  {'>= ' + format(c.target, 'g'):>8}  {result}")
    if notes:
        print()
        print("\n".join(notes))


def write_json(
    path: Path, args: argparse.Namespace, meta: dict[str, Any], results: list[Measured]
) -> None:
    checks = make_checks({r.key: r for r in results})
    document = {
        **meta,
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "targets": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(r).items()}
            for r in results
        ],
        "checks": [{**asdict(c), "ratio": round(c.ratio, 4), "passed": c.passed} for c in checks],
        "passed": all(c.passed for c in checks),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


# main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="dataproduct benchmark: authenticated 10-row JSON queries vs bare FastAPI"
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds over all targets; best counts"
    )
    parser.add_argument(
        "--loadgen", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if found"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPUs")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.connections < 1 or args.rounds < 1:
        parser.error("--duration, --connections and --rounds must be >= 1, --warmup >= 0")
    return args


def run_targets(
    args: argparse.Namespace,
    load: LoadGenerator,
    servers: dict[str, ServerProcess],
    token: str,
    client_cpus: list[int] | None,
) -> tuple[list[Measured], list[str]]:
    """Every target once per round, in the same order; the best run of each counts.

    Also returns notes on failed requests (a sample response of a target with non-2xx ones).
    """
    best: dict[str, Measured] = {}
    notes: list[str] = []
    for round_ in range(args.rounds):
        for target in TARGETS:
            server = servers[target.server]
            request = http_request(target, server.base_url, token)
            log(f"round {round_ + 1}/{args.rounds}: {target.label}")
            result = measure(load, request, server.pid, args, client_cpus)
            if result.non_2xx or result.errors:
                notes.append(
                    f"{target.key}, round {round_ + 1}: {result.errors} errors, "
                    f"{result.non_2xx} non-2xx responses; now: {sample_response(request)}"
                )
            best[target.key] = record(best.get(target.key), target, result)
    return [best[t.key] for t in TARGETS], notes


def sample_response(request: Request) -> str:
    """One response to the request, status and the start of the body."""
    try:
        response = httpx.request(
            request.method, request.url, headers=request.headers, content=request.body, timeout=30
        )
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    return f"{response.status_code} {response.text[:300]}"


def serve_and_measure(
    args: argparse.Namespace,
    load: LoadGenerator,
    server_cpus: list[int] | None,
    client_cpus: list[int] | None,
) -> tuple[list[Measured], list[str], str]:
    """Start both servers, check their answers, load every target; (results, notes, CPUs)."""
    token = issue_token(SECRET, "bench", ["output:read"], ttl_s=24 * 3600)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        log("starting the example product (ingestion and first run)")
        with product_server(work, server_cpus) as product:
            pages = [
                check_response(http_request(t, product.base_url, token))
                for t in TARGETS
                if t.server == PRODUCT
            ]
            log("starting the bare FastAPI peer")
            with bare_server(work, server_cpus, pages[0]) as bare:
                for t in TARGETS:
                    if t.server == BARE:
                        check_response(http_request(t, bare.base_url, token))
                servers = {PRODUCT: product, BARE: bare}
                placed = affinity(servers)
                results, notes = run_targets(args, load, servers, token, client_cpus)
    return results, notes, placed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = time.perf_counter()
    load_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    server_cpus, client_cpus, pinning = (None, None, "no (--no-pin)")
    if not args.no_pin:
        server_cpus, client_cpus, pinning = split_cpus()
    try:
        load = choose_load(args.loadgen, client_cpus)
        results, notes, placed = serve_and_measure(args, load, server_cpus, client_cpus)
    except (RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    checks = make_checks({r.key: r for r in results})
    load_end = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    meta: dict[str, Any] = {
        "loadgen": load.name,
        "pinning": f"{pinning}; {placed}",
        "versions": versions(),
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "elapsed_s": round(time.perf_counter() - clock, 1),
    }
    header = [
        f"gateway benchmark: {args.connections} connections, {args.duration} s per run after "
        f"a {args.warmup} s warm-up, best of {args.rounds} round(s), total {meta['elapsed_s']} s",
        f"load generator: {load.name}",
        f"pinned: {meta['pinning']}",
        meta["versions"],
        f"{os.cpu_count()} cores, {platform.system()} {platform.release()} "
        f"{platform.machine()}, load average at the start {load_start}, at the end {load_end}",
    ]
    print_report(header, results, checks, notes)
    if args.json:
        write_json(args.json, args, {**meta, "notes": notes}, results)
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
