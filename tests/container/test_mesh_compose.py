"""The example mesh with docker compose and the project's image, exercised through the gateway.

The example is copied with its ports moved to free ones and rendered by `render_compose`
under a project name of its own, so it never meets a mesh someone runs on this machine. The
compose tool is `docker compose` or `docker-compose` (deploy/compose/ensure-compose.sh
installs Debian's 1.29 when neither is there). Everything is removed afterwards, volumes too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dataproduct.mesh import MeshProduct, load_mesh
from dataproduct.mesh_compose import add_compose_command, render_compose
from dataproduct.security import PORT_SCOPES, issue_token
from tests.conftest import skip_or_fail
from tests.container.test_container import (
    IMAGE,
    image,  # noqa: F401 (the fixture that builds the image)
    report,
)
from tests.mesh.test_mesh_up import (
    NEW_ORDER,
    assert_marketplace_links_the_mesh,
    copy_with_free_ports,
    until,
)

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy" / "compose"
UP_TIMEOUT_S = 300.0
FLOW_TIMEOUT_S = 90.0
NEW_ORDER_ID, NEW_AMOUNT = "DE-990001", 1234.50  # what NEW_ORDER holds


@dataclass
class ComposedMesh:
    """A mesh started by compose: how to drive it and where its parts answer."""

    compose: list[str]
    environment: dict[str, str]
    secret: str
    gateway: str
    marketplace: str
    products: dict[str, MeshProduct]

    def run(self, *args: str, timeout: float = 120) -> str:
        """A compose command on this project; AssertionError with its output on failure."""
        done = subprocess.run([*self.compose, *args], capture_output=True, text=True,
                              env=self.environment, timeout=timeout, check=False)  # fmt: skip
        assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stderr[-4000:]}"
        return done.stdout

    def address(self, name: str) -> str:
        """A product's address on the gateway."""
        return f"{self.gateway}/{self.products[name].prefix}"

    def headers(self) -> dict[str, str]:
        """An administrator: every port, every group the products grant to."""
        groups = sorted(
            {g.group for p in self.products.values() for g in p.descriptor.access if g.group}
        )
        token = issue_token(self.secret, "mesh-admin", list(PORT_SCOPES), groups=groups)
        return {"Authorization": f"Bearer {token}"}

    def get(self, url: str) -> httpx.Response:
        """GET with the administrator's token."""
        return httpx.get(url, headers=self.headers(), timeout=10)

    def inspect(self, template: str) -> dict[str, str]:
        """`docker inspect --format template` of every container, by service."""
        service = '{{index .Config.Labels "com.docker.compose.service"}}'
        containers = self.run("ps", "-q").split()
        found = subprocess.run(
            ["docker", "inspect", "--format", f"{service} {template}", *containers],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        return dict(line.split(" ", 1) for line in found.splitlines())

    def container(self, service: str) -> str:
        """The id of a service's container."""
        return self.run("ps", "-q", service).strip()


def _compose_command() -> list[str]:
    found = subprocess.run(["bash", str(COMPOSE_DIR / "ensure-compose.sh")], capture_output=True,
                           text=True, timeout=600, check=False)  # fmt: skip
    if found.returncode != 0:
        skip_or_fail(f"no compose tool: {found.stderr.strip()[-500:]}")
    return found.stdout.split()


@pytest.fixture(scope="module")
def mesh(
    image: str,  # noqa: F811 (the imported fixture)
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ComposedMesh]:
    """The example mesh on free ports, once every container is healthy."""
    work = tmp_path_factory.mktemp("compose")
    mesh_dir = copy_with_free_ports(work / "examples")
    loaded = load_mesh(mesh_dir)
    compose_file = work / "compose.yaml"
    compose_file.write_text(render_compose(loaded, image=image, mesh_path=str(mesh_dir)))
    project = f"dataproduct-test-{uuid.uuid4().hex[:8]}"
    secret = secrets.token_urlsafe(32)
    running = ComposedMesh(
        [*_compose_command(), "-p", project, "-f", str(compose_file)],
        {**os.environ, "MESH_JWT_SECRET": secret},
        secret,
        f"http://127.0.0.1:{loaded.gateway_port}",
        f"http://127.0.0.1:{loaded.marketplace_port}",
        {p.name: p for p in loaded.products},
    )  # fmt: skip
    failed_before = request.session.testsfailed
    try:
        running.run("up", "-d", timeout=UP_TIMEOUT_S)  # returns once the last one started
        until(lambda: _all_healthy(running), 120, "every container healthy")
        yield running
    finally:
        try:
            if request.session.testsfailed > failed_before or not _all_running(running):
                report(request, f"compose logs {project}", _logs(running))
        finally:
            running.run("down", "-v", "--timeout", "30", timeout=180)


def _all_healthy(mesh: ComposedMesh) -> bool:
    health = mesh.inspect("{{.State.Health.Status}}")
    return len(health) == len(mesh.products) + 2 and set(health.values()) == {"healthy"}


def _all_running(mesh: ComposedMesh) -> bool:
    return len(mesh.run("ps", "-q").split()) == len(mesh.products) + 2


def _logs(mesh: ComposedMesh) -> str:
    done = subprocess.run([*mesh.compose, "logs", "--no-color", "--tail", "60"],
                          capture_output=True, text=True, env=mesh.environment, timeout=60,
                          check=False)  # fmt: skip
    return done.stdout[-20000:] + done.stderr[-2000:]


def _europe_revenue(mesh: ComposedMesh) -> float:
    totals = mesh.get(f"{mesh.address('sales-global')}/output/datasets/region_totals").json()
    return float(next(r["revenue"] for r in totals["data"] if r["region"] == "europe"))


def _order_ids(mesh: ComposedMesh) -> list[str]:
    url = f"{mesh.address('sales-de')}/output/datasets/orders?format=ndjson&columns=order_id"
    answer = mesh.get(url)
    assert answer.status_code == 200, answer.text
    return [json.loads(line)["order_id"] for line in answer.text.splitlines() if line]


@pytest.fixture(scope="module")
def pushed(mesh: ComposedMesh) -> tuple[float, float]:
    """NEW_ORDER pushed to sales-de: europe's revenue in sales-global before, and once it
    grew (or stopped waiting) after."""
    before = _europe_revenue(mesh)
    answer = httpx.post(
        f"{mesh.address('sales-de')}/input/new_orders",
        content=NEW_ORDER,
        headers={**mesh.headers(), "Content-Type": "text/csv"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    with contextlib.suppress(AssertionError):  # the test says what did not arrive
        until(lambda: _europe_revenue(mesh) > before + 0.005, FLOW_TIMEOUT_S, "a change")
    return before, _europe_revenue(mesh)


def test_every_container_runs_read_only_as_non_root_on_the_host_network(
    mesh: ComposedMesh,
) -> None:
    seen = mesh.inspect(
        "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.NetworkMode}} "
        "{{.Config.Image}}"
    )
    assert sorted(seen) == sorted(["marketplace", "gateway", *mesh.products])
    for service, settings in seen.items():
        assert settings == f"10001:10001 true host {IMAGE}", service


def test_every_product_answers_at_its_standard_address(mesh: ComposedMesh) -> None:
    for name in mesh.products:
        discovery = httpx.get(f"{mesh.address(name)}/discovery", timeout=10)
        assert discovery.status_code == 200, discovery.text
        assert discovery.json()["name"] == name
        assert mesh.address(name) in discovery.text  # links are gateway addresses
        assert httpx.get(f"{mesh.address(name)}/ready", timeout=10).status_code == 200
    listing = httpx.get(f"{mesh.gateway}/", timeout=10).json()
    assert sorted(p["path"] for p in listing["products"]) == sorted(
        f"/{p.prefix}/" for p in mesh.products.values()
    )


def test_output_needs_a_token_through_the_gateway(mesh: ComposedMesh) -> None:
    url = f"{mesh.address('sales-europe')}/output/datasets/orders"
    assert httpx.get(url, timeout=10).status_code == 401
    assert mesh.get(url).status_code == 200
    wrong = issue_token("another-secret-that-is-long-enough-0123456789", "x", ["output:read"])
    forged = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    assert forged.status_code == 401


def test_the_marketplace_lists_every_product_with_lineage_across_products(
    mesh: ComposedMesh,
) -> None:
    assert_marketplace_links_the_mesh(mesh.marketplace, sorted(mesh.products), mesh.address)


def test_an_order_pushed_to_sales_de_reaches_sales_global(
    mesh: ComposedMesh, pushed: tuple[float, float]
) -> None:
    before, after = pushed
    assert after - before == pytest.approx(NEW_AMOUNT, abs=0.005)
    assert _order_ids(mesh).count(NEW_ORDER_ID) == 1


def test_a_restarted_product_container_loses_nothing(
    mesh: ComposedMesh, pushed: tuple[float, float]
) -> None:
    orders = _order_ids(mesh)
    container = mesh.container("sales-de")
    started = _started_at(container)
    mesh.run("restart", "--timeout", "30", "sales-de")
    assert _started_at(container) != started  # the same container, started again
    ready = f"{mesh.address('sales-de')}/ready"
    until(lambda: httpx.get(ready, timeout=5).status_code == 200, 120, "sales-de ready again")
    assert sorted(_order_ids(mesh)) == sorted(orders)
    assert NEW_ORDER_ID in orders
    # sales-europe polls the restarted product again; the totals downstream stay the same
    time.sleep(6)
    assert _europe_revenue(mesh) == pytest.approx(pushed[1], abs=0.005)


def _started_at(container: str) -> str:
    return subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}}", container],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()  # fmt: skip


def test_the_committed_compose_file_is_up_to_date(tmp_path: Path) -> None:
    # what `dataproduct mesh compose deploy/examples --out deploy/compose/compose.yaml` writes
    shutil.copytree(ROOT / "deploy" / "examples", tmp_path / "deploy" / "examples")
    out = tmp_path / "deploy" / "compose" / "compose.yaml"
    parser = argparse.ArgumentParser()
    add_compose_command(parser.add_subparsers())
    args = parser.parse_args(["compose", str(tmp_path / "deploy" / "examples"), "--out", str(out)])
    assert args.handler(args) == 0
    assert (COMPOSE_DIR / "compose.yaml").read_text() == out.read_text(), (
        "run: dataproduct mesh compose deploy/examples --out deploy/compose/compose.yaml"
    )
