"""The app factory: one FastAPI app per product, serving its four ports."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse

from pipelines.runtime import ProductRuntime
from ports import control, discovery, health, input, output, quality
from ports.errors import install_error_handlers

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
    routers = (health, discovery, output, input, control, quality)
    for router in (module.router for module in routers):
        app.include_router(router)

    @app.get("/", include_in_schema=False, response_model=None)
    async def root(request: Request) -> Any:
        return RedirectResponse(url=f"{request.scope.get('root_path', '')}/discovery")

    return app
