"""The mesh description (`mesh.yaml`) and what each of its processes is given."""

from __future__ import annotations

import shutil
from pathlib import Path

import jwt
import pytest
import yaml

from dataproduct.errors import DescriptorError
from dataproduct.mesh import load_mesh, url_variable
from dataproduct.mesh_env import (
    MeshPlaces,
    marketplace_environment,
    marketplace_token,
    product_environment,
    product_token,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples"
SECRET = "s" * 40
PLACES = MeshPlaces("http://gw.example:8000", "http://market.example:8090")


def edited_copy(tmp_path: Path, **changes: object) -> Path:
    """The example mesh with top-level fields of mesh.yaml replaced."""
    target = tmp_path / f"mesh-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(EXAMPLE, target)
    spec = yaml.safe_load((target / "mesh.yaml").read_text())
    spec.update(changes)
    (target / "mesh.yaml").write_text(yaml.safe_dump(spec))
    return target


def test_the_example_mesh_loads_upstream_first() -> None:
    mesh = load_mesh(EXAMPLE)
    assert [p.name for p in mesh.products] == [
        "sales-de", "sales-fr", "sales-europe", "sales-global",
    ]  # fmt: skip
    assert mesh.product("sales-europe").prefix == "sales/europe/sales-europe/v1"
    assert [p.name for p in mesh.upstreams(mesh.product("sales-europe"))] == [
        "sales-de",
        "sales-fr",
    ]
    assert [p.name for p in mesh.upstreams(mesh.product("sales-global"))] == ["sales-europe"]
    assert mesh.upstreams(mesh.product("sales-de")) == []


def test_url_variable_names() -> None:
    assert url_variable("sales-de") == "MESH_URL_SALES_DE"
    assert url_variable("a-b-c9") == "MESH_URL_A_B_C9"


def test_a_product_listed_before_its_upstream_is_refused(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLE / "mesh.yaml").read_text())
    products = spec["products"]
    with pytest.raises(DescriptorError, match=r"MESH_URL_SALES_EUROPE.*no product listed before"):
        load_mesh(edited_copy(tmp_path, products=[products[3], *products[:3]]))


def test_a_port_used_twice_is_refused(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLE / "mesh.yaml").read_text())
    products = spec["products"]
    products[1]["port"] = products[0]["port"]
    with pytest.raises(DescriptorError, match=r"uses port .* as product sales-de"):
        load_mesh(edited_copy(tmp_path, products=products))
    with pytest.raises(DescriptorError, match=r"as the gateway"):
        load_mesh(edited_copy(tmp_path, gateway={"port": products[2]["port"]}))


def test_a_bad_field_or_a_missing_file_names_where(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match=r"products: .*at least 1") as error:
        load_mesh(edited_copy(tmp_path, products=[]))
    assert str(error.value.where).endswith("mesh.yaml")
    with pytest.raises(DescriptorError, match=r"no mesh.yaml"):
        load_mesh(tmp_path / "nowhere")


def test_a_missing_product_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DescriptorError, match=r"no dataproduct.yaml"):
        load_mesh(edited_copy(tmp_path, products=[{"dir": "nope", "port": 9001}]))


def test_a_product_is_given_its_address_its_upstreams_and_its_credential() -> None:
    mesh = load_mesh(EXAMPLE)
    europe = mesh.product("sales-europe")
    environment = product_environment(mesh, europe, PLACES, product_token(SECRET, europe))
    assert (
        environment["DATAPRODUCT_PUBLIC_URL"]
        == "http://gw.example:8000/sales/europe/sales-europe/v1"
    )
    assert (
        environment["MESH_URL_SALES_DE"]
        == "http://gw.example:8000/sales/europe/germany/sales-de/v1"
    )
    assert environment["DATAPRODUCT_MARKETPLACE_URL"] == "http://market.example:8090"
    assert environment["MESH_TOKEN"] == environment["DATAPRODUCT_MARKETPLACE_TOKEN"]
    claims = jwt.decode(environment["MESH_TOKEN"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "product:sales-europe"
    assert set(claims["scope"].split()) == {"output:read", "marketplace:publish"}
    assert "MESH_TOKEN" not in product_environment(mesh, europe, PLACES, None)


def test_the_marketplace_is_given_an_admin_credential_for_gateway_addresses_only() -> None:
    environment = marketplace_environment(PLACES, marketplace_token(SECRET))
    assert (
        environment["DATAPRODUCT_MARKETPLACE_PRODUCT_URL_PREFIXES"] == '["http://gw.example:8000/"]'
    )
    claims = jwt.decode(
        environment["DATAPRODUCT_MARKETPLACE_PRODUCT_TOKEN"], SECRET, algorithms=["HS256"]
    )
    assert claims["scope"] == "control:admin"
