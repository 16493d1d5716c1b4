"""`GET /metrics`: the product's metrics in the Prometheus text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dataproduct.metrics import CONTENT_TYPE
from dataproduct.security import Principal
from ports.auth import require_metrics_reader, runtime_of

router = APIRouter(tags=["metrics"])
Scraper = Annotated[Principal, Depends(require_metrics_reader)]


@router.get("/metrics", response_class=Response)
def metrics(request: Request, principal: Scraper) -> Response:
    """Requests, latency, rows and bytes served, runs and ingestion (needs `metrics:read`)."""
    body = runtime_of(request).access.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE)
