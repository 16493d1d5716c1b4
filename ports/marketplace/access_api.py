"""Access requests over HTTP: consumers ask, approvers decide, the marketplace grants.

Included in the marketplace app with `app.include_router(access_api.router)`; its lifespan
opens the flow over the app's store and runs the background sweep (grant retries, expiry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import AuthenticationError
from dataproduct.marketplace.access import MAX_DAYS, MAX_TEXT, AccessRequests, AccessSweeper
from dataproduct.marketplace.grant_client import GrantClient
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.security import ANONYMOUS, Principal
from ports.marketplace.api import authenticate


def open_access(store: MarketplaceStore, settings: MarketplaceSettings) -> AccessRequests:
    """The access-request flow over `store`, configured by `settings`."""
    client = GrantClient(
        settings.product_token,
        timeout_s=settings.grant_timeout_s,
        allowed_prefixes=settings.product_url_prefixes,
    )
    return AccessRequests(
        store.engine,
        client,
        approver_groups=settings.approver_groups,
        retry_base_s=settings.grant_retry_base_s,
        retry_max_s=settings.grant_retry_max_s,
    )


@asynccontextmanager
async def sweeping(app: FastAPI) -> AsyncIterator[None]:
    """Open the flow on start, sweep in the background, stop on shutdown."""
    settings: MarketplaceSettings = app.state.settings
    access = open_access(app.state.store, settings)
    app.state.access = access
    sweeper = AccessSweeper(access, settings.access_sweep_s)
    sweeper.start()
    try:
        yield
    finally:
        sweeper.stop()
        access.client.close()


router = APIRouter(prefix="/api/v1", tags=["access"], lifespan=sweeping)


def access_of(request: Request) -> AccessRequests:
    """The flow the lifespan opened."""
    access: AccessRequests = request.app.state.access
    return access


def signed_in(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    """A real principal: access requests are never anonymous."""
    if principal is ANONYMOUS:
        raise AuthenticationError("sign in to use access requests", where="authorization")
    return principal


Caller = Annotated[Principal, Depends(signed_in)]
Limit = Annotated[int, Query(ge=1, le=500)]


class AccessRequestBody(BaseModel):
    """What a consumer asks for, why, and for how long."""

    model_config = ConfigDict(extra="forbid")

    product: str = Field(min_length=1, max_length=128)
    dataset: str = Field(min_length=1, max_length=128)
    justification: str = Field(min_length=1, max_length=MAX_TEXT, pattern=r"\S")
    duration_days: int = Field(ge=1, le=MAX_DAYS)


class DecisionBody(BaseModel):
    """An approver's note on a decision."""

    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=MAX_TEXT)


@router.post("/requests", status_code=201)
async def ask(body: AccessRequestBody, request: Request, caller: Caller) -> dict[str, Any]:
    """Ask for access to a dataset (pending until an approver decides)."""
    return await run_in_threadpool(
        access_of(request).request,
        caller, body.product, body.dataset, body.justification, body.duration_days,
    )  # fmt: skip


@router.get("/requests/mine")
def mine(request: Request, caller: Caller, limit: Limit = 100) -> dict[str, Any]:
    """The caller's requests with their status and history, newest first."""
    return {"requests": access_of(request).mine(caller, limit)}


@router.get("/requests/pending")
def pending(request: Request, caller: Caller, limit: Limit = 100) -> dict[str, Any]:
    """The pending requests the caller may decide, oldest first."""
    return {"requests": access_of(request).pending(caller, limit)}


@router.get("/requests/{request_id}")
def one(request_id: int, request: Request, caller: Caller) -> dict[str, Any]:
    """One request, for its requester or an approver."""
    return access_of(request).visible(request_id, caller)


@router.post("/requests/{request_id}/approve")
async def approve(
    request_id: int, request: Request, caller: Caller, body: DecisionBody | None = None
) -> dict[str, Any]:
    """Approve: the grant is written on the product now, or retried until it is."""
    note = body.note if body else None
    return await run_in_threadpool(access_of(request).approve, request_id, caller, note)


@router.post("/requests/{request_id}/deny")
async def deny(
    request_id: int, request: Request, caller: Caller, body: DecisionBody | None = None
) -> dict[str, Any]:
    """Deny a pending request."""
    note = body.note if body else None
    return await run_in_threadpool(access_of(request).deny, request_id, caller, note)
