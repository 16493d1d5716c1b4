"""Security administration on the control port: grants, API keys and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dataproduct.audit import AuditQuery
from dataproduct.catalog import published_datasets
from dataproduct.errors import ValidationError
from dataproduct.grants import GrantSpec
from dataproduct.security import SCOPES, Principal
from ports.auth import require_admin, runtime_of

router = APIRouter(prefix="/control", tags=["control"])
Admin = Annotated[Principal, Depends(require_admin)]


class GrantsBody(BaseModel):
    """Every grant managed through the control port (the descriptor's stay as they are)."""

    model_config = ConfigDict(extra="forbid")

    grants: list[GrantSpec] = Field(max_length=10_000)


class ApiKeyBody(BaseModel):
    """A new API key: a name, what it may do, and for how long."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    scopes: list[str] = Field(default_factory=lambda: ["output:read"])
    groups: list[str] = []
    roles: list[str] = []
    subject: str | None = Field(default=None, min_length=1, max_length=200)
    ttl_days: int | None = Field(default=None, ge=1, le=3650)


def _grants_document(request: Request) -> dict[str, Any]:
    grants = runtime_of(request).access.grants.all()
    return {"grants": [g.to_dict() for g in grants]}


@router.get("/grants")
def get_grants(request: Request, principal: Admin) -> dict[str, Any]:
    """Every grant, from the descriptor and from the control port."""
    return _grants_document(request)


@router.put("/grants")
def put_grants(body: GrantsBody, request: Request, principal: Admin) -> dict[str, Any]:
    """Replace the grants made through the control port; each change is recorded."""
    runtime = runtime_of(request)
    _check(request, body.grants)
    runtime.access.grants.replace(body.grants, principal.subject)
    return _grants_document(request)


@router.post("/grants", status_code=201)
def add_grant(spec: GrantSpec, request: Request, principal: Admin) -> dict[str, Any]:
    """Add one grant (what an approved access request does)."""
    _check(request, [spec])
    return runtime_of(request).access.grants.add(spec, principal.subject).to_dict()


@router.delete("/grants/{grant_id}")
def revoke_grant(grant_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """Revoke one grant made through the control port."""
    return runtime_of(request).access.grants.revoke(grant_id, principal.subject).to_dict()


@router.get("/grants/changes")
def grant_changes(
    request: Request, principal: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Who granted or revoked what, newest first."""
    return {"changes": runtime_of(request).access.grants.changes(limit)}


def _check(request: Request, specs: list[GrantSpec]) -> None:
    runtime = runtime_of(request)
    with runtime.storage.reader() as cursor:
        published = published_datasets(cursor)
    runtime.access.check_grants(specs, published)


@router.get("/api-keys")
def list_api_keys(request: Request, principal: Admin) -> dict[str, Any]:
    """Every API key (never its secret), newest first."""
    return {"api_keys": [k.to_dict() for k in runtime_of(request).access.api_keys.list()]}


@router.post("/api-keys", status_code=201)
def create_api_key(body: ApiKeyBody, request: Request, principal: Admin) -> JSONResponse:
    """A new API key; its secret is in this answer only."""
    unknown = sorted(set(body.scopes) - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}", where="scopes"
        )
    key, secret = runtime_of(request).access.api_keys.create(
        body.name,
        scopes=body.scopes,
        groups=body.groups,
        roles=body.roles,
        subject=body.subject,
        ttl_days=body.ttl_days,
        created_by=principal.subject,
    )
    return JSONResponse({**key.to_dict(), "key": secret}, status_code=201)


@router.delete("/api-keys/{key_id}")
def revoke_api_key(key_id: str, request: Request, principal: Admin) -> dict[str, Any]:
    """Revoke an API key at once."""
    return runtime_of(request).access.api_keys.revoke(key_id).to_dict()


@router.get("/audit")
def audit(
    request: Request,
    principal: Admin,
    since: datetime | None = None,
    until: datetime | None = None,
    subject: Annotated[str | None, Query(alias="principal")] = None,
    dataset: str | None = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """Requests as the audit log recorded them, newest first, filtered."""
    query = AuditQuery(
        since=_utc(since),
        until=_utc(until),
        principal=subject,
        dataset=dataset,
        status=status,
        limit=limit,
    )
    return {"records": runtime_of(request).access.audit.query(query)}


def _utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is read as UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment
