"""Who is calling: a bearer JWT or an API key, checked on every port but health and discovery.

Each dependency authenticates, applies the caller's rate limit and leaves the principal on
`request.state` for the audit log. They are synchronous on purpose: FastAPI runs them in a
worker thread, so fetching an issuer's keys never blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from dataproduct.security import ANONYMOUS, Principal, bearer_token
from pipelines.runtime import ProductRuntime


def runtime_of(request: Request) -> ProductRuntime:
    """The product this app serves."""
    runtime: ProductRuntime = request.app.state.runtime
    return runtime


def _credential(request: Request) -> str:
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    return bearer_token(request.headers.get("authorization"))


def authenticate(request: Request) -> Principal:
    """The caller's principal (401 without a valid credential), rate limited (429)."""
    access = runtime_of(request).access
    principal = access.authenticate(_credential(request))
    request.state.principal = principal
    access.limiter.take(principal.subject)
    return principal


def require_scope(scope: str) -> Callable[[Request], Principal]:
    """A dependency: an authenticated caller whose credential permits `scope`."""

    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        principal.require(scope)
        return principal

    return dependency


def require_admin(request: Request) -> Principal:
    """A dependency: an authenticated administrator of the product."""
    principal = authenticate(request)
    runtime_of(request).access.require_admin(principal)
    return principal


def optional_principal(request: Request) -> Principal:
    """A dependency for open ports: the caller if it sent a credential, else anonymous.

    A credential that is sent must be valid. With `discovery_public` off, one is required.
    """
    runtime = runtime_of(request)
    sent = request.headers.get("authorization") or request.headers.get("x-api-key")
    if sent or not runtime.settings.discovery_public:
        return authenticate(request)
    client = request.client.host if request.client else "unknown"
    runtime.access.limiter.take(f"client:{client}")
    return ANONYMOUS


def require_metrics_reader(request: Request) -> Principal:
    """A dependency: `metrics:read` (a scraper's key) or an administrator."""
    principal = authenticate(request)
    if "metrics:read" not in principal.scopes:
        runtime_of(request).access.require_admin(principal)
    return principal
