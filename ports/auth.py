"""Who is calling: a bearer JWT or an API key, checked on every port but health and discovery.

Each dependency authenticates, applies the caller's rate limit and leaves the principal on
`request.state` for the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from dataproduct.errors import AuthenticationError
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


async def authenticate(request: Request) -> Principal:
    """The caller's principal (401 without a valid credential), rate limited (429).

    A credential checked moments ago is known without a thread; a new JWT is checked in a
    worker thread, since fetching an issuer's keys blocks.
    """
    access = runtime_of(request).access
    try:
        credential = _credential(request)
        principal = access.known_token(credential)
        if principal is None:
            principal = await run_in_threadpool(access.authenticate, credential)
    except AuthenticationError:
        access.limiter.take(_client_key(request))  # guessing credentials is rate limited too
        raise
    request.state.principal = principal
    access.limiter.take(principal.subject)
    return principal


def require_scope(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: an authenticated caller whose credential permits `scope`."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        principal.require(scope)
        return principal

    return dependency


async def require_admin(request: Request) -> Principal:
    """A dependency: an authenticated administrator of the product."""
    principal = await authenticate(request)
    runtime_of(request).access.require_admin(principal)
    return principal


async def optional_principal(request: Request) -> Principal:
    """A dependency for open ports: the caller if it sent a credential, else anonymous.

    A credential that is sent must be valid. With `discovery_public` off, one is required.
    """
    runtime = runtime_of(request)
    sent = request.headers.get("authorization") or request.headers.get("x-api-key")
    if sent or not runtime.settings.discovery_public:
        return await authenticate(request)
    runtime.access.limiter.take(_client_key(request))
    return ANONYMOUS


def _client_key(request: Request) -> str:
    """The rate-limit key of a caller without a principal: its address."""
    return f"client:{request.client.host if request.client else 'unknown'}"


async def require_metrics_reader(request: Request) -> Principal:
    """A dependency: `metrics:read` (a scraper's key) or an administrator."""
    principal = await authenticate(request)
    if "metrics:read" not in principal.scopes:
        runtime_of(request).access.require_admin(principal)
    return principal
