"""The image as production runs it: small, quick to start, a read-only root filesystem with a
data volume, a clean stop on SIGTERM (even in the middle of a run) and data kept across
restarts of the container.

The engine and the image come from `tests.container.test_container` (its `image` fixture
and helpers). Every container here runs with `--read-only --tmpfs /tmp` and a named volume
at /data (the marketplace: with its store in a PostgreSQL database of its own), removed
afterwards.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from tests.conftest import skip_or_fail
from tests.container.test_container import (
    IMAGE,
    READY_TIMEOUT_S,
    Container,
    free_port,
    image,  # noqa: F401 (the fixture that builds the image)
    remove,
    report,
    run,
    start_container,
    token,
    wait_ready,
)
from tests.marketplace.documents import PG_ADMIN_URL, example_publication

pytestmark = pytest.mark.container

MAX_IMAGE_BYTES = 300 * 1000 * 1000
MAX_READY_S = 5.0
STOP_TIMEOUT_S = 10  # docker stop's default: SIGTERM, then SIGKILL after this
DATABASE = "product.duckdb"

# A product whose `cube` model is as slow as the rows pushed to `burden` make it (n^3).
DESCRIPTOR = """\
name: lifecycle
domain: tests/container
version: 1.0.0
description: A product whose run takes as long as the rows pushed to burden make it.
owner: {name: Container Test, email: container-test@example.com}
sources:
  numbers: {type: file, path: data/numbers.csv, format: csv}
  burden: {type: push, format: csv}
pipeline:
  - name: totals
    layer: output
    sql: SELECT count(*) AS n, sum(x) AS total FROM input.numbers
  - name: cube
    layer: output
    sql: |
      SELECT count(*) AS n FROM input.burden AS a, input.burden AS b, input.burden AS c
      WHERE a.x + b.x + c.x >= 0
datasets:
  totals:
    description: Count and sum of the numbers.
    tags: [public]
    columns: {n: {type: BIGINT}, total: {type: HUGEINT}}
  cube:
    description: Triples of burden rows.
    tags: [public]
    columns: {n: {type: BIGINT}}
access:
  - {source: burden, group: returns-writers}
"""


@pytest.fixture
def volume(image: str) -> Iterator[str]:  # noqa: F811 (the imported fixture)
    """A named Docker volume for /data, removed afterwards."""
    name = f"dataproduct-test-{uuid.uuid4().hex[:10]}"
    run("docker", "volume", "create", name)
    try:
        yield name
    finally:
        run("docker", "volume", "rm", "-f", name, check=False)


def read_only(volume: str, *extra: str) -> Container:
    """Start the image on a read-only root filesystem with `volume` at /data."""
    return start_container("--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:/data", *extra)


def stop(container: Container) -> float:
    """`docker stop` (SIGTERM); the seconds it took. The process must exit with 0."""
    begin = time.monotonic()
    run("docker", "stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout=60)
    took = time.monotonic() - begin
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    return took


def restart(container: Container) -> None:
    """`docker start` the stopped container and wait until it is ready again."""
    run("docker", "start", container.name)
    wait_ready(container)


def volume_files(volume: str, product: str) -> set[str]:
    """The files in the product's data folder, seen from a throwaway container."""
    listing = run(
        "docker", "run", "--rm", "--network", "none", "-v", f"{volume}:/data",
        "--entrypoint", "ls", IMAGE, "-A", f"/data/{product}",
    ).stdout  # fmt: skip
    return set(listing.split())


def wait_run(client: httpx.Client, admin: dict[str, str], run_id: str, *states: str) -> str:
    """Poll a run until its status is one of `states` (bounded); the status."""
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = str(client.get(f"/control/runs/{run_id}", headers=admin).json()["status"])
        if status in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} is {status}, not {states}")


