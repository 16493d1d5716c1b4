"""The app factory: one FastAPI app per product, serving its four ports."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse

from pipelines.runtime import ProductRuntime
from ports import control, discovery, health, input, metrics, output, quality, security
from ports.errors import install_error_handlers
from ports.gateway import GatewayMiddleware

log = logging.getLogger("dataproduct")


def create_app(runtime: ProductRuntime, *, start: bool = True) -> FastAPI:
    """The HTTP app of one product. With `start`, ingestion and the first run begin at once."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start:
            threading.Thread(target=runtime.startup, name="startup", daemon=True).start()
        else:
            runtime.readiness.ready.set()
        yield
        runtime.close()

    descriptor = runtime.descriptor
    app = FastAPI(
        title=f"{descriptor.name} (data product)",
        version=descriptor.version,
        description=descriptor.description,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    routers = (health, discovery, output, input, control, quality, security, metrics)
    for router in (module.router for module in routers):
        app.include_router(router)

    settings = runtime.settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            expose_headers=["Location", "Retry-After", "X-Request-Id"],
            max_age=600,
        )
    app.add_middleware(GatewayMiddleware, access=runtime.access, settings=settings)

    @app.get("/", include_in_schema=False, response_model=None)
    async def root(request: Request) -> Any:
        return RedirectResponse(url=f"{request.scope.get('root_path', '')}/discovery")

    return app
