"""The Docker image for real: build it, run it, talk to it over HTTP on loopback.

The module fixture makes sure a Docker engine answers (`deploy/docker/ensure-dockerd.sh`),
builds the local Debian base image and the product image (`deploy/docker/build-image.sh`),
then runs the image with `--network host`, listening on 127.0.0.1 only. Without a usable
engine the tests are skipped locally and fail in CI (`CI=true`). Tokens are made with PyJWT
directly (HS256, the secret given to the container), independent of the CLI.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyarrow.ipc
import pytest

from tests.conftest import IN_CI, skip_or_fail

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
DOCKER_SCRIPTS = ROOT / "deploy" / "docker"
IMAGE = os.environ.get("DATAPRODUCT_IMAGE", "dataproduct:dev")
BASE_IMAGE = os.environ.get("DATAPRODUCT_BASE_IMAGE", "dataproduct-base:bookworm")
READY_TIMEOUT_S = 60.0
HEALTHY_TIMEOUT_S = 60.0
EXAMPLE_DATASETS = {"customer_revenue", "daily_sales"}
PUSH_SOURCE = "returns"  # the example's `{type: push, format: csv}` source


def run(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion message carries its output."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )
    return result


def run_script(name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return run("bash", str(DOCKER_SCRIPTS / name), timeout=timeout, check=False)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def token(
    secret: str, *scopes: str, subject: str = "container-test", groups: tuple[str, ...] = ()
) -> dict[str, str]:
    """An Authorization header with an HS256 token holding `scopes` (and `groups`)."""
    claims = {
        "sub": subject,
        "scope": " ".join(scopes),
        "groups": list(groups),
        "exp": int(time.time()) + 600,
    }
    return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}


def report(request: pytest.FixtureRequest, title: str, text: str) -> None:
    """Write past pytest's output capture (used for container logs on failure)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(f"\n=== {title} ===\n{text}", file=sys.stderr)
        return
    reporter.ensure_newline()
    reporter.write_sep("=", title)
    reporter.write_line(text)


