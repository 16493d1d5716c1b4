"""What each process of a mesh is given: the environment of a product and of the marketplace.

`dataproduct mesh up`, docker compose and Kubernetes all run the same processes; they differ
only in where things listen. A product learns its public address on the gateway, where its
upstream products are (`MESH_URL_<NAME>`, their gateway addresses, so the marketplace can
link them), the shared token secret, and the marketplace; its own credential (`MESH_TOKEN`,
subject `product:<name>`) reads upstream ports and publishes to the marketplace.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataproduct.mesh import CREDENTIAL_VARIABLE, Mesh, MeshProduct
from dataproduct.security import issue_token

PRODUCT_SCOPES = ["output:read", "marketplace:publish"]
MARKETPLACE_SCOPES = ["control:admin"]
TOKEN_TTL_S = 30 * 24 * 3600  # a product's mesh credential; a restart mints a new one


@dataclass(frozen=True)
class MeshPlaces:
    """Where the mesh's shared parts are, as its processes reach them."""

    gateway_url: str  # e.g. http://127.0.0.1:8000
    marketplace_url: str  # e.g. http://127.0.0.1:8090

    def address(self, product: MeshProduct) -> str:
        """The product's public address on the gateway (no trailing slash)."""
        return f"{self.gateway_url.rstrip('/')}/{product.prefix}"


def product_subject(product: MeshProduct) -> str:
    """The subject of a product's own credential: what upstream grants name."""
    return f"product:{product.name}"


def product_token(secret: str, product: MeshProduct, ttl_s: int = TOKEN_TTL_S) -> str:
    """A product's mesh credential, signed with the mesh's shared secret."""
    return issue_token(secret, product_subject(product), PRODUCT_SCOPES, ttl_s=ttl_s)


def marketplace_token(secret: str, ttl_s: int = TOKEN_TTL_S) -> str:
    """The marketplace's credential on products' control ports (it writes granted access)."""
    return issue_token(secret, "marketplace", MARKETPLACE_SCOPES, ttl_s=ttl_s)


def product_environment(
    mesh: Mesh, product: MeshProduct, places: MeshPlaces, token: str | None
) -> dict[str, str]:
    """The variables one product of the mesh runs with (no secret but `token`).

    Listening address, data folder and the token secret are the runner's to add.
    """
    found = {
        "DATAPRODUCT_PUBLIC_URL": places.address(product),
        "DATAPRODUCT_MARKETPLACE_URL": places.marketplace_url,
        **mesh.url_environment(places.address),
    }
    if token is not None:
        found[CREDENTIAL_VARIABLE] = token
        found["DATAPRODUCT_MARKETPLACE_TOKEN"] = token
    return found


def marketplace_environment(places: MeshPlaces, token: str | None) -> dict[str, str]:
    """The variables the mesh's marketplace runs with (its store is the runner's to add).

    Reading is open (a local mesh has no sign-in); its credential goes only to the
    gateway's addresses.
    """
    found = {
        "DATAPRODUCT_MARKETPLACE_PUBLIC_READ": "true",
        "DATAPRODUCT_MARKETPLACE_PRODUCT_URL_PREFIXES": f'["{places.gateway_url.rstrip("/")}/"]',
    }
    if token is not None:
        found["DATAPRODUCT_MARKETPLACE_PRODUCT_TOKEN"] = token
    return found
