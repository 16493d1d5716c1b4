"""A real nginx gateway in front of two real products, each at its standard address.

nginx is installed from Debian when missing (once per session, with services kept from
starting); when that is impossible the tests are skipped locally and fail in CI. Everything
listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from dataproduct.cli import example_dir
from dataproduct.gateway import GatewayRoute, render_nginx
from dataproduct.nginx import nginx_command
from dataproduct.security import issue_token
from tests.conftest import SECRET
from tests.server.conftest import Launcher, Server, free_port

pytestmark = pytest.mark.server

READY_TIMEOUT_S = 30.0

EU, US = "sales/eu/sales-eu/v1", "sales/us/sales-us/v1"
NOT_FOUND = {
    "error": {"code": "not_found", "message": "no data product at this address", "where": "path"}
}
RETURNS_CSV = b"order_id,reason\n100001,damaged\n"
MAX_BODY, MAX_BODY_BYTES = "8m", 8 * 1024 * 1024


# --- two products behind one gateway ----------------------------------------------------


@dataclass
class Gateway:
    """nginx in front of the products, with its runtime folder and the products by prefix."""

    process: subprocess.Popen[bytes]
    base: str
    runtime: Path
    products: dict[str, Server]

    def logs(self) -> str:
        """nginx's error log and output (for failure messages)."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.runtime / "error.log", self.runtime / "nginx.out")
            if path.exists()
        )

    def url(self, prefix: str, path: str = "") -> str:
        """The gateway address of `path` inside the product at `prefix`."""
        return f"{self.base}/{prefix}{path}"


