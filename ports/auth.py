"""Who is calling: bearer tokens checked on every port but health and discovery."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from dataproduct.security import Principal, bearer_token, verify_token
from pipelines.runtime import ProductRuntime


def runtime_of(request: Request) -> ProductRuntime:
    """The product this app serves."""
    runtime: ProductRuntime = request.app.state.runtime
    return runtime


def require_scope(scope: str) -> Callable[[Request], Principal]:
    """A dependency: a valid bearer token holding `scope`, as a principal.

    Synchronous on purpose: FastAPI runs it in a worker thread, so fetching an issuer's
    keys (when a token names a new key) never blocks the event loop.
    """

    def dependency(request: Request) -> Principal:
        settings = runtime_of(request).settings
        principal = verify_token(settings, bearer_token(request.headers.get("authorization")))
        principal.require(scope)
        request.state.principal = principal
        return principal

    return dependency
