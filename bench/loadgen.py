"""Load generators for bench/gateway.py: wrk, or a multi-process Python client without it.

Both keep `connections` keep-alive connections busy (closed loop: a connection sends its
next request when the last response is complete), optionally pinned to given CPUs, and
report requests, latency percentiles, errors and the client's own CPU time.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

WRK_MARK = "WRK_JSON "

# wrk calls done() once at the end; latencies are in microseconds. Percentiles from its
# HdrHistogram-like buckets; non-2xx/3xx responses are counted in errors.status.
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"bytes\\": %d, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"timeout\\": %d, \\"status\\": %d, "
    .. "\\"p50_us\\": %d, \\"p90_us\\": %d, \\"p99_us\\": %d, \\"max_us\\": %d, "
    .. "\\"mean_us\\": %.1f}\\n",
    "WRK_JSON ", summary.requests, summary.duration, summary.bytes, e.connect, e.read,
    e.write, e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class Request:
    """One HTTP request, sent again and again."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class LoadResult:
    """What one measured run of a load generator saw."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect, read, write errors and timeouts
    non_2xx: int
    client_cpu_s: float
    client_wall_s: float  # the client's whole life, start-up included
    metered: float  # what the meter counted over the measured window (0 without a meter)

    @property
    def per_second(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0


Meter = Callable[[], float]
"""Read at the start and at the end of the measured window (e.g. a server's CPU seconds)."""


class LoadGenerator(Protocol):
    """Runs `request` over `connections` connections for `seconds`, on `cpus` if given."""

    name: str

    def run(
        self,
        request: Request,
        connections: int,
        seconds: int,
        cpus: list[int] | None,
        meter: Meter | None = None,
    ) -> LoadResult: ...


def pin_prefix(cpus: list[int] | None) -> list[str]:
    """`taskset -c <cpus>` to start a command on those CPUs, or nothing."""
    if not cpus:
        return []
    return ["taskset", "-c", ",".join(str(c) for c in cpus)]


def children_cpu_s() -> float:
    """CPU seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# wrk ---------------------------------------------------------------------------------------


def lua_string(text: str) -> str:
    """A Lua 5.1 string literal."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte}" for byte in char.encode())
    return '"' + "".join(out) + '"'


def wrk_script(request: Request) -> str:
    """The Lua script that makes wrk send `request` and print its figures as JSON."""
    lines = [f"wrk.method = {lua_string(request.method)}"]
    if request.body:
        lines.append(f"wrk.body = {lua_string(request.body.decode())}")
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in request.headers.items()]
    return "\n".join(lines) + "\n" + _WRK_DONE


class WrkLoad:
    """wrk (C, epoll), one thread per client CPU, driven by a generated Lua script."""

    def __init__(self, binary: str, threads: int) -> None:
        self.binary = binary
        self.threads = max(1, threads)
        self.name = f"wrk ({self.version()}, {self.threads} thread(s))"

    @staticmethod
    def find() -> str | None:
        """The wrk binary on PATH, if there is one."""
        return shutil.which("wrk")

    def version(self) -> str:
        """wrk's version line (wrk prints it with its usage)."""
        done = subprocess.run([self.binary, "-v"], capture_output=True, text=True, check=False)
        found = re.search(r"wrk\s+(\S+)", done.stdout + done.stderr)
        return found.group(1) if found else "unknown version"

    def run(
        self,
        request: Request,
        connections: int,
        seconds: int,
        cpus: list[int] | None,
        meter: Meter | None = None,
    ) -> LoadResult:
        """One run of `seconds` seconds; its figures come from the script's done()."""
        with tempfile.TemporaryDirectory(prefix="wrk-") as work:
            script = Path(work) / "request.lua"
            script.write_text(wrk_script(request))
            command = [
                *pin_prefix(cpus),
                self.binary,
                f"-t{min(self.threads, connections)}",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout=10s",
                f"-s{script}",
                request.url,
            ]
            metered = meter() if meter else 0.0
            cpu, wall = children_cpu_s(), time.monotonic()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            cpu, wall = children_cpu_s() - cpu, time.monotonic() - wall
            metered = meter() - metered if meter else 0.0
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        marked = [line for line in done.stdout.splitlines() if line.startswith(WRK_MARK)]
        if not marked:
            raise RuntimeError(f"wrk printed no figures:\n{done.stdout}{done.stderr}")
        figures: dict[str, Any] = json.loads(marked[-1][len(WRK_MARK) :])
        return LoadResult(
            requests=int(figures["requests"]),
            seconds=figures["duration_us"] / 1e6,
            p50_ms=figures["p50_us"] / 1000,
            p90_ms=figures["p90_us"] / 1000,
            p99_ms=figures["p99_us"] / 1000,
            max_ms=figures["max_us"] / 1000,
            errors=sum(int(figures[k]) for k in ("connect", "read", "write", "timeout")),
            non_2xx=int(figures["status"]),
            client_cpu_s=cpu,
            client_wall_s=wall,
            metered=metered,
        )


