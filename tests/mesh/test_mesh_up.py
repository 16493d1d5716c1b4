"""`dataproduct mesh up deploy/examples`, for real: the marketplace, nginx and four products
as local processes, exercised through the gateway.

The example is copied with its ports moved to free ones, so that a mesh someone runs on this
machine does not collide. The lineage page is kept as a screenshot under
build/test-artifacts/mesh (the README's picture comes from it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dataproduct.mesh import MeshProduct, load_mesh
from tests.server.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples"
ARTIFACTS = ROOT / "build" / "test-artifacts" / "mesh"
START_TIMEOUT_S = 240.0
FLOW_TIMEOUT_S = 90.0
NEW_ORDER = (
    b"order_id,customer_id,order_date,amount,status\nDE-990001,DEC0001,2026-10-31,1234.50,paid\n"
)


@dataclass
class RunningMesh:
    """The `mesh up` process, where its parts answer and the administrator's token."""

    process: subprocess.Popen[bytes]
    dir: Path
    state: Path
    gateway: str
    marketplace: str
    products: dict[str, MeshProduct]

    def address(self, name: str) -> str:
        """A product's address on the gateway."""
        return f"{self.gateway}/{self.products[name].prefix}"

    def row_count(self, name: str, dataset: str) -> int:
        """Rows of a product's dataset, as its discovery port tells."""
        url = f"{self.address(name)}/discovery/datasets/{dataset}"
        answer = httpx.get(url, headers=self.headers(), timeout=10).json()
        return int(answer["versions"][0]["row_count"])

    def headers(self) -> dict[str, str]:
        """The administrator's token as a header."""
        token = (self.state / "admin-token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def logs(self) -> str:
        """Every child's log tail, for a failure message."""
        tails = [
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted((self.state / "logs").glob("*.log"))
        ]
        return "\n".join(tails)


def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def published_names(marketplace: str) -> list[str]:
    """The names of the products the marketplace lists."""
    listing = httpx.get(f"{marketplace}/api/v1/products", timeout=10).json()
    return sorted(p["name"] for p in listing["products"])


def assert_marketplace_links_the_mesh(
    marketplace: str, names: list[str], address: Callable[[str], str]
) -> None:
    """Every product published, and sales-europe's sources at the countries' addresses."""
    until(lambda: published_names(marketplace) == names, 60, "all four products published")
    europe = httpx.get(f"{marketplace}/api/v1/products/sales-europe", timeout=10).json()
    sources = europe["publication"]["product"]["sources"]
    assert sources["de_orders"]["url"] == address("sales-de")
    assert sources["fr_orders"]["url"] == address("sales-fr")


def copy_with_free_ports(target: Path) -> Path:
    shutil.copytree(EXAMPLE, target)
    spec = yaml.safe_load((target / "mesh.yaml").read_text())
    spec["gateway"]["port"] = free_port()
    spec["marketplace"]["port"] = free_port()
    for entry in spec["products"]:
        entry["port"] = free_port()
    (target / "mesh.yaml").write_text(yaml.safe_dump(spec))
    return target


@pytest.fixture(scope="module")
def mesh(nginx: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """The example mesh up, until every product is ready behind the gateway."""
    work = tmp_path_factory.mktemp("mesh")
    mesh_dir = copy_with_free_ports(work / "examples")
    loaded = load_mesh(mesh_dir)
    state = work / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAPRODUCT_", "MESH_"))}
    command = [sys.executable, "-m", "dataproduct.cli", "mesh", "up", str(mesh_dir),
               "--state-dir", str(state)]  # fmt: skip
    with (work / "mesh-up.log").open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = RunningMesh(
        process, mesh_dir, state,
        f"http://127.0.0.1:{loaded.gateway_port}", f"http://127.0.0.1:{loaded.marketplace_port}",
        {p.name: p for p in loaded.products},
    )  # fmt: skip
    try:
        until(
            lambda: process.poll() is not None or b"is up" in (work / "mesh-up.log").read_bytes(),
            START_TIMEOUT_S,
            "mesh up",
        )
        assert process.poll() is None, (work / "mesh-up.log").read_text() + running.logs()
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(120)


def test_every_product_answers_at_its_standard_address(mesh: RunningMesh) -> None:
    for name, product in mesh.products.items():
        assert product.prefix.endswith(f"/{name}/v1")
        discovery = httpx.get(f"{mesh.address(name)}/discovery", timeout=10)
        assert discovery.status_code == 200, discovery.text
        assert discovery.json()["name"] == name
        assert httpx.get(f"{mesh.address(name)}/ready", timeout=10).status_code == 200
    listing = httpx.get(f"{mesh.gateway}/", timeout=10).json()
    assert sorted(p["path"] for p in listing["products"]) == sorted(
        f"/{p.prefix}/" for p in mesh.products.values()
    )


def test_products_give_out_their_gateway_addresses(mesh: RunningMesh) -> None:
    rows_link = httpx.get(f"{mesh.address('sales-global')}/discovery", timeout=10).json()
    assert mesh.address("sales-global") in json.dumps(rows_link)
    assert f"127.0.0.1:{mesh.products['sales-global'].port}" not in json.dumps(rows_link)


def test_output_needs_a_token_through_the_gateway(mesh: RunningMesh) -> None:
    url = f"{mesh.address('sales-europe')}/output/datasets/orders"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=mesh.headers(), timeout=10).status_code == 200


def test_the_continental_product_holds_every_country(mesh: RunningMesh) -> None:
    de, fr = mesh.row_count("sales-de", "orders"), mesh.row_count("sales-fr", "orders")
    assert de > 0 and fr > 0
    assert mesh.row_count("sales-europe", "orders") == de + fr


def test_the_marketplace_lists_every_product_with_lineage_across_products(
    mesh: RunningMesh,
) -> None:
    assert_marketplace_links_the_mesh(mesh.marketplace, sorted(mesh.products), mesh.address)
    page = httpx.get(f"{mesh.marketplace}/products/sales-europe/datasets/daily_sales", timeout=10)
    assert page.status_code == 200
    for link in ("/products/sales-de/datasets/orders", "/products/sales-fr/datasets/orders",
                 "/products/sales-global"):  # fmt: skip
        assert f'href="{link}"' in page.text or f"href='{link}'" in page.text, link


def test_new_country_data_flows_to_the_global_product(mesh: RunningMesh) -> None:
    totals = f"{mesh.address('sales-global')}/output/datasets/region_totals"

    def europe_revenue() -> float:
        rows = httpx.get(totals, headers=mesh.headers(), timeout=10).json()["data"]
        return float(next(r["revenue"] for r in rows if r["region"] == "europe"))

    before = europe_revenue()
    pushed = httpx.post(
        f"{mesh.address('sales-de')}/input/new_orders",
        content=NEW_ORDER,
        headers={**mesh.headers(), "Content-Type": "text/csv"},
        timeout=30,
    )
    assert pushed.status_code == 201, pushed.text
    until(lambda: abs(europe_revenue() - before - 1234.50) < 0.005, FLOW_TIMEOUT_S,
          "the pushed order in sales-global's totals\n" + mesh.logs())  # fmt: skip
    runs = httpx.get(f"{mesh.address('sales-global')}/control/runs", headers=mesh.headers(),
                     timeout=10).json()  # fmt: skip
    assert any(r["trigger"] == "load:europe_daily" for r in runs["runs"]), runs
    assert all(r["status"] == "succeeded" for r in runs["runs"]), runs


def test_a_product_that_dies_is_started_again(mesh: RunningMesh) -> None:
    found = subprocess.run(["pgrep", "-f", f"mesh serve {mesh.dir} sales-fr"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    pids = [int(pid) for pid in found.stdout.split()]
    assert len(pids) == 1, found
    os.kill(pids[0], signal.SIGKILL)
    ready = f"{mesh.address('sales-fr')}/ready"
    until(lambda: httpx.get(ready, timeout=5).status_code != 200, 30, "sales-fr down")
    until(lambda: httpx.get(ready, timeout=5).status_code == 200, 120, "sales-fr back")
    orders = httpx.get(f"{mesh.address('sales-fr')}/output/datasets/orders?limit=5",
                       headers=mesh.headers(), timeout=10).json()  # fmt: skip
    assert orders["count"] == 5


def test_lineage_picture(mesh: RunningMesh, browser: Any) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_context(viewport={"width": 1100, "height": 700}).new_page()
    page.goto(f"{mesh.marketplace}/products/sales-europe/datasets/daily_sales")
    picture = page.locator("section:has(h2:text('Lineage')) svg")
    assert "sales-de / orders" in (picture.text_content() or "")
    picture.screenshot(path=str(ARTIFACTS / "lineage.png"))
    assert (ARTIFACTS / "lineage.png").stat().st_size > 1000


def test_the_mesh_stops_cleanly_on_sigterm(mesh: RunningMesh) -> None:
    mesh.process.send_signal(signal.SIGTERM)
    assert mesh.process.wait(120) == 0
    left = subprocess.run(["pgrep", "-f", f"mesh .* {mesh.dir}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert left.stdout.strip() == "", left.stdout
