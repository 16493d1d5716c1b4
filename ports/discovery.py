"""The discovery port: what the product is and holds, as JSON or as a page for people.

Open by default (`discovery_public`). Everyone sees every dataset's summary; the details
only of datasets the caller may read, or that are tagged `public`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dataproduct.discovery import dataset_document, dataset_documents, product_document
from dataproduct.reading import find_dataset
from dataproduct.security import Principal
from ports.auth import optional_principal, runtime_of
from ports.pages import product_page

router = APIRouter(prefix="/discovery", tags=["discovery"])
Caller = Annotated[Principal, Depends(optional_principal)]


def _wants_html(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or request.query_params.get("format") == "html"


@router.get("", response_model=None)
def discover(request: Request, caller: Caller) -> HTMLResponse | JSONResponse:
    """The product: identity, owner, ports with URLs, datasets summary."""
    runtime = runtime_of(request)
    base_url, policy = runtime.settings.base_url(), runtime.access.policy
    document = product_document(
        runtime.descriptor, runtime.storage, base_url, runtime.source_documents(), policy, caller
    )
    if _wants_html(request):
        return HTMLResponse(product_page(document, documents_for(request, caller)))
    return JSONResponse(document)


@router.get("/datasets")
def datasets(request: Request, caller: Caller) -> dict[str, Any]:
    """Every published dataset: schema, size, freshness and SQL where the caller may see them."""
    return {"datasets": documents_for(request, caller)}


def documents_for(request: Request, caller: Principal) -> list[dict[str, Any]]:
    """Every published dataset as `caller` may see it (in full where it may read it)."""
    runtime = runtime_of(request)
    return dataset_documents(
        runtime.descriptor,
        runtime.storage,
        runtime.settings.base_url(),
        runtime.access.policy,
        caller,
    )


@router.get("/datasets/{name}")
def dataset(name: str, request: Request, caller: Caller) -> dict[str, Any]:
    """One dataset: in full where the caller may read it, else its summary."""
    runtime = runtime_of(request)
    return dataset_document(
        find_dataset(runtime.storage, name),
        runtime.descriptor,
        runtime.settings.base_url(),
        runtime.storage,
        runtime.access.policy,
        caller,
    )


@router.get("/lineage")
def lineage(request: Request, caller: Caller) -> dict[str, Any]:
    """Table- and column-level lineage from the sources through the models to the outputs."""
    return runtime_of(request).lineage()