@dataclass
class Container:
    """A running product container and how to reach it."""

    name: str
    port: int
    secret: str
    started_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def logs(self) -> str:
        result = subprocess.run(
            ("docker", "logs", "--tail", "200", self.name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout

    def inspect(self, template: str) -> str:
        return run("docker", "inspect", "--format", template, self.name).stdout.strip()


def start_container(*extra: str) -> Container:
    """`docker run -d` the image on a free loopback port; wait until /ready says 200."""
    name = f"dataproduct-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    secret = secrets.token_urlsafe(32)
    begin = time.monotonic()
    run(
        "docker", "run", "-d", "--name", name, "--network", "host",
        "-e", f"DATAPRODUCT_PORT={port}",
        "-e", "DATAPRODUCT_HOST=127.0.0.1",  # host network: stay on loopback
        "-e", f"DATAPRODUCT_JWT_SECRET={secret}",
        *extra, IMAGE,
    )  # fmt: skip
    container = Container(name, port, secret, 0.0)
    try:
        wait_ready(container)
    except BaseException:
        remove(container)
        raise
    container.started_s = time.monotonic() - begin
    return container


def wait_ready(container: Container) -> None:
    """Poll GET /ready (bounded); fail with the container's logs."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer yet"
    with container.client() as client:
        while time.monotonic() < deadline:
            if container.inspect("{{.State.Running}}") != "true":
                last = f"the container stopped (exit {container.inspect('{{.State.ExitCode}}')})"
                break
            try:
                response = client.get("/ready", timeout=2.0)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            time.sleep(0.25)
    raise AssertionError(
        f"{container.name} was not ready within {READY_TIMEOUT_S:.0f}s: {last}\n"
        f"--- docker logs ---\n{container.logs()}"
    )


def remove(container: Container) -> None:
    run("docker", "rm", "-f", "-v", container.name, check=False)


# --- fixtures ---------------------------------------------------------------------------


def _why(result: subprocess.CompletedProcess[str]) -> str:
    """A script's last error line (its whole stderr tail in CI, where this fails)."""
    lines = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
    errors = [line for line in lines if "ERROR" in line] or lines
    return "\n".join(lines[-40:]) if IN_CI else errors[-1]


@pytest.fixture(scope="module")
def image() -> str:
    """The engine is up and the image is built (the scripts are idempotent and cached)."""
    if os.geteuid() != 0:
        skip_or_fail("building and running images needs root (dockerd, debootstrap)")
    engine = run_script("ensure-dockerd.sh", timeout=600)
    if engine.returncode != 0:
        skip_or_fail(f"no Docker engine: {_why(engine)}")
    base = run_script("build-base-image.sh", timeout=1800)
    if base.returncode != 0:
        skip_or_fail(f"cannot build the base image {BASE_IMAGE}: {_why(base)}")
    built = run_script("build-image.sh", timeout=1800)
    assert built.returncode == 0, (
        f"build-image.sh failed\n--- stdout ---\n{built.stdout[-6000:]}\n"
        f"--- stderr ---\n{built.stderr[-6000:]}"
    )
    return IMAGE


@pytest.fixture(scope="module")
def container(image: str, request: pytest.FixtureRequest) -> Iterator[Container]:
    """The image serving its embedded example product; always removed afterwards."""
    failed_before = request.session.testsfailed
    started = start_container()
    try:
        yield started
    finally:
        if request.session.testsfailed > failed_before:
            report(request, f"docker logs {started.name}", started.logs())
        remove(started)


@pytest.fixture
def client(container: Container) -> Iterator[httpx.Client]:
    with container.client() as http:
        yield http


# --- the running example product ----------------------------------------------------------


def test_health_and_ready(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


def test_discovery_lists_the_example_datasets(client: httpx.Client) -> None:
    product = client.get("/discovery")
    assert product.status_code == 200, product.text
    assert product.headers["content-type"].startswith("application/json")
    document = product.json()
    assert document["name"] == "sales-eu"
    assert {d["name"] for d in document["datasets"]} >= EXAMPLE_DATASETS

    datasets = client.get("/discovery/datasets")
    assert datasets.status_code == 200, datasets.text
    assert {d["name"] for d in datasets.json()["datasets"]} >= EXAMPLE_DATASETS


def _row_count(client: httpx.Client, dataset: str) -> int:
    documents = client.get("/discovery").json()["datasets"]
    count: int = next(d["row_count"] for d in documents if d["name"] == dataset)
    return count


def test_output_port_gives_rows_as_json(client: httpx.Client, container: Container) -> None:
    response = client.get(
        "/output/datasets/daily_sales",
        params={"format": "json", "limit": 5},
        headers=token(container.secret, "output:read"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    page = response.json()
    rows: list[dict[str, Any]] = page["data"]
    assert 0 < len(rows) <= 5
    assert {"order_date", "country", "orders", "revenue"} <= set(rows[0])


def test_output_port_streams_arrow_ipc(client: httpx.Client, container: Container) -> None:
    response = client.get(
        "/output/datasets/daily_sales",
        params={"format": "arrow"},
        headers=token(container.secret, "output:read"),
    )
    assert response.status_code == 200, response.text
    table = pyarrow.ipc.open_stream(response.content).read_all()
    assert {"order_date", "country", "orders", "revenue"} <= set(table.column_names)
    assert table.num_rows == _row_count(client, "daily_sales") > 0


def test_output_without_token_is_401_json(client: httpx.Client) -> None:
    response = client.get("/output/datasets/daily_sales")
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] and error["message"]


def test_wrong_scope_is_403(client: httpx.Client, container: Container) -> None:
    response = client.get("/control/runs", headers=token(container.secret, "output:read"))
    assert response.status_code == 403, response.text
    assert "control:admin" in response.json()["error"]["message"]


def test_input_port_accepts_a_pushed_csv(client: httpx.Client, container: Container) -> None:
    body = b"order_id,reason\n100001,damaged\n100002,late\n"
    response = client.post(
        f"/input/{PUSH_SOURCE}",
        content=body,
        headers={
            **token(container.secret, "input:write", groups=("returns-writers",)),
            "content-type": "text/csv",
        },
    )
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["source"], result["rows"]) == (PUSH_SOURCE, 2)


def test_control_port_lists_and_starts_runs(client: httpx.Client, container: Container) -> None:
    admin = token(container.secret, "control:admin")
    history = client.get("/control/runs", headers=admin)
    assert history.status_code == 200, history.text
    assert isinstance(history.json()["runs"], list)

    started = client.post("/control/runs", headers=admin)
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]

    deadline = time.monotonic() + 30
    status = started.json()["status"]
    while status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        status = client.get(f"/control/runs/{run_id}", headers=admin).json()["status"]
    assert status == "succeeded", status
    listed = client.get("/control/runs", headers=admin).json()["runs"]
    assert run_id in {r["id"] for r in listed}


# --- the container itself -----------------------------------------------------------------


def test_process_runs_as_non_root(container: Container) -> None:
    uid = run("docker", "exec", container.name, "id", "-u").stdout.strip()
    assert uid == "10001"
    assert container.inspect("{{.Config.User}}").split(":")[0] == "10001"
    # The serving process itself (tini is PID 1, the product its child).
    owners = run("docker", "exec", container.name, "sh", "-c", "stat -c %u /proc/[0-9]*").stdout
    assert set(owners.split()) == {"10001"}, owners


def _image_config(template: str) -> str:
    return run("docker", "image", "inspect", "--format", template, IMAGE).stdout.strip()


def test_image_configuration(container: Container) -> None:
    env = json.loads(_image_config("{{json .Config.Env}}"))
    assert {"DATAPRODUCT_HOST=0.0.0.0", "DATAPRODUCT_DATA_DIR=/data"} <= set(env)
    assert "8080/tcp" in json.loads(_image_config("{{json .Config.ExposedPorts}}"))
    assert "/data" in json.loads(_image_config("{{json .Config.Volumes}}"))
    assert _image_config("{{.Config.Healthcheck.Test}}")
    # No wheels, pip, compilers or curl were left in the image.
    leftovers = run(
        "docker", "exec", container.name, "sh", "-c",
        "ls -d /wheels /opt/venv/bin/pip /usr/bin/gcc /usr/bin/curl 2>/dev/null || true",
    ).stdout  # fmt: skip
    assert leftovers.strip() == ""
    # The product's data lives in the /data volume.
    assert run("docker", "exec", container.name, "ls", "-A", "/data").stdout.strip()


def test_healthcheck_reports_healthy(container: Container) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    status = container.inspect("{{.State.Health.Status}}")
    while status != "healthy" and time.monotonic() < deadline:
        assert status in ("starting", "healthy"), container.inspect("{{json .State.Health}}")
        time.sleep(1)
        status = container.inspect("{{.State.Health.Status}}")
    assert status == "healthy", container.inspect("{{json .State.Health}}")


# --- a product folder mounted at /product ---------------------------------------------------


def _write_product(target: Path) -> None:
    """`dataproduct init` a folder, then rename the product so we can tell it was served."""
    cli = Path(sys.executable).with_name("dataproduct")
    run(str(cli), "init", str(target))
    descriptor = target / "dataproduct.yaml"
    text, renamed = re.subn(
        r"^name: .*$", "name: mounted-sales", descriptor.read_text(), count=1, flags=re.M
    )
    assert renamed == 1, "dataproduct.yaml has no top-level name"
    descriptor.write_text(text)


def test_a_mounted_product_folder_is_served(
    image: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    product = tmp_path / "product"
    _write_product(product)
    started = start_container("-v", f"{product}:/product:ro")
    try:
        with started.client() as client:
            document = client.get("/discovery").json()
            assert document["name"] == "mounted-sales"
            assert {d["name"] for d in document["datasets"]} >= EXAMPLE_DATASETS
            rows = client.get(
                "/output/datasets/daily_sales",
                params={"format": "json", "limit": 3},
                headers=token(started.secret, "output:read"),
            )
            assert rows.status_code == 200, rows.text
            assert rows.json()["data"]
        # A stop is clean and quick: SIGTERM reaches the server through tini.
        begin = time.monotonic()
        run("docker", "stop", "--time", "20", started.name, timeout=60)
        stopped_in = time.monotonic() - begin
        assert started.inspect("{{.State.ExitCode}}") == "0", started.logs()
        assert stopped_in < 15, f"docker stop took {stopped_in:.1f}s"
    except BaseException:
        report(request, f"docker logs {started.name}", started.logs())
        raise
    finally:
        remove(started)
