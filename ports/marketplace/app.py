"""The marketplace app factory: the JSON API over a store, with the products' error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from dataproduct import __version__
from dataproduct.marketplace.settings import MarketplaceSettings
from dataproduct.marketplace.store import MarketplaceStore
from dataproduct.settings import DataproductSettings
from ports.errors import install_error_handlers
from ports.marketplace import access_api, api, crawl_api
from ports.marketplace import pages as marketplace_pages


def create_marketplace_app(
    store: MarketplaceStore, settings: MarketplaceSettings, auth: DataproductSettings
) -> FastAPI:
    """The marketplace over `store`; `auth` says how credentials are checked."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        crawling = crawl_api.start_crawler(app)
        yield
        crawl_api.stop_crawler(app, crawling)
        store.close()

    app = FastAPI(title="dataproduct marketplace", version=__version__, lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings
    app.state.auth = auth
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(access_api.router)
    app.include_router(marketplace_pages.router)
    app.include_router(crawl_api.router)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, Any]:
        """Alive (no credential needed)."""
        return {"status": "ok", "store": store.dialect}

    return app
