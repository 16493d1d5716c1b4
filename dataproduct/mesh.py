"""A mesh: several product folders that feed each other, described by one `mesh.yaml`.

    name: sales
    gateway: {port: 8000}
    marketplace: {port: 8090}
    products:                    # upstream products before the ones that read them
      - {dir: sales-de, port: 8101}
      - {dir: sales-europe, port: 8103}

A product reads another through a `product` source whose URL is the variable
`${env:MESH_URL_<NAME>}` (`MESH_URL_SALES_DE`): every way of running the mesh (`dataproduct
mesh up`, docker compose, Kubernetes) sets it to where that product listens, and the
product's own `${env:MESH_TOKEN}` is the credential it reads with. Loading is pure: nothing
here starts a process.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from dataproduct.descriptor import SLUG, ProductDescriptor, load_descriptor
from dataproduct.errors import DescriptorError
from dataproduct.gateway import GatewayRoute

MESH_FILE = "mesh.yaml"
URL_VARIABLE_PREFIX = "MESH_URL_"
CREDENTIAL_VARIABLE = "MESH_TOKEN"
_URL_REFERENCE = re.compile(r"\$\{env:\s*(" + URL_VARIABLE_PREFIX + r"[A-Z0-9_]+)\s*\}")

Port = int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSpec(_Strict):
    """Where a mesh-wide service (the gateway, the marketplace) listens."""

    port: Port = Field(ge=1, le=65535)


class ProductEntry(_Strict):
    """One product of the mesh: its folder (relative to the mesh file) and its port."""

    dir: str = Field(min_length=1)
    port: Port = Field(ge=1, le=65535)


class MeshSpec(_Strict):
    """The whole `mesh.yaml`."""

    name: str = Field(pattern=SLUG)
    gateway: ServiceSpec = ServiceSpec(port=8000)
    marketplace: ServiceSpec = ServiceSpec(port=8090)
    products: list[ProductEntry] = Field(min_length=1)


@dataclass(frozen=True)
class MeshProduct:
    """A product of the mesh with its descriptor read."""

    dir: Path
    port: Port
    descriptor: ProductDescriptor

    @property
    def name(self) -> str:
        """The product's name."""
        return self.descriptor.name

    @property
    def prefix(self) -> str:
        """Its standard address on the gateway: `<business-area>/<product>/v<major>`."""
        return f"{self.descriptor.domain.strip('/')}/{self.name}/v{self.descriptor.major}"

    @property
    def url_variable(self) -> str:
        """The variable that holds where this product listens, for products reading it."""
        return url_variable(self.name)

    def upstream_variables(self) -> list[str]:
        """The `MESH_URL_...` variables this product's sources read."""
        found: list[str] = []
        for source in self.descriptor.sources.values():
            for match in _URL_REFERENCE.finditer(str(source.options().get("url", ""))):
                if match[1] not in found:
                    found.append(match[1])
        return found


@dataclass(frozen=True)
class Mesh:
    """A loaded, checked mesh."""

    name: str
    dir: Path
    gateway_port: Port
    marketplace_port: Port
    products: tuple[MeshProduct, ...]

    def product(self, name: str) -> MeshProduct:
        """The product called `name` (KeyError if none)."""
        for product in self.products:
            if product.name == name:
                return product
        raise KeyError(name)

    def upstreams(self, product: MeshProduct) -> list[MeshProduct]:
        """The mesh products `product` reads."""
        by_variable = {p.url_variable: p for p in self.products}
        return [by_variable[v] for v in product.upstream_variables()]

    def url_environment(self, url_of: Callable[[MeshProduct], str]) -> dict[str, str]:
        """`MESH_URL_<NAME>` for every product, set to `url_of(product)`."""
        return {product.url_variable: url_of(product) for product in self.products}

    def routes(self, upstream_of: Callable[[MeshProduct], str]) -> list[GatewayRoute]:
        """The gateway's routes: each product at its address, to `upstream_of(product)`."""
        return [GatewayRoute(p.prefix, upstream_of(p)) for p in self.products]


def url_variable(product_name: str) -> str:
    """`sales-de` -> `MESH_URL_SALES_DE`."""
    return URL_VARIABLE_PREFIX + re.sub(r"[^A-Z0-9]", "_", product_name.upper())


def load_mesh(mesh_dir: Path) -> Mesh:
    """Read and check `DIR/mesh.yaml` and every product folder it lists.

    Raises DescriptorError naming the file and what is wrong: a bad field, a missing or
    invalid product, a port used twice, or a product reading one that is not listed
    before it.
    """
    path = mesh_dir / MESH_FILE
    spec = _read_spec(path)
    products = tuple(
        MeshProduct(mesh_dir / entry.dir, entry.port, load_descriptor(mesh_dir / entry.dir))
        for entry in spec.products
    )
    mesh = Mesh(spec.name, mesh_dir, spec.gateway.port, spec.marketplace.port, products)
    _check(mesh, path)
    return mesh


def _read_spec(path: Path) -> MeshSpec:
    if not path.is_file():
        raise DescriptorError(f"no {MESH_FILE} in {path.parent}", where=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DescriptorError(f"not valid YAML: {error}", where=str(path)) from None
    try:
        return MeshSpec.model_validate(raw)
    except PydanticValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "(top)"
        raise DescriptorError(f"{field}: {problem['msg']}", where=str(path)) from None


def _check(mesh: Mesh, path: Path) -> None:
    ports: dict[int, str] = {
        mesh.gateway_port: "the gateway",
        mesh.marketplace_port: "the marketplace",
    }
    if len(ports) < 2:
        raise DescriptorError("the gateway and the marketplace share a port", where=str(path))
    names: set[str] = set()
    known: dict[str, MeshProduct] = {}
    for product in mesh.products:
        if product.name in names:
            raise DescriptorError(f"product {product.name} is listed twice", where=str(path))
        if product.port in ports:
            raise DescriptorError(
                f"product {product.name} uses port {product.port}, as {ports[product.port]}",
                where=str(path),
            )
        for variable in product.upstream_variables():
            if variable not in known:
                raise DescriptorError(
                    f"product {product.name} reads ${{env:{variable}}}, which is no product "
                    "listed before it",
                    where=str(product.dir / "dataproduct.yaml"),
                )
        names.add(product.name)
        ports[product.port] = f"product {product.name}"
        known[product.url_variable] = product