# Python fallback -------------------------------------------------------------------------------


def raw_request(request: Request) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes) for a keep-alive HTTP/1.1 connection."""
    parts = urlsplit(request.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": f"{host}:{port}", **request.headers}
    if request.body:
        headers["Content-Length"] = str(len(request.body))
    head = f"{request.method} {target} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return host, port, head.encode() + request.body


_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _connection(
    host: str, port: int, payload: bytes, start: float, stop: float, out: dict[str, Any]
) -> None:
    """One keep-alive connection sending `payload` until `stop`; measures from `start`."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        out["errors"] += 1
        return
    try:
        while (sent := time.monotonic()) < stop:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH.search(head)
            if length is None:
                raise ValueError("a response without Content-Length")
            await reader.readexactly(int(length.group(1)))
            received = time.monotonic()
            if sent >= start and received <= stop:
                out["latencies"].append(received - sent)
                if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                    out["non_2xx"] += 1
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        out["errors"] += 1
    finally:
        writer.close()


async def _drive(
    host: str, port: int, payload: bytes, connections: int, start: float, stop: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "errors": 0, "non_2xx": 0}
    await asyncio.gather(
        *(_connection(host, port, payload, start, stop, out) for _ in range(connections))
    )
    return out


def _client_process(
    request: Request,
    connections: int,
    start: float,
    stop: float,
    cpus: list[int] | None,
    results: Any,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    host, port, payload = raw_request(request)
    results.put(asyncio.run(_drive(host, port, payload, connections, start, stop)))


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted values (share in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(share / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class PythonLoad:
    """asyncio over raw sockets, one process per client CPU (slower than wrk: check its CPU)."""

    STARTUP_S = 1.5  # processes start (spawn) and connect before the window opens

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        self.name = f"python asyncio client ({self.processes} process(es))"

    def run(
        self,
        request: Request,
        connections: int,
        seconds: int,
        cpus: list[int] | None,
        meter: Meter | None = None,
    ) -> LoadResult:
        """One run: every process counts what completes inside the same window."""
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        count = min(self.processes, connections)
        start = time.monotonic() + self.STARTUP_S
        stop = start + seconds
        shares = [connections // count + (i < connections % count) for i in range(count)]
        cpu, wall = children_cpu_s(), time.monotonic()
        workers = [
            context.Process(
                target=_client_process, args=(request, share, start, stop, cpus, results)
            )
            for share in shares
        ]
        for worker in workers:
            worker.start()
        metered = _meter_window(meter, start, stop)
        parts = [results.get(timeout=seconds + 60) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        cpu, wall = children_cpu_s() - cpu, time.monotonic() - wall
        latencies = sorted(x for part in parts for x in part["latencies"])
        return LoadResult(
            requests=len(latencies),
            seconds=float(seconds),
            p50_ms=percentile(latencies, 50) * 1000,
            p90_ms=percentile(latencies, 90) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            max_ms=(latencies[-1] if latencies else 0.0) * 1000,
            errors=sum(int(part["errors"]) for part in parts),
            non_2xx=sum(int(part["non_2xx"]) for part in parts),
            client_cpu_s=cpu,
            client_wall_s=wall,
            metered=metered,
        )


def _meter_window(meter: Meter | None, start: float, stop: float) -> float:
    """Read the meter at `start` and at `stop` (monotonic clock); the difference."""
    if meter is None:
        return 0.0
    time.sleep(max(0.0, start - time.monotonic()))
    first = meter()
    time.sleep(max(0.0, stop - time.monotonic()))
    return meter() - first
