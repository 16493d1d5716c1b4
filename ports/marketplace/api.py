"""The marketplace's JSON API: products publish, people and machines find and read.

`PUT /api/v1/products/{name}` takes a product's publication with its own credential (scope
`marketplace:publish`); the first publisher of a name owns it. Everything else reads.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import (
    BadRequestError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from dataproduct.marketplace.exports import dcat, dcat_product, odcs, odps
from dataproduct.marketplace.publication import parse_publication
from dataproduct.marketplace.search import SearchFilters, Viewer, search
from dataproduct.marketplace.settings import PUBLISH_SCOPE, MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import ANONYMOUS, Principal, bearer_token, verify_token
from dataproduct.settings import DataproductSettings

router = APIRouter(prefix="/api/v1", tags=["marketplace"])


def store_of(request: Request) -> MarketplaceStore:
    """The marketplace's store."""
    store: MarketplaceStore = request.app.state.store
    return store


def settings_of(request: Request) -> MarketplaceSettings:
    """The marketplace's settings."""
    settings: MarketplaceSettings = request.app.state.settings
    return settings


def authenticate(request: Request) -> Principal:
    """The caller, from a bearer token of the organisation's issuer (401 without)."""
    auth: DataproductSettings = request.app.state.auth
    header = request.headers.get("authorization")
    if header is None and settings_of(request).public_read and request.method == "GET":
        return ANONYMOUS
    return verify_token(auth, bearer_token(header))


Caller = Annotated[Principal, Depends(authenticate)]


def viewer_of(caller: Principal) -> Viewer:
    """What the caller may see: its groups, and the products its subject publishes
    (an anonymous reader sees only unrestricted products)."""
    subject = None if caller is ANONYMOUS else caller.subject
    return Viewer(subject, caller.groups)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the publication has {declared} bytes; the limit is {limit}", where="Content-Length"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(
                f"the publication is larger than the limit of {limit} bytes", where="body"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.put("/products/{name}")
async def publish(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    """Record a product's publication (idempotent); 403 if the name is another's."""
    if PUBLISH_SCOPE not in caller.scopes:
        raise PermissionDeniedError(
            f"publishing needs a credential with the scope {PUBLISH_SCOPE}", where="scope"
        )
    publication = parse_publication(
        await _body(request, settings_of(request).max_publication_bytes)
    )
    if publication.product.name != name:
        raise BadRequestError(
            f"the publication is of {publication.product.name!r}, not {name!r}",
            where="product.name",
        )
    result = await run_in_threadpool(store_of(request).publish, publication, caller.subject)
    return asdict(result)


@router.get("/products")
def products(
    request: Request,
    caller: Caller,
    area: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    order: Annotated[str, Query(pattern="^(name|recent)$")] = "name",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Products, filtered by business area (a path prefix), owner, tag and status."""
    found = store_of(request).products(
        area=area, owner=owner, tag=tag, status=status, order=order,  # type: ignore[arg-type]
        limit=limit, offset=offset, viewer=viewer_of(caller),
    )  # fmt: skip
    return {"products": found, "limit": limit, "offset": offset}


@router.get("/products/{name}")
def product(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    """One product with its datasets (its last publication under `publication`)."""
    return store_of(request).product(name, viewer=viewer_of(caller))


@router.get("/products/{name}/history")
def history(
    name: str, request: Request, caller: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """When the product published, and whether anything changed."""
    store = store_of(request)
    store.product(name, viewer=viewer_of(caller))  # 404 for an unknown or hidden product
    return {"history": store.history(name, limit)}


@router.get("/products/{name}/datasets/{dataset}")
def dataset(
    name: str,
    dataset: str,
    request: Request,
    caller: Caller,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """A dataset in full (an older version with `version=`)."""
    return store_of(request).dataset(name, dataset, version, viewer=viewer_of(caller))


@router.get("/search")
def find(
    request: Request,
    caller: Caller,
    q: str = "",
    area: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    classification: str | None = None,
    kind: Annotated[str | None, Query(pattern="^(product|dataset)$")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Full-text search over products, datasets, tags and columns, best first."""
    filters = SearchFilters(area, owner, tag, classification, kind)  # type: ignore[arg-type]
    results = search(store_of(request), q, filters, limit, offset, viewer=viewer_of(caller))
    return {
        "total": results.total,
        "limit": results.limit,
        "offset": results.offset,
        "hits": [hit.__dict__ for hit in results.hits],
    }


@router.get("/areas")
def areas(request: Request, caller: Caller) -> dict[str, Any]:
    """The business-area tree with the products in each area."""
    return {"areas": store_of(request).business_areas(viewer=viewer_of(caller))}


@router.get("/products/{name}/odps")
def product_odps(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    """The product as an Open Data Product Standard document."""
    return odps(_publication(request, name, caller), settings_of(request).base_url())


@router.get("/products/{name}/datasets/{dataset}/odcs")
def dataset_odcs(name: str, dataset: str, request: Request, caller: Caller) -> dict[str, Any]:
    """A dataset as an Open Data Contract Standard contract."""
    publication = _publication(request, name, caller)
    store_of(request).dataset(name, dataset, viewer=viewer_of(caller))  # 404 when unknown
    return odcs(publication, dataset, settings_of(request).base_url())


@router.get("/products/{name}/dcat")
def product_dcat(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    """The product's datasets as DCAT JSON-LD."""
    return dcat_product(_publication(request, name, caller), settings_of(request).base_url())


@router.get("/dcat")
def catalog_dcat(request: Request, caller: Caller) -> dict[str, Any]:
    """Every product's datasets as one DCAT JSON-LD catalog."""
    store, viewer = store_of(request), viewer_of(caller)
    publications = [
        store.product(p["name"], viewer=viewer)["publication"]
        for p in store.products(limit=500, viewer=viewer)
    ]
    return dcat(publications, settings_of(request).base_url())


def _publication(request: Request, name: str, caller: Principal) -> dict[str, Any]:
    found: dict[str, Any] = store_of(request).product(name, viewer=viewer_of(caller))["publication"]
    return found
