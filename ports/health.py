"""Liveness and readiness: open to everyone."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ports.auth import runtime_of

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/ready", response_model=None)
async def ready(request: Request) -> dict[str, Any] | JSONResponse:
    """The product finished starting (first ingestion and run) and serves its data."""
    readiness = runtime_of(request).readiness
    if not readiness.ready.is_set():
        body = {"error": {"code": "not_ready", "message": "starting: ingesting and running"}}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready", "problems": readiness.problems}
