"""`dataproduct serve` as a real process: four ports over HTTP, session tokens, clean restarts."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from dataproduct.cli import example_dir
from dataproduct.security import issue_token
from tests.conftest import SECRET
from tests.server.conftest import Launch

pytestmark = pytest.mark.server

RETURNS_CSV = b"order_id,reason\n100001,damaged\n100002,late\n"
RETURNS_LOG = {"name": "returns_log", "sql": "SELECT order_id, reason FROM input.returns"}


@pytest.fixture
def product(tmp_path: Path) -> Path:
    """A private copy of the example product."""
    target = tmp_path / "product"
    shutil.copytree(example_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _bearer(scope: str, secret: str = SECRET, *, groups: list[str] | None = None) -> dict[str, str]:
    signed = issue_token(secret, "server-test", [scope], groups=groups)
    return {"Authorization": f"Bearer {signed}"}


def _wait_run(http: httpx.Client, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state: dict[str, Any] = http.get(location, headers=_bearer("control:admin")).json()
        if state["status"] not in ("queued", "running"):
            return state
        time.sleep(0.1)
    raise AssertionError(f"run at {location} did not end")


def _snapshot(http: httpx.Client) -> dict[str, Any]:
    """Dataset sizes, and the pushed rows as republished by the pipeline."""
    sizes = {d["name"]: d["row_count"] for d in http.get("/discovery").json()["datasets"]}
    admin_reader = {
        "Authorization": "Bearer "
        + issue_token(SECRET, "server-test", ["output:read", "control:admin"])
    }
    log = http.get("/output/datasets/returns_log?format=csv", headers=admin_reader)
    return {"sizes": sizes, "returns_log": sorted(log.text.splitlines()[1:])}


def _exercise_every_port(http: httpx.Client) -> None:
    """Discovery, output (with a streamed Arrow download), input and control."""
    assert http.get("/discovery").json()["name"] == "sales-eu"
    assert (
        "text/html"
        in http.get("/discovery", headers={"Accept": "text/html"}).headers["content-type"]
    )
    reader = _bearer("output:read")
    page = http.get("/output/datasets/daily_sales?limit=3", headers=reader).json()
    assert page["count"] == 3

    with http.stream(
        "POST",
        "/output/query",
        json={"sql": "SELECT r AS n FROM range(400000) AS t(r)", "format": "arrow"},
        headers=reader,
    ) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    table = pa.ipc.open_stream(b"".join(chunks)).read_all()
    assert table.column("n").to_pylist() == list(range(400000))

    arrow = http.get("/output/datasets/daily_sales?format=arrow", headers=reader)
    assert pa.ipc.open_stream(arrow.content).read_all().num_rows == page_total(http)

    pushed = http.post(
        "/input/returns",
        content=RETURNS_CSV,
        headers={**_bearer("input:write", groups=["returns-writers"]), "content-type": "text/csv"},
    )
    assert pushed.status_code == 201 and pushed.json()["rows"] == 2

    admin = _bearer("control:admin")
    models = http.get("/control/pipeline", headers=admin).json()["models"]
    put = http.put("/control/pipeline", json={"models": [*models, RETURNS_LOG]}, headers=admin)
    assert put.status_code == 200
    started = http.post("/control/runs", headers=admin)
    assert started.status_code == 202
    location = started.headers["location"]
    assert location.startswith(str(http.base_url).rstrip("/"))
    assert _wait_run(http, location)["status"] == "succeeded"
    _wait_published(http, RETURNS_LOG["name"])


def _wait_published(http: httpx.Client, name: str) -> None:
    """A run reads as succeeded a moment before its commit (a known race): wait for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if http.get(f"/discovery/datasets/{name}").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} was not published")


def page_total(http: httpx.Client) -> int:
    """Rows of daily_sales as discovery reports them."""
    document = http.get("/discovery/datasets/daily_sales").json()
    total: int = document["row_count"]
    return total


def test_four_ports_over_http_and_a_clean_restart(
    launch: Launch, product: Path, tmp_path: Path
) -> None:
    """Serve, use every port, stop with SIGTERM (exit 0), restart: nothing is lost."""
    data_dir = tmp_path / "data"
    server = launch(product, data_dir, secret=SECRET)
    with httpx.Client(base_url=server.base, timeout=30) as http:
        _exercise_every_port(http)
        before = _snapshot(http)
    assert before["returns_log"] == ['100001,"damaged"', '100002,"late"']
    assert server.stop() == 0, server.logs()
    assert "Traceback" not in server.logs()

    again = launch(product, data_dir, secret=SECRET)
    with httpx.Client(base_url=again.base, timeout=30) as http:
        assert _snapshot(http) == before
        pipeline = http.get("/control/pipeline", headers=_bearer("control:admin")).json()
        assert pipeline["version"] == 2
    assert again.stop() == 0, again.logs()


TOKEN_LINE = re.compile(r"^\s+(output:read|input:write|control:admin)\s+(\S+)$", re.MULTILINE)


def test_without_a_secret_it_prints_working_tokens(
    launch: Launch, product: Path, tmp_path: Path
) -> None:
    """No secret: a session secret, printed tokens per scope and curl examples that work."""
    server = launch(product, tmp_path / "data", secret=None, console_script=True)
    printed = server.stdout.read_text()
    tokens = dict(TOKEN_LINE.findall(printed))
    assert sorted(tokens) == ["control:admin", "input:write", "output:read"]
    assert f"curl {server.base}/discovery" in printed
    assert f"Bearer {tokens['output:read']}' '{server.base}/output/datasets'" in printed
    with httpx.Client(base_url=server.base, timeout=30) as http:

        def bearer(value: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {value}"}

        listed = http.get("/output/datasets", headers=bearer(tokens["output:read"]))
        assert listed.status_code == 200
        assert [d["name"] for d in listed.json()["datasets"]] == ["customer_revenue", "daily_sales"]
        assert http.get("/control/runs", headers=bearer(tokens["control:admin"])).status_code == 200
        assert http.get("/control/runs", headers=bearer(tokens["output:read"])).status_code == 403
        forged = http.get("/output/datasets", headers=_bearer("output:read"))
        assert forged.status_code == 401
    assert server.stop() == 0, server.logs()