def _product_copy(target: Path, name: str) -> Path:
    shutil.copytree(example_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    descriptor = target / "dataproduct.yaml"
    text = descriptor.read_text()
    assert "\nname: sales-eu\n" in text
    descriptor.write_text(text.replace("\nname: sales-eu\n", f"\nname: {name}\n"))
    return target


def _start_nginx(config: Path, runtime: Path, base: str) -> subprocess.Popen[bytes]:
    with (runtime / "nginx.out").open("wb") as out:
        process = subprocess.Popen(
            nginx_command(config, runtime),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=runtime,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{base}/", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=30)
    logs = [(runtime / name).read_text(errors="replace") for name in ("error.log", "nginx.out")]
    raise AssertionError(f"nginx did not answer (exit {process.returncode}):\n{''.join(logs)}")


@pytest.fixture(scope="module")
def gateway(nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """sales-eu and sales-us served by real processes, behind a real nginx."""
    work = tmp_path_factory.mktemp("gateway")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    launcher = Launcher(work)
    try:
        products = {}
        for prefix, name in ((EU, "sales-eu"), (US, "sales-us")):
            products[prefix] = launcher(
                _product_copy(work / name, name),
                work / f"data-{name}",
                secret=SECRET,
                env={"DATAPRODUCT_PUBLIC_URL": f"{base}/{prefix}"},
            )
        runtime = work / "nginx"
        runtime.mkdir()
        routes = [GatewayRoute(prefix, server.base) for prefix, server in products.items()]
        config = runtime / "nginx.conf"
        listen = f"127.0.0.1:{port}"
        config.write_text(render_nginx(routes, listen, runtime_dir=runtime, max_body=MAX_BODY))
        process = _start_nginx(config, runtime, base)
        yield Gateway(process, base, runtime, products)
        process.send_signal(signal.SIGQUIT)  # graceful stop
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    finally:
        launcher.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """A plain client (no proxy from the environment)."""
    with httpx.Client(timeout=60, trust_env=False) as client:
        yield client


def _bearer(*scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(SECRET, 'gw-test', list(scopes))}"}


def _urls(document: Any) -> Iterator[str]:
    """Every absolute http(s) URL anywhere in a JSON document."""
    if isinstance(document, dict):
        for value in document.values():
            yield from _urls(value)
    elif isinstance(document, list):
        for value in document:
            yield from _urls(value)
    elif isinstance(document, str) and document.startswith(("http://", "https://")):
        yield document


# --- through the gateway ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", [EU, US])
def test_each_product_answers_at_its_address(
    gateway: Gateway, http: httpx.Client, prefix: str
) -> None:
    """/<prefix>/health reaches that product; a bare /<prefix> redirects to /<prefix>/."""
    assert http.get(gateway.url(prefix, "/health")).status_code == 200, gateway.logs()
    bare = http.get(gateway.url(prefix, "?x=1"))
    assert bare.status_code == 308
    assert bare.headers["location"] == f"/{prefix}/?x=1"


@pytest.mark.parametrize(("prefix", "name"), [(EU, "sales-eu"), (US, "sales-us")])
def test_discovery_gives_out_gateway_links(
    gateway: Gateway, http: httpx.Client, prefix: str, name: str
) -> None:
    """Each product names itself, and every link it gives out is under its gateway address."""
    document = http.get(gateway.url(prefix, "/discovery")).json()
    assert document["name"] == name
    assert document["url"] == gateway.url(prefix)
    urls = list(_urls(document))
    assert len(urls) >= 5
    home = gateway.url(prefix)
    assert all(url == home or url.startswith(f"{home}/") for url in urls), urls


def test_the_authorization_header_is_forwarded_and_required(
    gateway: Gateway, http: httpx.Client
) -> None:
    """With a token: 200 through the gateway; without: the product's own 401."""
    rows = gateway.url(EU, "/output/datasets/daily_sales?limit=3")
    page = http.get(rows, headers=_bearer("output:read"))
    assert page.status_code == 200, page.text
    assert page.json()["count"] == 3
    refused = http.get(rows)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthenticated"


def test_arrow_streams_arrive_intact(gateway: Gateway, http: httpx.Client) -> None:
    """A dataset and a large query result in Arrow, streamed through without buffering."""
    reader = _bearer("output:read")
    total = http.get(gateway.url(EU, "/discovery/datasets/daily_sales")).json()["row_count"]
    with http.stream(
        "GET", gateway.url(EU, "/output/datasets/daily_sales?format=arrow"), headers=reader
    ) as response:
        assert response.status_code == 200
        body = response.read()
    assert pa.ipc.open_stream(body).read_all().num_rows == total > 0

    query = {"sql": "SELECT r AS n FROM range(400000) AS t(r)", "format": "arrow"}
    with http.stream(
        "POST", gateway.url(EU, "/output/query"), json=query, headers=reader
    ) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    table = pa.ipc.open_stream(b"".join(chunks)).read_all()
    assert table.column("n").to_pylist() == list(range(400000))


def test_a_csv_push_goes_through(gateway: Gateway, http: httpx.Client) -> None:
    """POST /input/returns with a CSV body reaches the second product's input port."""
    pushed = http.post(
        gateway.url(US, "/input/returns"),
        content=RETURNS_CSV,
        headers={**_bearer("input:write", "control:admin"), "content-type": "text/csv"},
    )
    assert pushed.status_code == 201, pushed.text
    assert pushed.json()["rows"] == 1


def test_a_large_chunked_upload_streams_through(gateway: Gateway, http: httpx.Client) -> None:
    """A few MB sent chunked reach the product whole, and nginx spools nothing to disk."""
    rows = 200_000

    def body() -> Iterator[bytes]:
        yield b"order_id,reason\n"
        for start in range(0, rows, 10_000):
            yield b"".join(b"%d,late\n" % n for n in range(start, start + 10_000))

    pushed = http.post(
        gateway.url(EU, "/input/returns"),
        content=body(),
        headers={**_bearer("input:write", "control:admin"), "content-type": "text/csv"},
    )
    assert pushed.status_code == 201, pushed.text
    assert pushed.json()["rows"] == rows
    assert "temporary file" not in gateway.logs()


def test_a_body_over_the_gateway_limit_is_a_json_413(gateway: Gateway, http: httpx.Client) -> None:
    """Larger than `max_body`: refused by nginx itself, in the project's error shape."""
    too_large = b"order_id,reason\n" + b"1,late\n" * (MAX_BODY_BYTES // 7 + 1)
    refused = http.post(
        gateway.url(EU, "/input/returns"),
        content=too_large,
        headers={**_bearer("input:write", "control:admin"), "content-type": "text/csv"},
    )
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/sales/eu/sales-eu/v2/health", "/nowhere", "/sales/eu/"])
def test_unknown_addresses_get_a_json_404(gateway: Gateway, http: httpx.Client, path: str) -> None:
    """No product at an address: the project's JSON error shape, as application/json."""
    response = http.get(f"{gateway.base}{path}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == NOT_FOUND


def test_the_root_lists_the_products(gateway: Gateway, http: httpx.Client) -> None:
    """GET / on the gateway: every product's address and upstream, as JSON."""
    response = http.get(f"{gateway.base}/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "products": [
            {"path": f"/{prefix}/", "upstream": server.base}
            for prefix, server in gateway.products.items()
        ]
    }
    posted = http.post(f"{gateway.base}/")
    assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
    assert posted.json()["error"]["code"] == "method_not_allowed"


def test_the_access_log_is_json_lines(gateway: Gateway, http: httpx.Client) -> None:
    """Each request is one JSON line: time, client, method, uri, status, bytes, upstream."""
    uri = f"/{US}/health?probe=access-log"
    http.get(f"{gateway.base}{uri}")
    deadline = time.monotonic() + 5  # nginx logs right after it answered
    while True:
        lines = (gateway.runtime / "access.log").read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        matching = [e for e in entries if e["uri"] == uri]
        if matching or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    [entry] = matching
    assert entry["method"] == "GET" and entry["status"] == 200
    assert entry["remote_addr"] == "127.0.0.1"
    assert entry["upstream"] == gateway.products[US].base.removeprefix("http://")
    assert entry["bytes"] > 0 and entry["request_time"] >= 0 and entry["time"]
