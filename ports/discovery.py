"""The discovery port: what the product is and holds, as JSON or as a page for people."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dataproduct.discovery import dataset_document, dataset_documents, product_document
from dataproduct.reading import find_dataset
from pipelines.runtime import ProductRuntime
from ports.auth import runtime_of
from ports.pages import product_page

router = APIRouter(prefix="/discovery", tags=["discovery"])


def _wants_html(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or request.query_params.get("format") == "html"


def _product(runtime: ProductRuntime) -> dict[str, Any]:
    sources = {name: c.describe() for name, c in runtime.connectors.items()}
    return product_document(
        runtime.descriptor, runtime.storage, runtime.settings.base_url(), sources
    )


@router.get("", response_model=None)
def discover(request: Request) -> HTMLResponse | JSONResponse:
    """The product: identity, owner, ports with URLs, datasets summary."""
    runtime = runtime_of(request)
    document = _product(runtime)
    if _wants_html(request):
        details = dataset_documents(
            runtime.descriptor, runtime.storage, runtime.settings.base_url()
        )
        return HTMLResponse(product_page(document, details))
    return JSONResponse(document)


@router.get("/datasets")
def datasets(request: Request) -> dict[str, Any]:
    """Every published dataset with its schema, size, freshness and SQL."""
    runtime = runtime_of(request)
    documents = dataset_documents(runtime.descriptor, runtime.storage, runtime.settings.base_url())
    return {"datasets": documents}


@router.get("/datasets/{name}")
def dataset(name: str, request: Request) -> dict[str, Any]:
    """One dataset in full."""
    runtime = runtime_of(request)
    return dataset_document(
        find_dataset(runtime.storage, name),
        runtime.descriptor,
        runtime.settings.base_url(),
        runtime.storage,
    )


@router.get("/lineage")
def lineage(request: Request) -> dict[str, Any]:
    """Table- and column-level lineage from the sources through the models to the outputs."""
    return runtime_of(request).lineage()