def rows(client: httpx.Client, container: Container, dataset: str) -> list[dict[str, Any]]:
    response = client.get(
        f"/output/datasets/{dataset}",
        params={"format": "json"},
        headers=token(container.secret, "output:read"),
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def push_csv(client: httpx.Client, container: Container, source: str, body: str) -> None:
    response = client.post(
        f"/input/{source}",
        content=body.encode(),
        headers={
            **token(container.secret, "input:write", groups=("returns-writers",)),
            "content-type": "text/csv",
        },
    )
    assert response.status_code == 201, response.text


# --- the image ----------------------------------------------------------------------------


def test_image_is_smaller_than_300_mb(image: str) -> None:  # noqa: F811
    size = int(run("docker", "image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.0f} MB"


def test_starts_ready_within_5_seconds(volume: str, request: pytest.FixtureRequest) -> None:
    """`docker run` -> /ready 200 for the embedded example (first ingestion and run
    included), on a fresh volume and again on a restart over existing data."""
    times = []
    for _ in range(3):
        started = read_only(volume)
        times.append(started.started_s)
        remove(started)
    report(request, "start -> ready", ", ".join(f"{s:.2f}s" for s in times))
    assert max(times) < MAX_READY_S, times


# --- read-only root, restarts ---------------------------------------------------------------


def test_read_only_root_serves_runs_and_keeps_data_across_a_restart(
    volume: str, request: pytest.FixtureRequest
) -> None:
    started = read_only(volume)
    try:
        admin = token(started.secret, "control:admin")
        with started.client() as client:
            push_csv(client, started, "returns", "order_id,reason\n100001,damaged\n")
            run_id = client.post("/control/runs", headers=admin).json()["id"]
            assert wait_run(client, admin, run_id, "succeeded", "failed") == "succeeded"
            before = rows(client, started, "daily_sales")
        # Nothing was written outside the volume and /tmp.
        assert run("docker", "diff", started.name).stdout.strip() == ""
        stop(started)
        assert f"{DATABASE}.wal" not in volume_files(volume, "sales-eu")  # closed cleanly
        restart(started)
        with started.client() as client:
            assert rows(client, started, "daily_sales") == before
            history = {
                r["id"]: r["status"]
                for r in client.get("/control/runs", headers=admin).json()["runs"]
            }
            assert history[run_id] == "succeeded"
    except BaseException:
        report(request, f"docker logs {started.name}", started.logs())
        raise
    finally:
        remove(started)


# --- SIGTERM in the middle of a run ----------------------------------------------------------


def _write_product(folder: Path) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "numbers.csv").write_text("x\n1\n2\n3\n")
    (folder / "dataproduct.yaml").write_text(DESCRIPTOR)


def test_sigterm_during_a_run_cancels_it_and_a_restart_keeps_the_data(
    volume: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    product = tmp_path / "product"
    _write_product(product)
    started = read_only(
        volume, "-v", f"{product}:/product:ro", "-e", "DATAPRODUCT_INGEST_ON_START=false"
    )
    try:
        admin = token(started.secret, "control:admin")
        with started.client() as client:
            # A quick run publishes both datasets (2 burden rows: a cube of 8).
            push_csv(client, started, "burden", "x\n1\n2\n")
            assert client.post("/control/ingest", headers=admin).status_code == 200
            quick = client.post("/control/runs", headers=admin).json()["id"]
            assert wait_run(client, admin, quick, "succeeded", "failed") == "succeeded"
            assert rows(client, started, "cube") == [{"n": 8}]
            totals = rows(client, started, "totals")
            # 10,000 rows make the cube a 10^12-row join: the run is running at the stop.
            push_csv(client, started, "burden", "x\n" + "\n".join(map(str, range(10_000))))
            slow = client.post("/control/runs", headers=admin).json()["id"]
            assert wait_run(client, admin, slow, "running") == "running"
            time.sleep(1)  # well into the cube

        took = stop(started)
        assert took < STOP_TIMEOUT_S, f"docker stop took {took:.1f}s"
        assert "cancelled" in started.logs()
        assert f"{DATABASE}.wal" not in volume_files(volume, "lifecycle")  # closed cleanly

        restart(started)
        with started.client() as client:
            cancelled = client.get(f"/control/runs/{slow}", headers=admin).json()
            assert cancelled["status"] == "cancelled", cancelled
            assert client.get(f"/control/runs/{quick}", headers=admin).json()["status"] == (
                "succeeded"
            )
            # The cancelled run published nothing; what the quick one did is all there.
            assert rows(client, started, "cube") == [{"n": 8}]
            assert rows(client, started, "totals") == totals
            # The 10,002 pushed rows were kept: recorded, and a new run still has the
            # whole cube to build a second later (2 rows take milliseconds).
            loads = client.get("/control/ingestions", params={"source": "burden"}, headers=admin)
            assert sum(i["rows"] for i in loads.json()["ingestions"]) == 10_002, loads.text
            again = client.post("/control/runs", headers=admin).json()["id"]
            assert wait_run(client, admin, again, "running") == "running"
            time.sleep(1)
            cancel = client.delete(f"/control/runs/{again}", headers=admin)
            assert cancel.status_code == 200, cancel.text
            assert wait_run(client, admin, again, "cancelled") == "cancelled"
    except BaseException:
        report(request, f"docker logs {started.name}", started.logs())
        raise
    finally:
        remove(started)


# --- the marketplace on PostgreSQL ------------------------------------------------------------


@pytest.fixture
def marketplace_database(image: str) -> Iterator[str]:  # noqa: F811
    """A database of its own on the real PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    name = f"mkt_container_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        skip_or_fail(f"PostgreSQL unreachable: {error}")
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def start_marketplace(database_url: str) -> Container:
    """`docker run -d ... dataproduct marketplace serve` on a free loopback port, read-only
    root; wait until /health says 200."""
    name = f"dataproduct-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    secret = secrets.token_urlsafe(32)
    run(
        "docker", "run", "-d", "--name", name, "--network", "host",
        "--read-only", "--tmpfs", "/tmp",
        "-e", f"DATAPRODUCT_JWT_SECRET={secret}",
        "-e", "DATAPRODUCT_MARKETPLACE_HOST=127.0.0.1",  # host network: stay on loopback
        "-e", f"DATAPRODUCT_MARKETPLACE_PORT={port}",
        "-e", f"DATAPRODUCT_MARKETPLACE_DATABASE_URL={database_url}",
        IMAGE, "dataproduct", "marketplace", "serve",
    )  # fmt: skip
    container = Container(name, port, secret, 0.0)
    wait_healthy(container)
    return container


def wait_healthy(container: Container) -> None:
    """Poll GET /health (bounded); fail with the container's logs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with container.client() as client:
        while time.monotonic() < deadline and container.inspect("{{.State.Running}}") == "true":
            try:
                if client.get("/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise AssertionError(f"{container.name} did not answer /health\n{container.logs()}")


def test_marketplace_stores_publications_in_postgresql(
    marketplace_database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The image's marketplace migrates a fresh PostgreSQL database at start, stores a
    product's publication there and lists it, also after a restart."""
    driver = run(
        "docker", "run", "--rm", "--network", "none", "--entrypoint", "python", IMAGE,
        "-c", "import psycopg; print(psycopg.pq.__impl__, psycopg.pq.version())",
    ).stdout.split()  # fmt: skip
    assert driver[0] == "binary", driver  # the C implementation, on the wheel's libpq
    publication = example_publication(tmp_path)
    started = start_marketplace(marketplace_database)
    try:
        publisher = token(started.secret, "marketplace:publish", subject="product:sales-eu")
        reader = token(started.secret)
        with started.client() as client:
            assert client.get("/health").json() == {"status": "ok", "store": "postgresql"}
            url = "/api/v1/products/sales-eu"
            published = client.put(url, json=publication, headers=publisher)
            assert published.status_code == 200, published.text
            listed = client.get("/api/v1/products", headers=reader).json()["products"]
            assert [p["name"] for p in listed] == ["sales-eu"]
        stored = create_engine(marketplace_database)
        try:
            with stored.connect() as connection:
                names = connection.execute(text("SELECT name FROM products")).scalars().all()
                assert names == ["sales-eu"]
        finally:
            stored.dispose()
        # A restart migrates nothing more and serves what was stored.
        run("docker", "restart", "--time", str(STOP_TIMEOUT_S), started.name, timeout=60)
        wait_healthy(started)
        with started.client() as client:
            product = client.get(url, headers=reader)
            assert product.status_code == 200, product.text
            assert product.json()["domain"] == "sales/europe"
    except BaseException:
        report(request, f"docker logs {started.name}", started.logs())
        raise
    finally:
        remove(started)
